//! A real `redis-server` for tests and benchmarks: started on a free
//! loopback port in its own temporary directory, with append-only fsync on
//! every write, and stopped (by its own PID) when dropped.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Why a Redis server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    /// The binary is missing.
    #[error(
        "redis-server is not installed: `scripts/test.sh` installs it (Debian: apt-get install redis-server)"
    )]
    NotInstalled,
    /// It started but never said it was ready.
    #[error("redis-server did not start: {0}")]
    Failed(String),
    /// A local I/O problem (temp dir, free port).
    #[error("cannot prepare redis-server: {0}")]
    Io(#[from] std::io::Error),
}

/// A running `redis-server` child process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one on a free port.
    pub fn start() -> Result<Self, RedisServerError> {
        let dir = tempfile::tempdir()?;
        let mut last = None;
        // A port found free can be taken before Redis binds it: try again.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            match spawn(dir.path(), port) {
                Ok(child) => {
                    return Ok(Self {
                        child: Some(child),
                        port,
                        dir,
                    });
                }
                Err(error @ RedisServerError::NotInstalled) => return Err(error),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| RedisServerError::Failed("no free port".into())))
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills it (SIGKILL: what is not fsync'd is lost) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data (after [`Self::kill`]).
    pub fn restart(&mut self) -> Result<(), RedisServerError> {
        self.kill();
        self.child = Some(spawn(self.dir.path(), self.port)?);
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts redis-server and waits for its "ready" line.
fn spawn(dir: &Path, port: u16) -> Result<Child, RedisServerError> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--save", ""])
        .args(["--appendonly", "yes"])
        .args(["--appendfsync", "always"])
        .args(["--maxmemory-policy", "noeviction"])
        .args(["--logfile", ""])
        .args(["--daemonize", "no"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => RedisServerError::NotInstalled,
            _ => RedisServerError::Io(error),
        })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let mut log = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        if line.contains("Ready to accept connections") {
            // Keep draining its log so it never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return Ok(child);
        }
        log.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(RedisServerError::Failed(log.join("\n")))
}
