//! The process's stop signals: SIGTERM (Kubernetes starts a graceful shutdown with it) and
//! SIGINT (Ctrl-C).
//!
//! Install the handlers with [`Signals::install`] before binding listeners: from then on a
//! signal is remembered and starts a graceful shutdown instead of killing the process.

#[cfg(unix)]
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Installed SIGTERM and SIGINT handlers.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    term: Signal,
    #[cfg(unix)]
    interrupt: Signal,
}

impl Signals {
    /// Installs the handlers now (needs a tokio runtime).
    ///
    /// # Errors
    /// The operating system refused to install a handler.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            #[cfg(unix)]
            term: signal(SignalKind::terminate())?,
            #[cfg(unix)]
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves when SIGTERM or SIGINT arrives (or has arrived since `install`).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.interrupt.recv() => tracing::info!("SIGINT received"),
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
