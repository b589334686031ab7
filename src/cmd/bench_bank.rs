//! `labmesh bench bank`: the bank on the Python client's path (PyPI
//! labmesh `upload_dataset` until the `dataset.<bank>` announcement, and
//! `BankClient.download`) against the Python labmesh bank, next to
//! `dd conv=fsync` of the same bytes on the same disk, all in one run,
//! alternating; plus the Rust uploader/downloader and the Rust bank's peak
//! RSS (it runs as a child process, `labmesh bank`).

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use labmesh_client::{Client, ClientOptions};
use sha2::{Digest, Sha256};

use super::bench_all::{median, Row};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset size in MiB (1..=4096).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=4096))]
    mb: u64,
    /// Runs of each measurement; medians are printed (1..=20).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=20))]
    runs: u64,
}

pub async fn exec(a: Args, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let rows = run(ctx, usize::try_from(a.mb)?, usize::try_from(a.runs)?).await?;
    super::bench_all::print_table("bank", &rows);
    Ok(ExitCode::SUCCESS)
}

/// The Python side: one upload (timed until the announcement) and one
/// download of the same dataset, one JSON line on stdout.
const PY_CLIENT: &str = r#"
import asyncio, json, os, sys, time
import zmq, zmq.asyncio
from labmesh.relay import upload_dataset
from labmesh.client import BankClient

async def wait_announce(sub, did, timeout):
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(did)
        frames = await asyncio.wait_for(sub.recv_multipart(), timeout=left)
        if json.loads(frames[-1]).get("dataset_id") == did:
            return

async def main():
    ingest, retrieve, xpub, src, did, out = sys.argv[1:7]
    with open(src, "rb") as f:
        data = f.read()
    ctx = zmq.asyncio.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"dataset.")
    sub.connect(xpub)
    # A small upload first proves the subscription reaches announcements.
    for i in range(100):
        w = f"{did}-warm{i}"
        await upload_dataset(ingest, b"warm" * 256, dataset_id=w, relay_id="bench")
        try:
            await wait_announce(sub, w, 0.3)
            break
        except (asyncio.TimeoutError, TimeoutError):
            pass
    else:
        raise SystemExit("no announcement for the warm-up upload")
    os.sync()  # no dirty pages of an earlier step in this one's time
    t0 = time.perf_counter()
    await upload_dataset(ingest, data, dataset_id=did, relay_id="bench")
    await wait_announce(sub, did, 120)
    up = time.perf_counter() - t0
    bank = BankClient(retrieve)
    await bank.connect()
    os.sync()
    t0 = time.perf_counter()
    await bank.download(did, out, timeout=120)
    down = time.perf_counter() - t0
    print(json.dumps({"up_s": up, "down_s": down, "size": os.path.getsize(out)}), flush=True)
    os._exit(0)

asyncio.run(main())
"#;

const PY_BANK: &str = r#"
import asyncio, sys
from labmesh.databank import DataBank

async def main():
    ingest, retrieve, data_dir, rpc, xsub, bank_id = sys.argv[1:7]
    bank = DataBank(ingest_bind=ingest, retrieve_bind=retrieve, data_dir=data_dir,
                    broker_rpc=rpc, broker_xsub=xsub, bank_id=bank_id, heartbeat_sec=1)
    await bank.serve()

asyncio.run(main())
"#;

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether `python3` can import the PyPI labmesh package (and pyzmq).
pub(crate) fn python_labmesh() -> Result<(), String> {
    match std::process::Command::new("python3")
        .args(["-c", "import labmesh, zmq"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(_) => Err("python3 cannot import labmesh (pip install labmesh pyzmq)".into()),
        Err(e) => Err(format!("python3 not runnable: {e}")),
    }
}

/// `VmHWM` (peak RSS) of `pid` in KiB.
pub(crate) fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A deterministic incompressible-looking file of `bytes`.
fn write_source(path: &Path, bytes: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for b in block.chunks_mut(8) {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = x.to_le_bytes();
            let n = b.len();
            b.copy_from_slice(v.get(..n).unwrap_or_default());
        }
        let n = left.min(block.len());
        f.write_all(block.get(..n).unwrap_or_default())?;
        left -= n;
    }
    f.flush()?;
    Ok(())
}

/// Write back every dirty page (`sync(1)`), so that a timed step does not
/// pay for the writeback of an earlier one. Without it the runs were
/// bimodal on a fast disk (`dd conv=fsync` of 256 MiB: 0.18 s or 0.85 s,
/// depending on what the Python bank, which never fsyncs, had left dirty).
fn settle() -> anyhow::Result<()> {
    let st = std::process::Command::new("sync").status()?;
    anyhow::ensure!(st.success(), "sync failed: {st}");
    Ok(())
}

