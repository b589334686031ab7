//! Issue 10, databank items: data loss, hijacked ids and resource
//! exhaustion, each reproduced against a real `labmesh bank` process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use labmesh_tests::{init_logging, WAIT};
use labmesh_wire::{AsyncSocket, SocketOptions};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{client, run_cli_within, wait_for_bank, write_cfg, Cfg, Node};

/// A bank process on ephemeral ports with `data_dir` and extra `[bank]`
/// keys; returns it with its (ingest, retrieve) endpoints.
async fn bank_at(cfg: &Cfg, data: &Path) -> anyhow::Result<(Node, String, String)> {
    let data = data.to_string_lossy().into_owned();
    let node = Node::start(
        &cfg.path,
        &[
            "bank",
            "--bank-id",
            "bank-0",
            "--data-dir",
            &data,
            "--ingest-bind",
            "tcp://127.0.0.1:*",
            "--retrieve-bind",
            "tcp://127.0.0.1:*",
        ],
        "bank bank-0:",
    )
    .await?;
    // "bank bank-0: ingest tcp://…  retrieve tcp://…"
    let words: Vec<&str> = node.ready_line.split_whitespace().collect();
    let after = |w: &str| {
        words
            .iter()
            .position(|x| *x == w)
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string())
            .with_context(|| format!("no {w} endpoint in {:?}", node.ready_line))
    };
    let (ingest, retrieve) = (after("ingest")?, after("retrieve")?);
    Ok((node, ingest, retrieve))
}

/// Add `lines` to the `[bank]` table of the config file.
fn bank_keys(cfg: &Cfg, lines: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&cfg.path)?;
    let text = text.replacen("[bank]\n", &format!("[bank]\n{lines}\n"), 1);
    std::fs::write(&cfg.path, text)?;
    Ok(())
}

fn dealer(ctx: &zmq::Context, endpoint: &str, rcvhwm: i32) -> anyhow::Result<AsyncSocket> {
    let mut s = AsyncSocket::new(
        ctx,
        zmq::DEALER,
        SocketOptions {
            sndhwm: 100_000,
            rcvhwm,
            linger_ms: 0,
            max_msg_size: -1,
        },
    )?;
    s.connect(endpoint)?;
    Ok(s)
}

async fn send_json(s: &mut AsyncSocket, v: Value, data: Option<&[u8]>) -> anyhow::Result<()> {
    let head = serde_json::to_vec(&v)?;
    match data {
        Some(d) => s.send_multipart([head.as_slice(), d]).await?,
        None => s.send_multipart([head]).await?,
    }
    Ok(())
}

async fn recv_json(s: &mut AsyncSocket) -> anyhow::Result<(Value, Option<Vec<u8>>)> {
    let mut frames = tokio::time::timeout(WAIT, s.recv_multipart())
        .await
        .context("no reply from the bank")??;
    anyhow::ensure!(!frames.is_empty(), "empty reply");
    let head: Value = serde_json::from_slice(&frames.remove(0))?;
    Ok((head, frames.pop()))
}

/// The next reply that is not a chunk ack.
async fn recv_final(s: &mut AsyncSocket) -> anyhow::Result<Value> {
    loop {
        let (v, _) = recv_json(s).await?;
        if v["type"] != "ingest_ack_chunk" {
            return Ok(v);
        }
    }
}

