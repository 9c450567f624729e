//! A unix-socket relay in front of a `redis-server`, which can cut the network: while cut, it
//! forwards nothing in either direction and answers nothing (no reset, no close), as a
//! partition looks to a client; connections made meanwhile hang the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

pub struct Relay {
    socket: PathBuf,
    is_cut: watch::Sender<bool>,
    _dir: tempfile::TempDir,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay to the server listening on `upstream`.
    pub fn start(upstream: &Path) -> Relay {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("relay.sock");
        let listener = UnixListener::bind(&socket).expect("the relay binds");
        let (is_cut, cut) = watch::channel(false);
        let upstream = upstream.to_path_buf();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let cut = cut.clone();
                tokio::spawn(async move {
                    let Ok(server) = UnixStream::connect(&upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let cut = Arc::new(cut);
                    tokio::join!(
                        pump(client_read, server_write, Arc::clone(&cut)),
                        pump(server_read, client_write, cut),
                    );
                });
            }
        });
        Relay {
            socket,
            is_cut,
            _dir: dir,
            accept,
        }
    }

    /// The URL a gateway's config takes to reach Redis through the relay.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// Cuts (`true`) or restores (`false`) the network.
    pub fn set_cut(&self, is_cut: bool) {
        self.is_cut.send_replace(is_cut);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to` while the network is not cut; while it is, holds what it read.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    cut: Arc<watch::Receiver<bool>>,
) {
    let mut cut = (*cut).clone();
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if cut.wait_for(|is_cut| !is_cut).await.is_err() {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // Cut while waiting to read: wait for the network to come back first.
            _ = cut.wait_for(|is_cut| *is_cut) => continue,
        };
        let Ok(n) = read else { return };
        if n == 0 {
            return;
        }
        // Read just before the cut: delivered only once the network is back.
        if cut.wait_for(|is_cut| !is_cut).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
