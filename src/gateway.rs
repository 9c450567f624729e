//! A running gateway: the proxy on the client listener and the admin endpoints, with one
//! shutdown switch for both.
//!
//! Shutdown order (STYLE.md §7): readiness flips to not-ready first; requests waiting for a
//! throttle permit get a clean 503; the client listener closes (new connections are refused)
//! and in-flight requests get `grace` to finish; the admin listener, which kept answering
//! probes and scrapes meanwhile, closes last.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::config::{Config, ListenAddr};
use crate::origin::HostPolicy;
use crate::proxy::Proxy;
use crate::server::{
    self, Handler, Limits, ADMIN_HEADER_READ_TIMEOUT, DEFAULT_WRITE_TIMEOUT, HEADER_READ_TIMEOUT,
};
use crate::upstream::{UpstreamBuildError, UpstreamClient, UpstreamSettings};

/// The gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: ListenAddr, source: io::Error },
    #[error("cannot build the upstream client: {0}")]
    Upstream(#[from] UpstreamBuildError),
}

impl Handler for Proxy {
    fn handle(
        self: Arc<Self>,
        request: Request<server::ClientBody>,
    ) -> impl std::future::Future<Output = http::Response<http_body_util::Full<bytes::Bytes>>>
           + Send
           + 'static {
        Proxy::serve(self, request)
    }

    fn answer_now(
        &self,
        request: &server::RawRequest<'_>,
        answer: &mut server::Answer<'_>,
    ) -> bool {
        Proxy::answer_now(self, request, answer)
    }

    fn refuse(
        &self,
        refusal: server::Refusal,
    ) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        crate::error::GatewayError::from(refusal).into_response()
    }
}

/// Connections the admin listener holds at once: its reserve for probes, scrapes and purges,
/// which the client listener's cap never eats into.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Share of the open-files limit the client listener may hold when `server.max_connections`
/// is unset; the rest is for the admin reserve, upstream connections, logs and config files.
const CLIENT_SHARE_OF_NOFILE: f64 = 0.75;

/// Upper bound of the derived client cap: containers often allow a million open files, and
/// each connection may hold a 16 KiB read buffer (4,096 × 16 KiB = 64 MiB at most).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Raises the soft open-files limit to the hard one and returns the client listener's cap:
/// `configured`, or 75% of the limit minus the admin reserve, at least 1 and at most
/// [`DEFAULT_MAX_CONNECTIONS`].
fn client_connection_cap(configured: Option<usize>) -> usize {
    let nofile = raise_nofile_limit();
    let derived = ((nofile as f64 * CLIENT_SHARE_OF_NOFILE) as usize)
        .saturating_sub(ADMIN_MAX_CONNECTIONS)
        .clamp(1, DEFAULT_MAX_CONNECTIONS);
    match configured {
        Some(cap) => {
            if cap > derived {
                tracing::warn!(
                    max_connections = cap,
                    open_files_limit = nofile,
                    "server.max_connections leaves too few file descriptors for the admin \
                     listener and upstream calls; accepts may fail under load"
                );
            }
            cap
        }
        None => derived,
    }
}

/// The soft `RLIMIT_NOFILE` after raising it to the hard limit (where that fails, as it is).
fn raise_nofile_limit() -> u64 {
    #[cfg(unix)]
    {
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
        if soft < hard {
            match rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard) {
                Ok(()) => return hard,
                Err(error) => {
                    tracing::warn!(%error, soft, hard, "cannot raise the open-files limit");
                }
            }
        }
        soft
    }
    #[cfg(not(unix))]
    1024
}

/// The client listener, bound.
enum ClientListener {
    Tcp((SocketAddr, tokio::net::TcpListener)),
    Tls(SocketAddr, crate::server::tls::TlsListener),
    Unix(tokio::net::UnixListener),
}

/// Handle to a running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Where the client listener listens (a TCP address with its port bound, or a socket).
    client_addr: ListenAddr,
    admin_addr: SocketAddr,
    proxy: Arc<Proxy>,
    /// Shared with `/readyz`.
    is_draining: Arc<AtomicBool>,
    /// `true` once the client listener must stop.
    stop_client: watch::Sender<bool>,
    /// `true` once the admin listener must stop (after the client side drained).
    stop_admin: watch::Sender<bool>,
    /// How long in-flight requests may take once shutdown begins.
    grace: Duration,
    client_task: JoinHandle<bool>,
    admin_task: JoinHandle<bool>,
}

