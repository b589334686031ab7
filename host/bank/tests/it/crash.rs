//! Crash safety with real processes: SIGKILL the bank mid-upload, restart
//! it on the same endpoints, check nothing partial is visible, and let the
//! uploader resume.

use std::path::Path;
use std::time::{Duration, Instant};

use labmesh_transfer::{download_to_file, list_datasets, upload_reader, Query, UploadOptions};
use tokio::io::AsyncWriteExt;

use crate::support::*;

/// Wait (bounded) until a resumable upload checkpoint under `dir` records
/// at least `min` bytes. The bank's only observable event here is the file.
async fn wait_checkpoint(dir: &Path, min: u64) -> u64 {
    let deadline = Instant::now() + T;
    loop {
        if let Ok(entries) = std::fs::read_dir(dir.join("partial")) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "json") {
                    if let Ok(b) = std::fs::read(e.path()) {
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                            let off = v["offset"].as_u64().unwrap_or(0);
                            if off >= min {
                                return off;
                            }
                        }
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "no checkpoint of {min} bytes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_upload_then_resume() {
    init_tracing();
    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bank");
    let bank = BankProc::spawn(&dir, &["--checkpoint-bytes", "1048576"]);
    let (ingest, retrieve) = (bank.ingest.clone(), bank.retrieve.clone());

    // A legacy (labmesh v0) session that will be cut off too.
    let mut legacy = raw_dealer(&ctx, &ingest);
    let r = request(
        &mut legacy,
        &[br#"{"type":"ingest_start","dataset_id":"legacy","relay_id":"r"}"#],
    )
    .await;
    assert_eq!(r["type"], "ingest_ack");
    let r = request(
        &mut legacy,
        &[
            br#"{"type":"ingest_chunk","dataset_id":"legacy","seq":0,"eof":false}"#,
            b"partial",
        ],
    )
    .await;
    assert_eq!(r["next_seq"], 1);

    // The resumable upload reads from a pipe the test feeds.
    let bytes = data(24 * 1024 * 1024, 11);
    let (mut feed, source) = tokio::io::duplex(256 * 1024);
    let opts = UploadOptions {
        dataset_id: Some("survivor".into()),
        relay_id: "r-crash".into(),
        chunk_size: 256 * 1024,
        window: 8,
        timeout: Duration::from_secs(2),
        retries: 10,
        ..Default::default()
    };
    let upload = {
        let ctx = ctx.clone();
        let ingest = ingest.clone();
        tokio::spawn(async move { upload_reader(&ctx, &ingest, source, None, opts).await })
    };
    let half = 10 * 1024 * 1024;
    tokio::time::timeout(T, feed.write_all(&bytes[..half]))
        .await
        .unwrap()
        .unwrap();
    let durable = wait_checkpoint(&dir, 4 * 1024 * 1024).await;

    bank.kill();
    let bank = BankProc::spawn(
        &dir,
        &[
            "--ingest",
            &ingest,
            "--retrieve",
            &retrieve,
            "--checkpoint-bytes",
            "1048576",
        ],
    );

    // Nothing partial is visible, the legacy part file is gone, the
    // resumable one is kept.
    assert!(list_datasets(&ctx, &retrieve, Query::default())
        .await
        .unwrap()
        .is_empty());
    let parts: Vec<String> = std::fs::read_dir(dir.join("partial"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(parts.iter().all(|p| !p.starts_with("legacy-")), "{parts:?}");
    assert_eq!(
        parts.iter().filter(|p| p.ends_with(".json")).count(),
        1,
        "{parts:?}"
    );
    assert_eq!(std::fs::read_dir(dir.join("objects")).unwrap().count(), 0);
    assert!(durable >= 4 * 1024 * 1024);

    // Feed the rest: the uploader finds the bank gone, resumes, finishes.
    tokio::time::timeout(T, feed.write_all(&bytes[half..]))
        .await
        .unwrap()
        .unwrap();
    drop(feed);
    let receipt = tokio::time::timeout(Duration::from_secs(60), upload)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(receipt.sha256, sha_hex(&bytes));
    assert_eq!(receipt.size, bytes.len() as u64);
    assert!(receipt.resumes >= 1, "{receipt:?}");

    let list = list_datasets(&ctx, &retrieve, Query::default())
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].sha256, sha_hex(&bytes));
    let dest = tmp.path().join("back.bin");
    download_to_file(&ctx, &retrieve, "survivor", &dest, Default::default())
        .await
        .unwrap();
    assert!(std::fs::read(&dest).unwrap() == bytes);
    // The legacy client learns its session is gone.
    let r = request(
        &mut legacy,
        &[
            br#"{"type":"ingest_chunk","dataset_id":"legacy","seq":1,"eof":false}"#,
            b"more",
        ],
    )
    .await;
    assert_eq!(r["error"]["message"], "no ingest_start");
    bank.stop();
}

/// A graceful stop keeps a resumable upload; a restart serves the resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_resumable_upload() {
    init_tracing();
    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bank");
    let bank = BankProc::spawn(&dir, &[]);
    let (ingest, retrieve) = (bank.ingest.clone(), bank.retrieve.clone());
    let mut s = raw_dealer(&ctx, &ingest);
    let r = request(
        &mut s,
        &[br#"{"type":"ingest_start","dataset_id":"g","relay_id":"r","token":"tok1"}"#],
    )
    .await;
    assert_eq!(
        r,
        serde_json::json!({"type":"ingest_ack","dataset_id":"g","token":"tok1","next_seq":0,"offset":0,"max_chunk":16777216})
    );
    let r = request(
        &mut s,
        &[
            br#"{"type":"ingest_chunk","dataset_id":"g","seq":0,"eof":false}"#,
            b"abc",
        ],
    )
    .await;
    assert_eq!(r["next_seq"], 1);
    bank.stop();
    let bank = BankProc::spawn(&dir, &["--ingest", &ingest, "--retrieve", &retrieve]);
    let mut s = raw_dealer(&ctx, &ingest);
    let r = request(
        &mut s,
        &[br#"{"type":"ingest_resume","dataset_id":"g","token":"tok1"}"#],
    )
    .await;
    assert_eq!(r["next_seq"], 1, "{r}");
    assert_eq!(r["offset"], 3, "{r}");
    let r = request(
        &mut s,
        &[
            br#"{"type":"ingest_chunk","dataset_id":"g","seq":1,"eof":false}"#,
            b"def",
        ],
    )
    .await;
    assert_eq!(r["next_seq"], 2);
    let r = request(
        &mut s,
        &[br#"{"type":"ingest_chunk","dataset_id":"g","seq":2,"eof":true}"#],
    )
    .await;
    assert_eq!(r["type"], "ingest_done", "{r}");
    assert_eq!(r["sha256"], sha_hex(b"abcdef"));
    // A resume after the commit (ingest_done lost) is answered with done.
    let sha = sha_hex(b"abcdef");
    let again = format!(
        r#"{{"type":"ingest_resume","dataset_id":"g","token":"tok1","size":6,"sha256":"{sha}"}}"#
    );
    let r = request(&mut s, &[again.as_bytes()]).await;
    assert_eq!(r["type"], "ingest_done", "{r}");
    bank.stop();
}