/// Seconds `dd bs=1M count=MB conv=fsync` takes to copy `src` to `dest`.
fn dd_fsync(src: &Path, dest: &Path, mb: usize) -> anyhow::Result<f64> {
    settle()?;
    let t = Instant::now();
    let st = std::process::Command::new("dd")
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", dest.display()))
        .args(["bs=1M", &format!("count={mb}"), "conv=fsync", "status=none"])
        .status()?;
    let s = t.elapsed().as_secs_f64();
    anyhow::ensure!(st.success(), "dd failed: {st}");
    let _ = std::fs::remove_file(dest);
    Ok(s)
}

struct PyRun {
    up_s: f64,
    down_s: f64,
}

async fn python_client(
    script: &Path,
    (ingest, retrieve): (&str, &str),
    xpub: &str,
    src: &Path,
    did: &str,
    out: &Path,
    bytes: usize,
) -> anyhow::Result<PyRun> {
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .args([ingest, retrieve, xpub])
        .arg(src)
        .arg(did)
        .arg(out)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("python client did not finish in 300 s"))??;
    anyhow::ensure!(
        output.status.success(),
        "python client failed: {}",
        output.status
    );
    let line = String::from_utf8_lossy(&output.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim())?;
    let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    anyhow::ensure!(
        f("size") as usize == bytes,
        "python download has {} bytes, expected {bytes}",
        f("size")
    );
    let _ = std::fs::remove_file(out);
    Ok(PyRun {
        up_s: f("up_s"),
        down_s: f("down_s"),
    })
}

/// A Python run's result, or `None` (printed and counted) when it failed.
fn kept(r: anyhow::Result<PyRun>, failed: &mut usize) -> Option<PyRun> {
    match r {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("bench bank: python run failed: {e:#}");
            *failed += 1;
            None
        }
    }
}

