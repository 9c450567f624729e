//! A private `redis-server` per test: on a unix socket in its own temporary directory (no port
//! to race for), without persistence, killed when dropped.
//!
//! Debian's `redis-server` is not on a fresh machine; `.ci/run` installs it. Without it, a
//! test skips loudly, except under `CI` where a missing server fails the run.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    socket: PathBuf,
    /// Holds the socket (unless restarted elsewhere) and nothing else: no persistence.
    _dir: tempfile::TempDir,
    /// A directory made again for a restart on an old socket.
    remove_on_drop: Option<PathBuf>,
}

impl RedisServer {
    /// Starts a server, or `None` (with a note on stderr) when `redis-server` is missing
    /// outside CI.
    pub fn start() -> Option<RedisServer> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed (apt-get install redis-server); CI needs it"
            );
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("redis.sock");
        // The directory outlives this server when a test restarts one on the same socket.
        Self::spawn_in(socket, dir)
    }

    fn spawn(socket: PathBuf) -> Option<RedisServer> {
        Self::spawn_in(socket, tempfile::tempdir().expect("a temporary directory"))
    }

    fn spawn_in(socket: PathBuf, dir: tempfile::TempDir) -> Option<RedisServer> {
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--enable-debug-command", "local", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let server = RedisServer {
            child,
            socket: socket.clone(),
            _dir: dir,
            remove_on_drop: None,
        };
        // It listens within milliseconds; the bound keeps a broken install from hanging.
        let started = Instant::now();
        while !socket.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not open its socket"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Some(server)
    }

    pub fn socket(&self) -> PathBuf {
        self.socket.clone()
    }

    /// A fresh, empty server on `socket` (a restart that lost every key), in a new directory
    /// for its own files.
    pub fn start_at(socket: &std::path::Path) -> RedisServer {
        // The first server's directory went with it: make it again, and remove it after.
        let parent = socket
            .parent()
            .expect("a socket in a directory")
            .to_path_buf();
        std::fs::create_dir_all(&parent).expect("the socket's directory");
        let mut server =
            Self::spawn(socket.to_path_buf()).expect("redis-server was there a moment ago");
        server.remove_on_drop = Some(parent);
        server
    }

    /// The URL the gateway's config takes.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// A fresh multiplexed connection. The socket file appears when the server binds it, a
    /// moment before it listens (a CI run met "connection refused" there): tried again for up
    /// to 2 s.
    pub async fn connect(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("a valid URL");
        let mut attempts = 0;
        loop {
            match client.get_multiplexed_async_connection().await {
                Ok(connection) => return connection,
                Err(error) if attempts < 200 && error.is_connection_refusal() => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => panic!("redis-server answers: {error}"),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.remove_on_drop {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