impl Gateway {
    /// Binds both listeners, mints every app's UserSig and starts serving.
    ///
    /// # Errors
    /// A listener cannot be bound or the upstream TLS setup fails.
    pub async fn start(config: &Config, grace: Duration) -> Result<Gateway, StartError> {
        let upstream = UpstreamClient::new(&UpstreamSettings {
            connect_timeout: config.upstream.connect_timeout,
            request_timeout: config.upstream.request_timeout,
            pool_idle_timeout: config.upstream.pool_idle_timeout,
            pool_max_idle_per_host: config.upstream.pool_max_idle_per_host,
            extra_ca_pem: config.upstream.extra_ca_pem.clone(),
            proxy: config.upstream.proxy.clone(),
        })?;
        let bind = |addr: SocketAddr| {
            server::bind(addr).and_then(|listener| Ok((listener.local_addr()?, listener)))
        };
        let listen = &config.server.listen;
        let failed = |source| StartError::Bind {
            addr: listen.clone(),
            source,
        };
        let client_listener = match (listen, &config.server.tls) {
            (ListenAddr::Tcp(addr), Some((cert, key))) => {
                let tls = crate::server::tls::load(cert, key).map_err(|problem| {
                    failed(io::Error::new(io::ErrorKind::InvalidData, problem))
                })?;
                let (addr, tcp) = bind(*addr).map_err(failed)?;
                ClientListener::Tls(
                    addr,
                    crate::server::tls::TlsListener::new(tcp, tls, (cert.clone(), key.clone())),
                )
            }
            (ListenAddr::Tcp(addr), None) => ClientListener::Tcp(bind(*addr).map_err(failed)?),
            (ListenAddr::Unix(path), _) => ClientListener::Unix(
                server::bind_unix(path, config.server.listen_mode).map_err(failed)?,
            ),
        };
        let admin_listen = config.server.admin_listen;
        let (admin_addr, admin_listener) =
            bind(admin_listen).map_err(|source| StartError::Bind {
                addr: ListenAddr::Tcp(admin_listen),
                source,
            })?;
        let client_addr = match &client_listener {
            ClientListener::Tcp((addr, _)) | ClientListener::Tls(addr, _) => ListenAddr::Tcp(*addr),
            ClientListener::Unix(_) => listen.clone(),
        };

        let proxy = Arc::new(Proxy::new(config, upstream));
        let is_draining = Arc::new(AtomicBool::new(false));
        let (stop_client, _) = watch::channel(false);
        let (stop_admin, _) = watch::channel(false);
        let stopped = |stop: &watch::Sender<bool>| {
            let mut rx = stop.subscribe();
            async move {
                let _ = rx.wait_for(|is_stopping| *is_stopping).await;
            }
        };
        let client_limits = Limits {
            max_connections: client_connection_cap(config.server.max_connections),
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            grace,
            header_read_timeout: HEADER_READ_TIMEOUT,
        };
        let client_task = match client_listener {
            ClientListener::Tcp((_, listener)) => tokio::spawn(server::run(
                listener,
                Arc::clone(&proxy),
                stopped(&stop_client),
                client_limits,
            )),
            ClientListener::Tls(_, listener) => tokio::spawn(server::run(
                listener,
                Arc::clone(&proxy),
                stopped(&stop_client),
                client_limits,
            )),
            ClientListener::Unix(listener) => tokio::spawn(server::run(
                listener,
                Arc::clone(&proxy),
                stopped(&stop_client),
                client_limits,
            )),
        };
        let admin = Arc::new(Admin {
            proxy: Arc::clone(&proxy),
            is_draining: Arc::clone(&is_draining),
            hosts: HostPolicy::new(config.server.admin_listen, &config.server.allowed_hosts),
            token: config.server.admin_token.clone(),
        });
        // The admin side has nothing long-running to drain: a short grace is enough. Its own
        // cap is the reserve that keeps probes answering while clients flood the other port.
        let admin_limits = Limits {
            max_connections: ADMIN_MAX_CONNECTIONS,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            grace: Duration::from_secs(1),
            header_read_timeout: ADMIN_HEADER_READ_TIMEOUT,
        };
        let admin_task = tokio::spawn(server::run(
            admin_listener,
            admin,
            stopped(&stop_admin),
            admin_limits,
        ));
        // Keys read from files follow the file (a rotated Secret), without a restart.
        let watched: Vec<crate::key_file::Watched> = config
            .apps
            .iter()
            .zip(proxy.apps())
            .filter_map(|(configured, app)| match &configured.secret_key_source {
                crate::config::KeySource::File(path) => Some(crate::key_file::Watched {
                    app: app.name.clone(),
                    path: path.clone(),
                    signer: Arc::downgrade(&app.signer),
                }),
                crate::config::KeySource::Env(_) => None,
            })
            .collect();
        if !watched.is_empty() {
            tokio::spawn(crate::key_file::watch(watched));
        }
        for app in proxy.apps() {
            tracing::info!(
                app = %app.name,
                sdkappid = app.signer.sdkappid(),
                identifier = %app.signer.identifier(),
                upstream = %app.origins.load().primary,
                "app ready"
            );
        }
        tracing::info!(
            addr = %client_addr,
            https = config.server.tls.is_some(),
            max_connections = client_limits.max_connections,
            "client listener bound"
        );
        tracing::info!(addr = %admin_addr, "admin listener bound");
        Ok(Gateway {
            client_addr,
            admin_addr,
            proxy,
            is_draining,
            stop_client,
            stop_admin,
            grace,
            client_task,
            admin_task,
        })
    }

    /// Where the client listener listens: its TCP address (the port bound), or its socket.
    pub fn client_addr(&self) -> &ListenAddr {
        &self.client_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Flips readiness, closes the listeners and drains; returns `true` if everything in
    /// flight finished within the grace period.
    pub async fn shutdown(self) -> bool {
        self.is_draining.store(true, Ordering::Release);
        self.proxy.begin_drain();
        let _ = self.stop_client.send(true);
        // Shortly before the grace period ends, calls still waiting on Tencent are answered
        // with a clean 503, so no client is left with a connection cut mid-request.
        let proxy = Arc::clone(&self.proxy);
        let margin = (self.grace / 10).min(Duration::from_secs(1));
        let stop_at = self.grace.saturating_sub(margin);
        let hard_stop = tokio::spawn(async move {
            tokio::time::sleep(stop_at).await;
            proxy.stop_upstream_calls();
        });
        let client = self.client_task.await.unwrap_or(false);
        hard_stop.abort();
        let _ = self.stop_admin.send(true);
        let admin = self.admin_task.await.unwrap_or(false);
        self.proxy.left_fleet().await;
        client && admin
    }
}
