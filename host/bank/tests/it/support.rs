//! Shared helpers: banks on ephemeral loopback ports, deterministic data,
//! raw sockets, the bank_node example process.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use labmesh_bank::{Bank, BankHandle, BankOptions};
use labmesh_wire::{AsyncSocket, SocketOptions};
use sha2::{Digest, Sha256};

pub const T: Duration = Duration::from_secs(30);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub async fn start_bank(ctx: &zmq::Context, dir: &Path) -> BankHandle {
    init_tracing();
    Bank::start(ctx, BankOptions::new("bank-t", dir))
        .await
        .expect("bank starts")
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
pub fn data(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    out
}

pub fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write test file");
    p
}

/// A raw DEALER for hand-made messages.
pub fn raw_dealer(ctx: &zmq::Context, endpoint: &str) -> AsyncSocket {
    let mut s = AsyncSocket::new(
        ctx,
        zmq::DEALER,
        SocketOptions {
            linger_ms: 0,
            ..Default::default()
        },
    )
    .expect("socket");
    s.connect(endpoint).expect("connect");
    s
}

pub async fn request(sock: &mut AsyncSocket, frames: &[&[u8]]) -> serde_json::Value {
    sock.send_multipart(frames.iter().copied())
        .await
        .expect("send");
    recv_json(sock).await
}

pub async fn recv_json(sock: &mut AsyncSocket) -> serde_json::Value {
    let frames = tokio::time::timeout(T, sock.recv_multipart())
        .await
        .expect("reply in time")
        .expect("recv");
    serde_json::from_slice(&frames[0]).expect("JSON reply")
}

/// The bank_node example binary (built by `cargo test` with the tests).
pub fn bank_node_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("examples").join("bank_node")
}

pub struct BankProc {
    pub child: Child,
    pub ingest: String,
    pub retrieve: String,
}

impl BankProc {
    pub fn spawn(data_dir: &Path, extra: &[&str]) -> BankProc {
        let path = bank_node_path();
        assert!(
            path.exists(),
            "{} missing: build it with `cargo build -p labmesh-bank --examples`",
            path.display()
        );
        let child = Command::new(path)
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bank_node");
        BankProc::from_child(child)
    }

    /// Wait for a spawned bank_node's READY line.
    pub fn from_child(mut child: Child) -> BankProc {
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(T).expect("bank_node READY line");
        let mut parts = line.split_whitespace();
        assert_eq!(parts.next(), Some("READY"), "bank_node said {line:?}");
        let ingest = parts.next().expect("ingest").to_string();
        let retrieve = parts.next().expect("retrieve").to_string();
        BankProc {
            child,
            ingest,
            retrieve,
        }
    }

    /// SIGKILL (std's `Child::kill` sends SIGKILL on Unix).
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    /// Close stdin: graceful shutdown.
    pub fn stop(mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.wait();
    }
}

impl Drop for BankProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