fn data(size: usize, seed: u64) -> Vec<u8> {
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

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Download with a v0 `get`; `Err` carries the bank's error.
async fn get(ctx: &zmq::Context, retrieve: &str, id: &str) -> anyhow::Result<Vec<u8>> {
    let mut s = dealer(ctx, retrieve, 1000)?;
    send_json(&mut s, json!({"type":"get","dataset_id":id}), None).await?;
    let (meta, _) = recv_json(&mut s).await?;
    anyhow::ensure!(meta["type"] == "meta", "get {id}: {meta}");
    let mut out = Vec::new();
    loop {
        let (c, bytes) = recv_json(&mut s).await?;
        anyhow::ensure!(c["type"] == "chunk", "get {id}: {c}");
        if c["eof"] == json!(true) {
            return Ok(out);
        }
        out.extend_from_slice(&bytes.unwrap_or_default());
    }
}

/// Bytes and files under `dir` (not recursive).
fn dir_usage(dir: &Path) -> (u64, usize) {
    let mut bytes = 0;
    let mut files = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            files += 1;
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    (bytes, files)
}

/// Poll `f` (a measurement, there is no event to wait for) until it holds
/// or `limit` passes; returns whether it held.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Item 1: two uploads of the same dataset_id at once.

#[tokio::test]
async fn same_dataset_id_uploaded_twice_at_once_one_wins_and_nothing_is_lost() -> anyhow::Result<()>
{
    init_logging();
    let cfg = write_cfg(10.0)?;
    let _clean = Cleanup(cfg._dir.clone());
    let data_dir = cfg.path.with_file_name("bank_data");
    let (bank, ingest, retrieve) = bank_at(&cfg, &data_dir).await?;
    let ctx = zmq::Context::new();
    let rounds = 40;
    let mut anomalies = Vec::new();
    for round in 0..rounds {
        let id = format!("race-{round}");
        // Every fourth round both uploaders send the same bytes.
        let same = round % 4 == 3;
        let bodies = [
            data(300_000, 2 * round + 1),
            data(300_000, if same { 2 * round + 1 } else { 2 * round + 2 }),
        ];
        let mut socks = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let mut s = dealer(&ctx, &ingest, 1000)?;
            let token = format!("race{round}x{i}");
            send_json(
                &mut s,
                json!({"type":"ingest_start","dataset_id":id,"relay_id":"r","meta":{},"token":token}),
                None,
            )
            .await?;
            let (ack, _) = recv_json(&mut s).await?;
            anyhow::ensure!(ack["type"] == "ingest_ack", "{ack}");
            send_json(
                &mut s,
                json!({"type":"ingest_chunk","dataset_id":id,"seq":0,"eof":false}),
                Some(body),
            )
            .await?;
            let (a, _) = recv_json(&mut s).await?;
            anyhow::ensure!(a["type"] == "ingest_ack_chunk", "{a}");
            socks.push(s);
        }
        // Both eofs at once.
        for (s, body) in socks.iter_mut().zip(&bodies) {
            send_json(
                s,
                json!({"type":"ingest_chunk","dataset_id":id,"seq":1,"eof":true,
                       "size":body.len(),"sha256":sha(body)}),
                None,
            )
            .await?;
        }
        let mut finals = Vec::new();
        for s in socks.iter_mut() {
            finals.push(recv_final(s).await?);
        }
        let done: Vec<usize> = (0..2)
            .filter(|i| finals[*i]["type"] == "ingest_done")
            .collect();
        let conflicts = finals
            .iter()
            .filter(|f| f["type"] == "error" && f["error"]["code"] == 409)
            .count();
        let ok_outcome = if same {
            done.len() == 2
        } else {
            done.len() == 1 && conflicts == 1
        };
        let got = get(&ctx, &retrieve, &id).await;
        let winner_ok = match (&got, done.first()) {
            (Ok(bytes), Some(w)) => *bytes == bodies[*w],
            _ => false,
        };
        if !ok_outcome || !winner_ok {
            anomalies.push(format!(
                "{id}: replies {finals:?}; get: {}",
                match &got {
                    Ok(b) => format!("{} bytes", b.len()),
                    Err(e) => format!("{e:#}"),
                }
            ));
        }
    }
    eprintln!(
        "same-id races: {} anomalies in {rounds} rounds",
        anomalies.len()
    );
    for a in &anomalies {
        eprintln!("  {a}");
    }
    assert!(
        anomalies.is_empty(),
        "{} of {rounds} rounds lost data or answered wrongly",
        anomalies.len()
    );
    bank.kill().await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Item 2: disk full, interrupted CLI uploads, partial quota, resume.

/// A tmpfs of `size` mounted at `dir`; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(dir.to_path_buf()))
        } else {
            Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn disk_full_upload_frees_its_space_so_a_smaller_upload_fits() -> anyhow::Result<()> {
    init_logging();
    let cfg = write_cfg(10.0)?;
    let _clean = Cleanup(cfg._dir.clone());
    let data_dir = cfg.path.with_file_name("bank_tmpfs");
    let _fs = match Tmpfs::mount(&data_dir, "8m") {
        Ok(m) => m,
        Err(why) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED disk-full test: {why}");
            return Ok(());
        }
        Err(why) => anyhow::bail!("CI=true and no tmpfs: {why}"),
    };
    let broker = Node::start(&cfg.path, &["broker"], "broker:").await?;
    let (bank, _, _) = bank_at(&cfg, &data_dir).await?;
    let ctx = zmq::Context::new();
    let c = client(&ctx, &cfg).await?;
    wait_for_bank(&c, "bank-0", WAIT).await?;
    let cfgp = Some(cfg.path.as_path());
    let dir = cfg.path.parent().context("cfg dir")?.to_path_buf();
    let upload = |name: &str, size: usize, seed: u64| -> anyhow::Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, data(size, seed))?;
        Ok(p)
    };

    let small = upload("small.bin", 100_000, 1)?;
    let out = run_cli_within(
        cfgp,
        &["upload", &small.to_string_lossy(), "--dataset-id", "small"],
        WAIT,
    )
    .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let big = upload("big.bin", 12_000_000, 2)?;
    let out = run_cli_within(
        cfgp,
        &["upload", &big.to_string_lossy(), "--dataset-id", "big"],
        WAIT,
    )
    .await?;
    assert_ne!(out.code, 0, "a 12 MB upload cannot fit in 8 MiB");
    assert!(
        out.stderr.contains("No space left on device"),
        "{}",
        out.stderr
    );
    let partial = data_dir.join("partial");
    let freed = eventually(Duration::from_secs(5), || dir_usage(&partial).0 == 0).await;
    let (left, files) = dir_usage(&partial);
    eprintln!("after the failed upload: {left} bytes in {files} files under partial/");

    // Downloads keep working.
    let got = dir.join("small.out");
    let out = run_cli_within(cfgp, &["get", "small", "-o", &got.to_string_lossy()], WAIT).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(&got)?, data(100_000, 1));

    // A smaller upload that fits succeeds.
    let mid = upload("mid.bin", 3_000_000, 3)?;
    let out = run_cli_within(
        cfgp,
        &["upload", &mid.to_string_lossy(), "--dataset-id", "mid"],
        WAIT,
    )
    .await?;
    eprintln!("3 MB upload after the failure: exit {}", out.code);
    assert!(freed, "the failed upload left {left} bytes in partial/");
    assert_eq!(out.code, 0, "{}", out.stderr);

    bank.kill().await?;
    broker.kill().await?;
    Ok(())
}

