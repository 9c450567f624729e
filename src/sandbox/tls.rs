//! The sandbox's TLS side: a throwaway CA, made at start, and a leaf for `localhost`,
//! `127.0.0.1` and `::1` that it signs; and the accept loop that serves HTTP/1.1 keep-alive over
//! it, one task per connection, until told to stop.
//!
//! A connection lives only while its client keeps up (issue 7, F10): one that has not finished
//! its TLS handshake within `tls_handshake_timeout`, or has not sent a whole request head within
//! `header_read_timeout` of the server starting to wait for it (idle keep-alive time included),
//! is closed.
//!
//! Clients trust the CA's PEM ([`super::Sandbox::ca_pem`]) the way they would trust a private CA;
//! nothing is written to disk and both private keys stay in this process. The rustls crypto
//! provider is chosen explicitly (ring), so no process-wide default has to be installed.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{handle, Shared};

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Names the leaf certificate is valid for: every way a test addresses a loopback listener.
const LEAF_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// What the server needs to accept TLS, and what clients need to trust it.
pub(super) struct TlsIdentity {
    pub config: Arc<ServerConfig>,
    /// PEM of the CA that signed the leaf.
    pub ca_pem: String,
}

/// Why the sandbox could not make its certificates.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("could not generate the sandbox's certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("rustls refused the sandbox's certificate: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Makes a fresh CA and leaf, and a rustls server config that serves the leaf over HTTP/1.1.
///
/// # Errors
/// [`TlsError`] if key generation or signing fails, which only a broken crypto backend causes.
pub(super) fn identity() -> Result<TlsIdentity, TlsError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = common_name("tim-gateway sandbox CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;

    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(LEAF_NAMES.map(String::from).to_vec())?;
    leaf_params.distinguished_name = common_name("localhost");
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)?;
    // The sandbox speaks HTTP/1.1 only; saying so in ALPN keeps an h2-capable client from
    // trying HTTP/2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsIdentity {
        config: Arc::new(config),
        ca_pem: ca.pem(),
    })
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// Accepts until `stop` fires or is dropped, then closes every connection.
pub(super) async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            // Reap finished connection tasks so the set does not grow with every client.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    shared.open_connections.fetch_add(1, Ordering::Relaxed);
                    let shared = Arc::clone(&shared);
                    let acceptor = acceptor.clone();
                    connections.spawn(async move {
                        serve_connection(stream, peer, acceptor, Arc::clone(&shared)).await;
                        shared.open_connections.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "sandbox accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    connections.shutdown().await;
    tracing::debug!("sandbox stopped");
}

/// Serves one client: TLS handshake, then HTTP/1.1 keep-alive until either side closes or the
/// client falls behind one of the timeouts.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
) {
    // Answers are small and written whole; Nagle would only add delay.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "sandbox could not set TCP_NODELAY");
    }
    let handshake = tokio::time::timeout(shared.tls_handshake_timeout, acceptor.accept(stream));
    let stream = match handshake.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "sandbox TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "sandbox TLS handshake timed out");
            return;
        }
    };
    let header_read_timeout = shared.header_read_timeout;
    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        // hyper needs a timer for the header-read timeout; tokio's follows paused test time.
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "sandbox connection ended with an error");
    }
}

#[cfg(test)]
/// The client side for the sandbox's tests: an HTTPS client trusting the sandbox's CA, and
/// helpers that build Tencent's query string.
pub(super) mod test_support {
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client as LegacyClient;
    use hyper_util::rt::TokioExecutor;
    use serde_json::Value;

    use super::super::{unix_now, Sandbox, SandboxApp, SandboxOptions};
    use crate::usersig::{self, SecretKey};

    /// The test app of reference §3's known answers.
    pub const APP: u64 = 1_400_000_000;
    /// A second app for tests that need two; 1400000001 stays unknown on purpose.
    pub const OTHER_APP: u64 = 1_400_000_002;
    pub const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

