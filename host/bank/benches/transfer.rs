//! Bank transfer benchmark (figures, not a timed test).
//!
//! ```text
//! cargo build --release -p labmesh-bank --examples   # for the RSS figure
//! cargo bench -p labmesh-bank --bench transfer
//! LMH_BENCH_MB=256 LMH_BENCH_RSS_MB=1024 cargo bench -p labmesh-bank --bench transfer
//! ```
//!
//! Prints, from one run on loopback TCP:
//! * raw ZeroMQ DEALER->ROUTER throughput with 1 MiB messages (baseline);
//! * ingest MB/s (Rust uploader -> in-process bank, SHA-256 on both sides,
//!   fsync + commit included);
//! * download MB/s, credit mode and legacy `get` (SHA-256 verified,
//!   temp file + fsync + rename included);
//! * the peak RSS (VmHWM) of a separate bank process while 1 GiB goes in and
//!   back out.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::pin::Pin;
use std::process::{Command, Stdio};

use std::time::Instant;

use labmesh_bank::{Bank, BankOptions};
use labmesh_transfer::{
    download_to_file, upload_file, upload_reader, DownloadOptions, UploadOptions,
};
use tokio::io::{AsyncRead, ReadBuf};

const MIB: usize = 1024 * 1024;

fn raw_zmq(total: usize) -> f64 {
    let ctx = zmq::Context::new();
    let router = ctx.socket(zmq::ROUTER).unwrap();
    router.bind("tcp://127.0.0.1:*").unwrap();
    let ep = router.get_last_endpoint().unwrap().unwrap();
    let n = total / MIB;
    let ctx2 = ctx.clone();
    let t0 = Instant::now();
    let sender = std::thread::spawn(move || {
        let d = ctx2.socket(zmq::DEALER).unwrap();
        d.connect(&ep).unwrap();
        let msg = vec![7u8; MIB];
        for _ in 0..n {
            d.send(&msg[..], 0).unwrap();
        }
        d
    });
    let mut got = 0;
    while got < n {
        let _ = router.recv_multipart(0).unwrap();
        got += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(sender.join());
    total as f64 / MIB as f64 / secs
}

fn main() {
    let mb = common::env_n("LMH_BENCH_MB", 256);
    let rss_mb = common::env_n("LMH_BENCH_RSS_MB", 1024);
    let total = mb * MIB;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();

    let raw = raw_zmq(total);
    println!("raw zmq DEALER->ROUTER, 1 MiB messages : {raw:8.0} MB/s");

    // Source file on disk (page cache warm), as a relay would upload.
    let src = tmp.path().join("src.bin");
    rt.block_on(async {
        let mut f = std::fs::File::create(&src).unwrap();
        let mut p = common::Pattern {
            left: total as u64,
            x: 1,
        };
        let mut buf = vec![0u8; 4 * MIB];
        loop {
            let mut rb = ReadBuf::new(&mut buf);
            let _ = std::future::poll_fn(|cx| Pin::new(&mut p).poll_read(cx, &mut rb)).await;
            if rb.filled().is_empty() {
                break;
            }
            f.write_all(rb.filled()).unwrap();
        }
    });

    rt.block_on(async {
        let ctx = zmq::Context::new();
        let mut bopts = BankOptions::new("bench", tmp.path().join("bank"));
        bopts.checkpoint_bytes = (common::env_n("LMH_BENCH_CHECKPOINT_MB", 32) * MIB) as u64;
        let bank = Bank::start(&ctx, bopts).await.unwrap();
        let opts = UploadOptions {
            dataset_id: Some("bench".into()),
            chunk_size: MIB,
            window: 8,
            ..Default::default()
        };
        let t0 = Instant::now();
        upload_file(&ctx, bank.ingest_endpoint(), &src, opts)
            .await
            .unwrap();
        let up = mb as f64 / t0.elapsed().as_secs_f64();
        println!(
            "ingest {mb} MiB (sha256, fsync, commit)  : {up:8.0} MB/s  ({:.0}% of raw)",
            100.0 * up / raw
        );
        for (label, credit) in [
            ("download legacy get ", 0u32),
            (
                "download credit mode",
                common::env_n("LMH_BENCH_CREDIT", 32) as u32,
            ),
            ("download legacy get ", 0),
        ] {
            let dest = tmp.path().join("dl.bin");
            let opts = DownloadOptions {
                credit,
                chunk_size: Some(MIB as u64),
                ..Default::default()
            };
            let t0 = Instant::now();
            download_to_file(&ctx, bank.retrieve_endpoint(), "bench", &dest, opts)
                .await
                .unwrap();
            let down = mb as f64 / t0.elapsed().as_secs_f64();
            println!(
                "{label} {mb} MiB (sha256)     : {down:8.0} MB/s  ({:.0}% of raw)",
                100.0 * down / raw
            );
            let _ = std::fs::remove_file(&dest);
        }
        bank.shutdown().await;
    });
    let _ = std::fs::remove_file(&src);

    // Peak RSS of a bank process moving rss_mb in and out.
    let exe = std::env::current_exe().unwrap();
    let node = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples/bank_node");
    if !node.exists() {
        println!("bank peak RSS: skipped ({} missing; run `cargo build --release -p labmesh-bank --examples`)", node.display());
        return;
    }
    let mut child = Command::new(&node)
        .arg(tmp.path().join("rssbank"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let mut parts = line.split_whitespace().skip(1);
    let (ingest, retrieve) = (
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
    );
    let pid = child.id();
    let idle = common::vm_hwm_kib(pid).unwrap_or(0);
    rt.block_on(async {
        let ctx = zmq::Context::new();
        let opts = UploadOptions {
            dataset_id: Some("big".into()),
            chunk_size: MIB,
            ..Default::default()
        };
        let source = common::Pattern { left: (rss_mb * MIB) as u64, x: 3 };
        upload_reader(&ctx, &ingest, source, None, opts).await.unwrap();
        let after_up = common::vm_hwm_kib(pid).unwrap_or(0);
        let dest = tmp.path().join("big.bin");
        let mut after = Vec::new();
        for credit in [0u32, 32] {
            let opts = DownloadOptions { credit, ..Default::default() };
            download_to_file(&ctx, &retrieve, "big", &dest, opts).await.unwrap();
            let _ = std::fs::remove_file(&dest);
            after.push(common::vm_hwm_kib(pid).unwrap_or(0));
        }
        println!(
            "bank process VmHWM: idle {:.1} MiB; after {rss_mb} MiB ingest {:.1} MiB; + legacy download {:.1} MiB; + credit download {:.1} MiB",
            idle as f64 / 1024.0,
            after_up as f64 / 1024.0,
            after[0] as f64 / 1024.0,
            after[1] as f64 / 1024.0
        );
    });
    drop(child.stdin.take());
    let _ = child.wait();
}