/// Start `labmesh upload ARGS` in the background.
fn spawn_upload(cfg: &Cfg, args: &[&str]) -> anyhow::Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(super::BIN)
        .arg("--config")
        .arg(&cfg.path)
        .arg("upload")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?)
}

fn signal(child: &tokio::process::Child, sig: &str) -> anyhow::Result<()> {
    let pid = child.id().context("child gone")?;
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    anyhow::ensure!(st.success(), "kill {sig} failed");
    Ok(())
}

/// Largest `offset` in the checkpoints under `partial`.
fn checkpointed(partial: &Path) -> u64 {
    std::fs::read_dir(partial)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter_map(|v| v["offset"].as_u64())
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn interrupted_or_failed_cli_upload_frees_its_partial_and_a_rerun_resumes(
) -> anyhow::Result<()> {
    init_logging();
    let cfg = write_cfg(10.0)?;
    let _clean = Cleanup(cfg._dir.clone());
    let quota = 96 * 1024 * 1024u64;
    bank_keys(&cfg, &format!("partial_quota_bytes = {quota}"))?;
    let data_dir = cfg.path.with_file_name("bank_data");
    let partial = data_dir.join("partial");
    let broker = Node::start(&cfg.path, &["broker"], "broker:").await?;
    let (bank, _, _) = bank_at(&cfg, &data_dir).await?;
    let ctx = zmq::Context::new();
    let c = client(&ctx, &cfg).await?;
    wait_for_bank(&c, "bank-0", WAIT).await?;

    // Ctrl-C and SIGTERM in the middle of `labmesh upload /dev/zero`.
    let mut report = Vec::new();
    for sig in ["-INT", "-TERM"] {
        let mut up = spawn_upload(&cfg, &["/dev/zero", "--dataset-id", "zeros"])?;
        let started = eventually(WAIT, || dir_usage(&partial).0 >= 20_000_000).await;
        assert!(started, "upload of /dev/zero did not get going");
        signal(&up, sig)?;
        let st = tokio::time::timeout(WAIT, up.wait()).await??;
        let freed = eventually(Duration::from_secs(5), || dir_usage(&partial).0 == 0).await;
        let (left, _) = dir_usage(&partial);
        eprintln!("after kill {sig}: exit {st}, {left} bytes left in partial/");
        report.push((sig, st.success(), freed, left));
    }

    // Uninterrupted: the quota stops it with a clear error, and frees it.
    // (Filling the quota takes a while on a loaded machine: a wider bound.)
    let up = spawn_upload(&cfg, &["/dev/zero", "--dataset-id", "zeros"])?;
    let (refused, stderr) = match tokio::time::timeout(WAIT * 4, up.wait_with_output()).await {
        Ok(out) => {
            let out = out?;
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            (!out.status.success(), stderr)
        }
        Err(_) => (
            false,
            format!("still running after {:?} (killed)", WAIT * 4),
        ),
    };
    eprintln!("/dev/zero against a {quota}-byte quota: refused {refused}; {stderr}");
    let freed = eventually(Duration::from_secs(5), || dir_usage(&partial).0 == 0).await;
    let (left, _) = dir_usage(&partial);
    eprintln!("after the quota refusal: {left} bytes left in partial/");

    // SIGKILL (nothing can abort), then the same command again resumes.
    let dir = cfg.path.parent().context("cfg dir")?.to_path_buf();
    let file = dir.join("large.bin");
    let body = data(48 * 1024 * 1024, 9);
    std::fs::write(&file, &body)?;
    let f = file.to_string_lossy().into_owned();
    let args = ["--dataset-id", "large", f.as_str()];
    let mut up = spawn_upload(&cfg, &args)?;
    let durable = eventually(WAIT, || checkpointed(&partial) > 0).await;
    up.start_kill()?;
    let _ = up.wait().await;
    let out = run_cli_within(
        Some(&cfg.path),
        &["upload", "--dataset-id", "large", &f],
        WAIT * 2,
    )
    .await?;
    eprintln!("rerun after SIGKILL: {}", out.stdout.trim());
    let receipt: Value = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);

    for (sig, _, freed, left) in &report {
        assert!(freed, "kill {sig} left {left} bytes of partial data");
    }
    assert!(refused, "{stderr}");
    assert!(
        stderr.contains("quota"),
        "the quota refusal does not say so: {stderr}"
    );
    assert!(freed, "the refused upload left {left} bytes in partial/");
    assert!(durable, "the first run never reached a checkpoint");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(receipt["sha256"], json!(sha(&body)));
    assert!(
        receipt["resumed_from"].as_u64().unwrap_or(0) > 0,
        "the rerun did not resume: {receipt}"
    );
    bank.kill().await?;
    broker.kill().await?;
    Ok(())
}