async fn wait_bank(client: &Client, bank_id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client
            .list_banks()
            .await?
            .iter()
            .any(|b| b.bank_id == bank_id)
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "bank {bank_id} did not register in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Upload with the Rust uploader; seconds until the bank's ingest_done
/// (sent after the commit, with the announcement).
async fn rust_upload(
    ctx: &zmq::Context,
    ingest: &str,
    src: &Path,
    did: &str,
) -> anyhow::Result<f64> {
    let opts = labmesh_transfer::UploadOptions {
        dataset_id: Some(did.to_string()),
        chunk_size: 1 << 20,
        ..Default::default()
    };
    settle()?;
    let t = Instant::now();
    labmesh_transfer::upload_file(ctx, ingest, src, opts)
        .await
        .map_err(|e| anyhow::anyhow!("Rust upload of {did}: {e}"))?;
    Ok(t.elapsed().as_secs_f64())
}

/// Download into memory with the Rust stream (size and SHA-256 checked by
/// the stream); seconds.
async fn rust_download(
    ctx: &zmq::Context,
    retrieve: &str,
    did: &str,
    credit: u32,
    bytes: usize,
) -> anyhow::Result<f64> {
    let opts = labmesh_transfer::DownloadOptions {
        credit,
        chunk_size: Some(1 << 20),
        ..Default::default()
    };
    settle()?;
    let t = Instant::now();
    let what = |e| anyhow::anyhow!("Rust download of {did} (credit {credit}): {e}");
    let mut s = labmesh_transfer::DownloadStream::open(ctx, retrieve, did, opts)
        .await
        .map_err(what)?;
    let mut got = 0usize;
    // Zero-copy: each chunk stays in the message libzmq received.
    while let Some(c) = s.next_message().await.map_err(what)? {
        got += c.len();
    }
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(got == bytes, "downloaded {got} bytes, expected {bytes}");
    Ok(secs)
}

/// The Python client's own ceiling: a blocking Rust server that keeps
/// nothing (ingest: chunks dropped, the announcement published at eof;
/// retrieve: chunks served from memory). No disk, no hash, no catalogue.
struct Sink {
    ingest: String,
    retrieve: String,
}

fn sink(xsub: &str, data: Vec<u8>) -> anyhow::Result<Sink> {
    let ctx = zmq::Context::new();
    let ing = ctx.socket(zmq::ROUTER)?;
    ing.set_linger(0)?;
    ing.bind("tcp://127.0.0.1:*")?;
    let ret = ctx.socket(zmq::ROUTER)?;
    ret.set_linger(0)?;
    ret.bind("tcp://127.0.0.1:*")?;
    let publ = ctx.socket(zmq::PUB)?;
    publ.set_linger(0)?;
    publ.connect(xsub)?;
    let ep = |s: &zmq::Socket| -> anyhow::Result<String> {
        s.get_last_endpoint()?
            .map_err(|_| anyhow::anyhow!("endpoint not UTF-8"))
    };
    let out = Sink {
        ingest: ep(&ing)?,
        retrieve: ep(&ret)?,
    };
    std::thread::spawn(move || -> anyhow::Result<()> {
        let _keep = ctx;
        loop {
            let mut items = [ing.as_poll_item(zmq::POLLIN), ret.as_poll_item(zmq::POLLIN)];
            zmq::poll(&mut items, -1)?;
            let (a, b) = (items[0].is_readable(), items[1].is_readable());
            if a {
                let f = ing.recv_multipart(0)?;
                let (Some(ident), Some(head)) = (f.first(), f.get(1)) else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_slice(head).unwrap_or_default();
                let did = v.get("dataset_id").cloned().unwrap_or_default();
                match v.get("type").and_then(|t| t.as_str()) {
                    Some("ingest_start") => {
                        let r = serde_json::json!({"type": "ingest_ack", "dataset_id": did});
                        ing.send_multipart([ident.clone(), r.to_string().into_bytes()], 0)?;
                    }
                    Some("ingest_chunk")
                        if v.get("eof") == Some(&serde_json::Value::Bool(true)) =>
                    {
                        let a = serde_json::json!({"dataset_id": did, "bank_id": "sink"});
                        publ.send_multipart(
                            [b"dataset.sink".to_vec(), a.to_string().into_bytes()],
                            0,
                        )?;
                        let r = serde_json::json!({"type": "ingest_done", "dataset_id": did});
                        ing.send_multipart([ident.clone(), r.to_string().into_bytes()], 0)?;
                    }
                    _ => {}
                }
            }
            if b {
                let f = ret.recv_multipart(0)?;
                let (Some(ident), Some(head)) = (f.first(), f.get(1)) else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_slice(head).unwrap_or_default();
                let did = v.get("dataset_id").cloned().unwrap_or_default();
                let m = serde_json::json!({"type": "meta", "dataset_id": did, "size": data.len(), "sha256": "", "meta": {}});
                ret.send_multipart([ident.clone(), m.to_string().into_bytes()], 0)?;
                for (seq, c) in data.chunks(1_000_000).enumerate() {
                    let h = serde_json::json!({"type": "chunk", "dataset_id": did, "seq": seq, "eof": false});
                    ret.send(&ident[..], zmq::SNDMORE)?;
                    ret.send(h.to_string().as_bytes(), zmq::SNDMORE)?;
                    ret.send(c, 0)?;
                }
                let h = serde_json::json!({"type": "chunk", "dataset_id": did, "seq": data.len().div_ceil(1_000_000), "eof": true});
                ret.send_multipart([ident.clone(), h.to_string().into_bytes()], 0)?;
            }
        }
    });
    Ok(out)
}

/// The bench; rows for the summary table.
pub async fn run(ctx: &zmq::Context, mb: usize, runs: usize) -> anyhow::Result<Vec<Row>> {
    let bytes = mb << 20;
    let dir = std::env::temp_dir().join(format!("labmesh-bench-bank-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run_in(ctx, mb, bytes, runs, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(
    ctx: &zmq::Context,
    mb: usize,
    bytes: usize,
    runs: usize,
    dir: &Path,
) -> anyhow::Result<Vec<Row>> {
    let src = dir.join("src.bin");
    write_source(&src, bytes)?;
    let src_sha = hex::encode(Sha256::digest(std::fs::read(&src)?));
    let broker = labmesh_broker::spawn(ctx, labmesh_broker::BrokerOptions::loopback()).await?;
    let client = Client::connect(
        ctx,
        ClientOptions::new(broker.rpc_endpoint(), broker.xpub_endpoint()).without_bus(),
    )
    .await?;

    // The Rust bank, a child process so its RSS is its own.
    let (ri, rr) = (free_port()?, free_port()?);
    let rust_ingest = format!("tcp://127.0.0.1:{ri}");
    let rust_retrieve = format!("tcp://127.0.0.1:{rr}");
    let cfg = dir.join("labmesh.toml");
    std::fs::write(
        &cfg,
        format!(
            "[bank]\ningest_bind = \"{rust_ingest}\"\nretrieve_bind = \"{rust_retrieve}\"\n\
             broker_rpc = \"{}\"\nbroker_xsub = \"{}\"\n",
            broker.rpc_endpoint(),
            broker.xsub_endpoint()
        ),
    )?;
    // LABMESH_BENCH_BANK_EXE: another labmesh binary to run as the Rust bank
    // (a before/after comparison of the bank with the same bench).
    let bank_exe = match std::env::var_os("LABMESH_BENCH_BANK_EXE") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?,
    };
    let mut rust_bank = tokio::process::Command::new(&bank_exe)
        .arg("--config")
        .arg(&cfg)
        .arg("bank")
        .args(["--bank-id", "bench-rs", "--data-dir"])
        .arg(dir.join("rs-data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let rust_pid = rust_bank
        .id()
        .ok_or_else(|| anyhow::anyhow!("rust bank exited at once"))?;
    wait_bank(&client, "bench-rs").await?;

    let python = python_labmesh();
    let mut py_bank = None;
    let (pi, pr) = (free_port()?, free_port()?);
    let py_ingest = format!("tcp://127.0.0.1:{pi}");
    let py_retrieve = format!("tcp://127.0.0.1:{pr}");
    let client_script = dir.join("py_client.py");
    if python.is_ok() {
        let bank_script = dir.join("py_bank.py");
        std::fs::write(&bank_script, PY_BANK)?;
        std::fs::write(&client_script, PY_CLIENT)?;
        py_bank = Some(
            tokio::process::Command::new("python3")
                .arg(&bank_script)
                .args([&py_ingest, &py_retrieve])
                .arg(dir.join("py-data"))
                .args([broker.rpc_endpoint(), broker.xsub_endpoint(), "bench-py"])
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()?,
        );
        wait_bank(&client, "bench-py").await?;
    }

    let sink = sink(broker.xsub_endpoint(), std::fs::read(&src)?)?;
    let (mut dd, mut rs_up, mut rs_down, mut py_up, mut py_down) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut sink_up, mut sink_down) = (vec![], vec![]);
    // Python runs that failed (seen now and then: the announcement of an
    // upload never came within 120 s); counted and printed, not fatal.
    let mut py_failed = 0usize;
    let (mut r_up, mut r_get, mut r_credit) = (vec![], vec![], vec![]);
    // The Python client's downloads land in memory (tmpfs) where there is
    // one: written to this VM's disk they were bimodal (0.19 s or 0.93 s
    // for 256 MiB, whichever bank met the host's writeback), which measured
    // the disk, not the bank serving the bytes.
    let shm = Path::new("/dev/shm");
    let out = if shm.is_dir() {
        shm.join(format!("labmesh-bench-py-out-{}.bin", std::process::id()))
    } else {
        dir.join("py-out.bin")
    };
    let xpub = broker.xpub_endpoint().to_string();
    for i in 0..runs {
        // Alternate so drift on a noisy machine hits every side alike.
        dd.push(dd_fsync(&src, &dir.join("dd.bin"), mb)?);
        if python.is_ok() {
            let r = python_client(
                &client_script,
                (&rust_ingest, &rust_retrieve),
                &xpub,
                &src,
                &format!("py-to-rs-{i}"),
                &out,
                bytes,
            )
            .await;
            if let Some(r) = kept(r, &mut py_failed) {
                rs_up.push(r.up_s);
                rs_down.push(r.down_s);
            }
            let r = python_client(
                &client_script,
                (&py_ingest, &py_retrieve),
                &xpub,
                &src,
                &format!("py-to-py-{i}"),
                &out,
                bytes,
            )
            .await;
            if let Some(r) = kept(r, &mut py_failed) {
                py_up.push(r.up_s);
                py_down.push(r.down_s);
            }
            let r = python_client(
                &client_script,
                (&sink.ingest, &sink.retrieve),
                &xpub,
                &src,
                &format!("py-to-sink-{i}"),
                &out,
                bytes,
            )
            .await;
            if let Some(r) = kept(r, &mut py_failed) {
                sink_up.push(r.up_s);
                sink_down.push(r.down_s);
            }
        }
        let did = format!("rs-{i}");
        r_up.push(rust_upload(ctx, &rust_ingest, &src, &did).await?);
        r_get.push(rust_download(ctx, &rust_retrieve, &did, 0, bytes).await?);
        r_credit.push(rust_download(ctx, &rust_retrieve, &did, 32, bytes).await?);
    }
    let _ = std::fs::remove_file(&out);
    // The Rust bank's copy of a Python upload is the same bytes.
    if python.is_ok() {
        let stored = dir.join("rs-data/objects/py-to-rs-0.bin");
        if let Ok(b) = std::fs::read(&stored) {
            anyhow::ensure!(
                hex::encode(Sha256::digest(&b)) == src_sha,
                "the Rust bank stored different bytes"
            );
        }
    }
    let hwm = vm_hwm_kib(rust_pid).unwrap_or(0);
    let _ = rust_bank.kill().await;
    if let Some(mut p) = py_bank {
        let _ = p.kill().await;
    }
    client.close();
    broker.shutdown().await;

    if py_failed > 0 {
        println!("  {py_failed} Python client run(s) failed and are left out of the medians");
    }
    let rate = |s: &[f64]| mb as f64 * 1.048_576 / median(s);
    let dd_rate = rate(&dd);
    println!("bank, {mb} MiB, {runs} runs each, alternating; MB/s of medians (1 MB = 10^6 bytes)");
    println!("  dd bs=1M conv=fsync (baseline)       {dd_rate:8.0} MB/s   runs {dd:.3?} s");
    let mut rows = Vec::new();
    match &python {
        Ok(()) => {
            let (ru, pu, rd, pd) = (rate(&rs_up), rate(&py_up), rate(&rs_down), rate(&py_down));
            println!("  python upload_dataset -> Rust bank, until announced   {ru:8.0} MB/s   runs {rs_up:.3?} s");
            println!("  python upload_dataset -> Python bank, until announced {pu:8.0} MB/s   runs {py_up:.3?} s");
            println!("  python BankClient.download <- Rust bank               {rd:8.0} MB/s   runs {rs_down:.3?} s");
            println!("  python BankClient.download <- Python bank             {pd:8.0} MB/s   runs {py_down:.3?} s");
            println!(
                "  python client ceiling (Rust server keeping nothing): upload {:.0} MB/s, download {:.0} MB/s   runs {sink_up:.3?} / {sink_down:.3?} s",
                rate(&sink_up),
                rate(&sink_down)
            );
            rows.push(Row::new(
                format!("bank: python upload {mb} MiB to announcement, Rust vs Python bank"),
                format!("{ru:.0} MB/s"),
                format!("{pu:.0} MB/s"),
                ru / pu,
                ">= 1.2x",
            ));
            rows.push(Row::new(
                format!("bank: python upload {mb} MiB to announcement vs dd conv=fsync"),
                format!("{ru:.0} MB/s"),
                format!("{dd_rate:.0} MB/s"),
                ru / dd_rate,
                ">= 0.9x",
            ));
            rows.push(Row::new(
                format!("bank: python BankClient.download {mb} MiB, Rust vs Python bank"),
                format!("{rd:.0} MB/s"),
                format!("{pd:.0} MB/s"),
                rd / pd,
                ">= 1.3x",
            ));
        }
        Err(why) => {
            println!("  python rows skipped: {why}");
            anyhow::ensure!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true and the Python rows cannot run: {why}"
            );
        }
    }
    let (u, g, c) = (rate(&r_up), rate(&r_get), rate(&r_credit));
    println!(
        "  Rust uploader -> Rust bank, until ingest_done       {u:8.0} MB/s   runs {r_up:.3?} s"
    );
    println!(
        "  Rust DownloadStream legacy get (SHA-256 verified)   {g:8.0} MB/s   runs {r_get:.3?} s"
    );
    println!("  Rust DownloadStream credit 32 (SHA-256 verified)    {c:8.0} MB/s   runs {r_credit:.3?} s");
    println!(
        "  Rust bank peak RSS (VmHWM)                          {:8.1} MiB",
        hwm as f64 / 1024.0
    );
    rows.push(Row::new(
        format!("bank: Rust uploader {mb} MiB vs dd conv=fsync"),
        format!("{u:.0} MB/s"),
        format!("{dd_rate:.0} MB/s"),
        u / dd_rate,
        ">= 0.9x",
    ));
    rows.push(Row::new(
        format!("bank: Rust download {mb} MiB (best of get / credit)"),
        format!("{:.0} MB/s", g.max(c)),
        "1000 MB/s".to_string(),
        g.max(c) / 1000.0,
        ">= 1.0x",
    ));
    rows.push(Row::new(
        "bank: peak RSS of the Rust bank process".to_string(),
        format!("{:.1} MiB", hwm as f64 / 1024.0),
        "64 MiB".to_string(),
        hwm as f64 / 1024.0 / 64.0,
        "< 1.0x",
    ));
    Ok(rows)
}
