//! A full disk under the real `asyncgate-server` binary: the durable store
//! refuses writes with UNAVAILABLE while the disk is full, and recovers by
//! itself — no restart — once space is freed. The disk is a small tmpfs
//! mounted for the test (the test machines run as root).

use std::path::{Path, PathBuf};
use std::time::Duration;

use asyncgate_client::{Client, Submit, payload};
use tonic::Code;

mod common;
use common::{free_port, start_server, wait_until_serving};

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
    let port = free_port();
    let _gateway = start_server(&store, port, &[]);
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
    assert!(refused.to_string().contains("No space left"), "{refused}");
    assert!(
        !refused.to_string().contains(disk.path().to_str().unwrap()),
        "no file path in the message: {refused}"
    );

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
