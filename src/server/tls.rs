//! The client listener over HTTPS (`server.tls_cert_file` + `server.tls_key_file`), for SDKs
//! that only speak `https://{domain}/…`: point their domain at the gateway and trust its
//! certificate. The handshake runs in the connection's own task, bounded by
//! [`HANDSHAKE_TIMEOUT`], so a slow client holds up no other. The certificate and key are
//! read again every [`RELOAD_EVERY`]: a renewed pair (cert-manager rotating a Secret) is used
//! for new connections without a restart; a pair that does not load keeps the old one.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::Accept;

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate and key files are read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);
/// A PEM file larger than this is a wrong path.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The server side of TLS from a certificate chain and a private key, both PEM: HTTP/1.1
/// only (as the listener), ring, the safe default protocol versions.
///
/// # Errors
/// A file cannot be read, holds no certificate or no private key, or the key does not
/// match the certificate. The message names the file, never its contents.
pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let read = |path: &Path| -> Result<Vec<u8>, String> {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(
                std::fs::File::open(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
                MAX_PEM_BYTES,
            ),
            &mut bytes,
        )
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(bytes)
    };
    let cert_pem = read(cert_file)?;
    let key_pem = read(key_file)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not PEM: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert_file.display()));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("{} is not PEM: {e}", key_file.display()))?
        .ok_or_else(|| format!("{} holds no PEM private key", key_file.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| {
        format!(
            "{} and {} do not make a certificate and its key: {e}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener whose connections speak TLS with the current certificate.
pub struct TlsListener {
    tcp: TcpListener,
    config: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

impl TlsListener {
    /// Serves `config` on `tcp`, and keeps it in step with the files (see [`watch`]).
    pub fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        files: (PathBuf, PathBuf),
    ) -> Self {
        let config = Arc::new(RwLock::new(config));
        tokio::spawn(watch(files, Arc::downgrade(&config)));
        TlsListener { tcp, config }
    }
}

impl Accept for TlsListener {
    type Raw = TcpStream;
    type Stream = TlsStream<TcpStream>;

    async fn accept_raw(&self) -> io::Result<TcpStream> {
        let (stream, _) = self.tcp.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn upgrade(
        &self,
        raw: TcpStream,
    ) -> impl std::future::Future<Output = io::Result<Self::Stream>> + Send + 'static {
        let config = Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()));
        async move {
            tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(raw))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
        }
    }
}

/// Reads the certificate and key again every [`RELOAD_EVERY`] while the listener lives; a
/// changed pair that loads replaces the one in use, one that does not is logged (once per
/// change) and the old one stays.
async fn watch(
    (cert_file, key_file): (PathBuf, PathBuf),
    config: Weak<RwLock<Arc<rustls::ServerConfig>>>,
) {
    let read = || {
        (
            std::fs::read(&cert_file).ok(),
            std::fs::read(&key_file).ok(),
        )
    };
    let mut seen = read();
    loop {
        tokio::time::sleep(RELOAD_EVERY).await;
        let Some(config) = config.upgrade() else {
            return;
        };
        let now = read();
        if now == seen {
            continue;
        }
        seen = now;
        match load(&cert_file, &key_file) {
            Ok(fresh) => {
                *config.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                tracing::info!(
                    cert = %cert_file.display(),
                    "the TLS certificate changed: new connections use the new one"
                );
            }
            Err(problem) => {
                tracing::warn!("{problem}; new connections keep the certificate in use")
            }
        }
    }
}