    pub type Client = LegacyClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

    /// One answer, as the client saw it.
    pub struct Reply {
        pub status: u16,
        pub content_type: Option<String>,
        pub raw: Bytes,
        pub json: Value,
    }

    impl Reply {
        pub fn code(&self) -> i64 {
            self.json["ErrorCode"]
                .as_i64()
                .unwrap_or_else(|| panic!("no ErrorCode in {}", String::from_utf8_lossy(&self.raw)))
        }
    }

    pub fn app() -> SandboxApp {
        SandboxApp {
            sdkappid: APP,
            key: SecretKey::new(KEY),
            admins: vec!["administrator".into()],
        }
    }

    /// Starts a sandbox on 127.0.0.1:0 (with [`app`] if `options` has no apps) and a client
    /// that trusts its CA.
    pub async fn sandbox(mut options: SandboxOptions) -> (Sandbox, Client) {
        if options.apps.is_empty() {
            options.apps.push(app());
        }
        let sandbox = Sandbox::start(([127, 0, 0, 1], 0).into(), options)
            .await
            .expect("the sandbox starts");
        let client = client(sandbox.ca_pem());
        (sandbox, client)
    }

    /// A rustls client config that trusts only the sandbox's CA.
    pub fn client_config(ca_pem: &str) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots
                .add(cert.expect("the CA PEM parses"))
                .expect("the CA is a valid root");
        }
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
    }

    pub fn client(ca_pem: &str) -> Client {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_config(ca_pem))
            .https_only()
            .enable_http1()
            .build();
        LegacyClient::builder(TokioExecutor::new()).build(connector)
    }

    /// A UserSig for `identifier` on `sdkappid`, minted now, valid for a day.
    pub fn sig_for(sdkappid: u64, identifier: &str) -> String {
        usersig::mint(
            &SecretKey::new(KEY),
            sdkappid,
            identifier,
            unix_now(0),
            86_400,
        )
        .expose()
        .to_owned()
    }

    pub fn admin_sig() -> String {
        sig_for(APP, "administrator")
    }

    /// The five common parameters (reference §1) with a fresh random.
    pub fn query_for_app(sdkappid: u64, identifier: &str, sig: &str) -> String {
        format!(
            "sdkappid={sdkappid}&identifier={identifier}&usersig={sig}&random={}&contenttype=json",
            rand::random::<u32>()
        )
    }

    pub fn query_for(identifier: &str, sig: &str) -> String {
        query_for_app(APP, identifier, sig)
    }

    pub fn signed_query() -> String {
        query_for("administrator", &admin_sig())
    }

    /// POSTs `body` to `path_and_query` and returns the answer's ErrorCode.
    pub async fn code(client: &Client, sandbox: &Sandbox, path_and_query: &str, body: &str) -> i64 {
        post(client, sandbox, path_and_query, body)
            .await
            .expect("the sandbox answers")
            .code()
    }

    /// POSTs `body` to `path_and_query` on the sandbox.
    pub async fn post(
        client: &Client,
        sandbox: &Sandbox,
        path_and_query: &str,
        body: &str,
    ) -> Result<Reply, hyper_util::client::legacy::Error> {
        let uri = format!("{}{path_and_query}", sandbox.endpoint());
        send(client, http::Method::POST, &uri, body).await
    }

    pub async fn send(
        client: &Client,
        method: http::Method,
        uri: &str,
        body: &str,
    ) -> Result<Reply, hyper_util::client::legacy::Error> {
        let request = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("a valid request");
        let response = client.request(request).await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let raw = response
            .into_body()
            .collect()
            .await
            .expect("the body arrives")
            .to_bytes();
        let json = serde_json::from_slice(&raw).expect("the sandbox answers JSON");
        Ok(Reply {
            status,
            content_type,
            raw,
            json,
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

    use super::super::SandboxOptions;
    use super::test_support::{post, sandbox, signed_query};
    use super::*;

    /// The CA is a PEM certificate, and each start makes a different one.
    #[test]
    fn each_identity_has_its_own_ca() {
        let a = identity().expect("certificates");
        let b = identity().expect("certificates");
        assert!(a.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_ne!(a.ca_pem, b.ca_pem);
        assert_eq!(a.config.alpn_protocols, [b"http/1.1".to_vec()]);
    }

    /// A client that speaks plain HTTP to the TLS port fails its handshake, and the accept loop
    /// keeps serving the next client.
    #[tokio::test]
    async fn failed_handshake_does_not_stop_the_server() {
        let (sandbox, client) = sandbox(SandboxOptions::default()).await;
        let mut plain = tokio::net::TcpStream::connect(sandbox.addr())
            .await
            .unwrap();
        plain
            .write_all(b"POST /v4/profile/portrait_get HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        drop(plain);
        let path = format!("/v4/profile/portrait_get?{}", signed_query());
        assert_eq!(
            post(&client, &sandbox, &path, "{}").await.unwrap().code(),
            0
        );
    }

    /// Waits for the sandbox to close `stream`: true if it did within `within`. Reading never
    /// returns data here, since the sandbox has nothing to answer. Under paused time a wait
    /// costs nothing, and the close arrives as I/O at the instant the sandbox's timer fires, so
    /// `started.elapsed()` pins the exact moment.
    async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(n)) => panic!("the sandbox sent {n} bytes"),
            Err(_) => false,
        }
    }

    /// Regression test for issue 7, F10: a client that connects and never starts its TLS
    /// handshake is disconnected exactly when `tls_handshake_timeout` runs out (paused time).
    #[tokio::test(start_paused = true)]
    async fn stalled_tls_handshake_is_closed_after_the_timeout() {
        let timeout = Duration::from_secs(3);
        let options = SandboxOptions {
            tls_handshake_timeout: timeout,
            ..SandboxOptions::default()
        };
        let (sandbox, _client) = sandbox(options).await;
        let mut tcp = tokio::net::TcpStream::connect(sandbox.addr())
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        assert!(!closed_within(&mut tcp, timeout - Duration::from_millis(1)).await);
        assert_eq!(sandbox.connections_open(), 1);
        assert!(closed_within(&mut tcp, Duration::from_secs(1)).await);
        assert_eq!(started.elapsed(), timeout);
        assert_eq!(sandbox.connections_open(), 0);
    }

    /// Regression test for issue 7, F10: after a finished handshake, a request head that never
    /// ends is cut off exactly when `header_read_timeout` runs out (paused time).
    #[tokio::test(start_paused = true)]
    async fn stalled_request_head_is_closed_after_the_header_read_timeout() {
        let timeout = Duration::from_secs(5);
        let options = SandboxOptions {
            header_read_timeout: timeout,
            ..SandboxOptions::default()
        };
        let (sandbox, _client) = sandbox(options).await;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(test_support::client_config(
            sandbox.ca_pem(),
        )));
        let tcp = tokio::net::TcpStream::connect(sandbox.addr())
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"POST /v4/profile/portrait_get HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(!closed_within(&mut tls, timeout - Duration::from_millis(1)).await);
        assert!(closed_within(&mut tls, Duration::from_secs(1)).await);
        assert_eq!(started.elapsed(), timeout);
        assert_eq!(sandbox.total_calls(), 0);
    }

    /// The leaf verifies under each of its names, whichever one a client dials by.
    #[tokio::test]
    async fn leaf_is_valid_for_every_loopback_name() {
        let (sandbox, _client) = sandbox(SandboxOptions::default()).await;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(test_support::client_config(
            sandbox.ca_pem(),
        )));
        for name in LEAF_NAMES {
            let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
            let tcp = tokio::net::TcpStream::connect(sandbox.addr())
                .await
                .unwrap();
            connector
                .connect(server_name, tcp)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
