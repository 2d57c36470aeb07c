//! Real `redis-server` processes for tests and benchmarks: one server, or a
//! three-node cluster, on free loopback ports in temporary directories, with
//! append-only fsync on every write, stopped (by their own PIDs) when
//! dropped.

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
    /// Extra flags (TLS, a password), kept for restarts.
    extra: Vec<String>,
    /// Whether it speaks TLS only.
    tls: bool,
    /// The password clients must give, if any.
    password: Option<String>,
}

impl RedisServer {
    /// Starts one on a free port.
    pub fn start() -> Result<Self, RedisServerError> {
        Self::start_with(Vec::new())
    }

    /// Starts one that requires `password` (its [`Self::url`] carries it).
    pub fn start_with_password(password: &str) -> Result<Self, RedisServerError> {
        let mut server = Self::start_with(vec!["--requirepass".into(), password.into()])?;
        server.password = Some(password.to_owned());
        Ok(server)
    }

    /// Starts one that only speaks TLS, with this certificate and key (PEM
    /// files); clients may present a certificate signed by `client_ca`.
    pub fn start_tls(cert: &Path, key: &Path, client_ca: &Path) -> Result<Self, RedisServerError> {
        let path = |p: &Path| p.display().to_string();
        let mut server = Self::start_with(vec![
            "--tls-cert-file".into(),
            path(cert),
            "--tls-key-file".into(),
            path(key),
            "--tls-ca-cert-file".into(),
            path(client_ca),
            "--tls-auth-clients".into(),
            "optional".into(),
        ])?;
        server.tls = true;
        Ok(server)
    }

    fn start_with(extra: Vec<String>) -> Result<Self, RedisServerError> {
        let dir = tempfile::tempdir()?;
        let mut last = None;
        // A port found free can be taken before Redis binds it: try again.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            match spawn(dir.path(), port, &extra) {
                Ok(child) => {
                    return Ok(Self {
                        child: Some(child),
                        port,
                        dir,
                        extra,
                        tls: false,
                        password: None,
                    });
                }
                Err(error @ RedisServerError::NotInstalled) => return Err(error),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| RedisServerError::Failed("no free port".into())))
    }

    /// `redis://127.0.0.1:PORT/0` (`rediss://` for a TLS server, with
    /// `:PASSWORD@` when it requires one).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = self
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        format!("{scheme}://{auth}127.0.0.1:{}/0", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id while it runs (the bench reads its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its data directory (Redis 7 keeps the append-only files in its
    /// `appendonlydir`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
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
        self.child = Some(spawn(self.dir.path(), self.port, &self.extra)?);
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-node Redis Cluster (no replicas), every slot assigned.
pub struct RedisCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three nodes and joins them into a cluster.
    pub fn start() -> Result<Self, RedisServerError> {
        let dir = tempfile::tempdir()?;
        let mut cluster = Self {
            nodes: Vec::new(),
            ports: Vec::new(),
            _dir: dir,
        };
        for index in 0..3 {
            let node_dir = cluster._dir.path().join(format!("node-{index}"));
            std::fs::create_dir_all(&node_dir)?;
            let port = cluster_port()?;
            let child = spawn(
                &node_dir,
                port,
                &["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"],
            )?;
            cluster.nodes.push(child);
            cluster.ports.push(port);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in &cluster.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let output = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .map_err(|e| RedisServerError::Failed(format!("redis-cli: {e}")))?;
        if !output.status.success() {
            return Err(RedisServerError::Failed(format!(
                "redis-cli --cluster create: {}",
                String::from_utf8_lossy(&output.stdout)
            )));
        }
        // Every node must agree the cluster is up before clients route to it.
        for port in &cluster.ports {
            let mut state = String::new();
            for _ in 0..200 {
                let info = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()?;
                state = String::from_utf8_lossy(&info.stdout).into_owned();
                if state.contains("cluster_state:ok") {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            if !state.contains("cluster_state:ok") {
                return Err(RedisServerError::Failed(format!(
                    "node {port} never reported cluster_state:ok: {state}"
                )));
            }
        }
        Ok(cluster)
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free port whose cluster-bus port (+10000) is free too.
fn cluster_port() -> Result<u16, RedisServerError> {
    for _ in 0..50 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(RedisServerError::Failed(
        "no free port pair for a cluster node".into(),
    ))
}

/// Starts redis-server and waits for its "ready" line. With TLS flags in
/// `extra`, `port` is the TLS port and the plain port is off.
fn spawn(
    dir: &Path,
    port: u16,
    extra: &[impl AsRef<std::ffi::OsStr>],
) -> Result<Child, RedisServerError> {
    let tls = !extra.is_empty() && extra.iter().any(|a| a.as_ref() == "--tls-cert-file");
    let (plain, tls_port) = if tls {
        ("0".to_owned(), port.to_string())
    } else {
        (port.to_string(), "0".to_owned())
    };
    let mut child = Command::new("redis-server")
        .args(["--port", &plain])
        .args(["--tls-port", &tls_port])
        .args(["--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--save", ""])
        .args(["--appendonly", "yes"])
        .args(["--appendfsync", "always"])
        .args(["--maxmemory-policy", "noeviction"])
        .args(["--logfile", ""])
        .args(["--daemonize", "no"])
        .args(extra)
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
