//! A full disk under the real `asyncgate-server` binary: the durable store
//! refuses writes with UNAVAILABLE ("store full", an error id that
//! leads to the log's detail) while the disk is full, and recovers by
//! itself — no restart — once space is freed. The disk is a small tmpfs
//! mounted for the test (the test machines run as root).

use std::path::{Path, PathBuf};
use std::time::Duration;

use asyncgate_client::{Client, Submit, payload};
use tonic::Code;

mod common;
use common::{free_port, wait_until_serving};

/// The real binary on `port` with its store at `store`, its log (warn and
/// above) written to `log`.
fn start_logging(store: &Path, port: u16, log: &Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_asyncgate-server"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--store")
        .arg(store)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts")
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the CI and dev machines run tests as root)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the disk with a file until writing fails; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test]
async fn a_full_disk_is_unavailable_until_space_is_freed_then_recovers() {
    let disk = SmallDisk::mount("8m");
    let store = disk.path().join("asyncgate.redb");
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("gateway.log");
    let port = free_port();
    let _gateway = start_logging(&store, port, &log);
    let client = Client::connect_lazy(format!("http://127.0.0.1:{port}")).unwrap();
    wait_until_serving(&client).await;
    let body = || Submit::new("disk").payload(payload::binary(vec![1u8; 16 * 1024], "x"));
    client.submit(body()).await.expect("room on the disk");

    let filler = fill(disk.path());
    // Submits now fail: the commit cannot land.
    let mut refused = None;
    for _ in 0..200 {
        match client.submit(body()).await {
            Ok(_) => continue,
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    let refused = refused.expect("a full disk refuses writes");
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    let message = refused.to_string();
    assert!(
        message.contains("store full: the disk holding the store is full"),
        "{message}"
    );
    assert!(
        !message.contains(disk.path().to_str().unwrap()),
        "no file path in the message: {message}"
    );
    // The id in the answer leads to the log line with the OS's words.
    let id = message
        .rsplit_once("(error ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .expect("an error id");
    let log_text = std::fs::read_to_string(&log).unwrap();
    let line = log_text
        .lines()
        .find(|line| line.contains(id))
        .unwrap_or_else(|| panic!("no log line with error id {id}:\n{log_text}"));
    assert!(line.contains("No space left"), "{line}");

    std::fs::remove_file(filler).unwrap();
    let recovered = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match client.submit(body()).await {
                Ok(ticket) => return ticket,
                Err(error) => {
                    assert_eq!(error.code(), Code::Unavailable, "{error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
    .await
    .expect("the gateway recovers once space is freed, without a restart");
    let got = client.get(&recovered.id, None).await.unwrap();
    assert_eq!(got.id, recovered.id);
}