/// Removes a test's directory (datasets, partial uploads) when dropped.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Item 8: stalled credit-mode downloads.

#[tokio::test]
async fn stalled_credit_downloads_are_capped_and_their_memory_comes_back() -> anyhow::Result<()> {
    init_logging();
    let cfg = write_cfg(10.0)?;
    let _clean = Cleanup(cfg._dir.clone());
    let data_dir = cfg.path.with_file_name("bank_data");
    let (bank, ingest, retrieve) = bank_at(&cfg, &data_dir).await?;
    let ctx = zmq::Context::new();
    let file = cfg.path.with_file_name("64m.bin");
    std::fs::write(&file, data(64 * 1024 * 1024, 5))?;
    labmesh_transfer::upload_file(
        &ctx,
        &ingest,
        &file,
        labmesh_transfer::UploadOptions {
            dataset_id: Some("big".into()),
            ..Default::default()
        },
    )
    .await?;
    for i in 0..20 {
        let f = cfg.path.with_file_name(format!("p{i}.bin"));
        std::fs::write(&f, data(256 * 1024, 100 + i))?;
        let opts = labmesh_transfer::UploadOptions {
            dataset_id: Some(format!("p{i}")),
            ..Default::default()
        };
        labmesh_transfer::upload_file(&ctx, &ingest, &f, opts).await?;
    }
    let base = bank.rss_kib()?;

    // One peer starts 20 downloads at once, reading nothing.
    let mut one = dealer(&ctx, &retrieve, 1)?;
    for i in 0..20 {
        let g = json!({"type":"get","dataset_id":format!("p{i}"),"credit":64,"chunk_size":65536});
        send_json(&mut one, g, None).await?;
    }
    let mut per_peer_busy = 0;
    while let Ok(Ok(mut f)) =
        tokio::time::timeout(Duration::from_millis(500), one.recv_multipart()).await
    {
        let v: Value = serde_json::from_slice(&f.remove(0)).unwrap_or(Value::Null);
        if v["type"] == "error" && v["error"]["code"] == 503 {
            per_peer_busy += 1;
        }
    }

    // 150 peers, each asking for the whole credit and never reading a chunk.
    let mut socks = Vec::new();
    let (mut admitted, mut busy, mut other) = (0, 0, Vec::new());
    let get = json!({"type":"get","dataset_id":"big","credit":64,"chunk_size":524288,"offset":0});
    for _ in 0..150 {
        let mut s = dealer(&ctx, &retrieve, 1)?;
        send_json(&mut s, get.clone(), None).await?;
        socks.push(s);
    }
    for s in socks.iter_mut() {
        let (v, _) = recv_json(s).await?;
        match (v["type"].as_str(), v["error"]["code"].as_i64()) {
            (Some("meta"), _) => admitted += 1,
            (Some("error"), Some(503)) => busy += 1,
            _ => other.push(v),
        }
    }
    let mut peak = base;
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(4) {
        peak = peak.max(bank.rss_kib()?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(socks);
    drop(one);
    let after_limit = Duration::from_secs(10);
    let back = eventually(after_limit, || {
        bank.rss_kib()
            .map(|r| r < base + 64 * 1024)
            .unwrap_or(false)
    })
    .await;
    let after = bank.rss_kib()?;
    eprintln!(
        "150 stalled credit downloads: {admitted} admitted, {busy} busy, {per_peer_busy} of 20 \
         from one peer busy; RSS {} MiB before, peak {} MiB, {} MiB after they closed",
        base / 1024,
        peak / 1024,
        after / 1024
    );
    assert!(other.is_empty(), "unexpected replies: {other:?}");
    assert!(busy > 0, "no download was refused");
    assert!(per_peer_busy > 0, "one peer may open 20 downloads");
    assert!(
        peak < base + 600 * 1024,
        "RSS grew by {} MiB",
        (peak - base) / 1024
    );
    assert!(
        back,
        "RSS stayed at {} MiB (base {} MiB)",
        after / 1024,
        base / 1024
    );
    // Still serving: a new peer gets the data, or a clear busy answer while
    // slots of vanished peers that were waiting for credit are still held
    // (a ROUTER learns that a peer left only when it sends to it; they are
    // freed after idle_timeout).
    match get_ok(&ctx, &retrieve).await {
        Ok(n) => assert_eq!(n, 64 * 1024 * 1024),
        Err(e) => {
            let e = format!("{e:#}");
            eprintln!("a new download after the stalled ones closed: {e}");
            assert!(
                e.contains("\"code\":503") && e.contains("max_downloads"),
                "{e}"
            );
        }
    }
    bank.kill().await?;
    Ok(())
}

async fn get_ok(ctx: &zmq::Context, retrieve: &str) -> anyhow::Result<usize> {
    Ok(get(ctx, retrieve, "big").await?.len())
}

// ---------------------------------------------------------------------------
// Item 10: 20 000 ingest_start from one connection.

#[tokio::test]
async fn twenty_thousand_ingest_starts_from_one_connection_are_refused_cheaply(
) -> anyhow::Result<()> {
    init_logging();
    let cfg = write_cfg(10.0)?;
    let _clean = Cleanup(cfg._dir.clone());
    let data_dir = cfg.path.with_file_name("bank_data");
    let partial = data_dir.join("partial");
    let (bank, ingest, _) = bank_at(&cfg, &data_dir).await?;
    let pid = bank.pid();
    let ctx = zmq::Context::new();
    let (rss0, fds0) = (bank.rss_kib()?, open_fds(pid));

    let mut s = dealer(&ctx, &ingest, 100_000)?;
    let n = 20_000;
    let t0 = Instant::now();
    let (mut acks, mut refused, mut other) = (0u32, 0u32, 0u32);
    let mut refusal = String::new();
    let mut sent = 0;
    // Send and read at once; stop after 10 s like the attack did.
    while sent < n && t0.elapsed() < Duration::from_secs(10) {
        let token = format!("flood{sent}");
        let head = serde_json::to_vec(
            &json!({"type":"ingest_start","dataset_id":format!("f{sent}"),"token":token}),
        )?;
        s.send_multipart([head]).await?;
        sent += 1;
        while let Ok(Ok(f)) = tokio::time::timeout(Duration::ZERO, s.recv_multipart()).await {
            let v: Value = serde_json::from_slice(f.first().map(Vec::as_slice).unwrap_or(b"null"))?;
            match v["type"].as_str() {
                Some("ingest_ack") => acks += 1,
                Some("error") => {
                    refused += 1;
                    refusal = v["error"].to_string();
                }
                _ => other += 1,
            }
        }
    }
    // The rest of the answers (a reply for every start).
    while acks + refused + other < sent {
        let Ok(Ok(f)) = tokio::time::timeout(Duration::from_secs(5), s.recv_multipart()).await
        else {
            break;
        };
        let v: Value = serde_json::from_slice(f.first().map(Vec::as_slice).unwrap_or(b"null"))?;
        match v["type"].as_str() {
            Some("ingest_ack") => acks += 1,
            Some("error") => {
                refused += 1;
                refusal = v["error"].to_string();
            }
            _ => other += 1,
        }
    }
    let flood_time = t0.elapsed();
    let (rss1, fds1) = (bank.rss_kib()?, open_fds(pid));
    let (_, files) = dir_usage(&partial);

    // A real upload from another connection still works: the flooding
    // peer's own cap leaves room for others.
    let file = cfg.path.with_file_name("legit.bin");
    std::fs::write(&file, data(2_000_000, 7))?;
    let legit = labmesh_transfer::upload_file(
        &ctx,
        &ingest,
        &file,
        labmesh_transfer::UploadOptions {
            dataset_id: Some("legit".into()),
            ..Default::default()
        },
    )
    .await;

    // 300 more connections with one start each: the total cap.
    let mut many = Vec::new();
    for i in 0..300 {
        let mut d = dealer(&ctx, &ingest, 10)?;
        send_json(
            &mut d,
            json!({"type":"ingest_start","dataset_id":format!("m{i}"),"token":format!("many{i}")}),
            None,
        )
        .await?;
        many.push(d);
    }
    let (mut many_acks, mut many_refused) = (0, 0);
    for d in many.iter_mut() {
        let (v, _) = recv_json(d).await?;
        if v["type"] == "ingest_ack" {
            many_acks += 1;
        } else if v["type"] == "error" {
            many_refused += 1;
        }
    }
    drop(many);
    let (_, files_many) = dir_usage(&partial);

    let t = Instant::now();
    let st = bank.terminate().await;
    let stop_time = t.elapsed();
    let t = Instant::now();
    let (bank, _, _) = bank_at(&cfg, &data_dir).await?;
    let start_time = t.elapsed();
    eprintln!(
        "{sent} ingest_start in {flood_time:?}: {acks} acked, {refused} refused ({refusal}), \
         {other} other; RSS {} -> {} MiB, fds {fds0} -> {fds1}, {files} files in partial/; \
         300 peers: {many_acks} acked, {many_refused} refused, {files_many} files; \
         legit upload: {}; SIGTERM took {stop_time:?}, restart {start_time:?}",
        rss0 / 1024,
        rss1 / 1024,
        match &legit {
            Ok(r) => format!("ok {} bytes", r.size),
            Err(e) => format!("{e:#}"),
        }
    );
    assert!(legit.is_ok(), "legit upload failed");
    assert!(st.is_ok(), "SIGTERM: {st:?}");
    assert!(refused > 0 && acks <= 64, "one peer opened {acks} sessions");
    assert!(many_refused > 0, "300 peers opened {many_acks} sessions");
    assert!(fds1 < fds0 + 600, "open files {fds0} -> {fds1}");
    assert!(files_many < 2_000, "{files_many} files in partial/");
    assert!(
        rss1 < rss0 + 100 * 1024,
        "RSS {} -> {} MiB",
        rss0 / 1024,
        rss1 / 1024
    );
    assert!(
        stop_time < Duration::from_secs(5),
        "SIGTERM took {stop_time:?}"
    );
    assert!(
        start_time < Duration::from_secs(3),
        "restart took {start_time:?}"
    );
    bank.kill().await?;
    Ok(())
}
