//! Issue 17: a CLI that never surprises. Each test pins one finding
//! against real `labmesh` processes (broker, relay, bank) on loopback.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use labmesh_tests::{free_port, init_logging, WAIT};
use labmesh_wire::{AsyncSocket, SocketOptions};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncBufReadExt;

use super::{bank, client, relay, run_cli_within, wait_for_bank, write_cfg, Node, BIN};

const SHORT: Duration = Duration::from_secs(10);

/// Usage errors are clap's: exit 2, the flag named, nothing started.
#[tokio::test]
async fn out_of_range_flags_are_usage_errors_naming_the_flag() -> anyhow::Result<()> {
    let cfg = write_cfg(10.0)?;
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "relay",
                "--relay-id",
                "a",
                "--driver",
                "mock-psu",
                "--state-interval",
                "1e-9",
            ],
            "--state-interval",
        ),
        (
            &[
                "relay",
                "--relay-id",
                "a",
                "--driver",
                "mock-psu",
                "--rpc",
                "tcp://127.0.0.1:99999",
            ],
            "--rpc",
        ),
        (
            &["relay", "--relay-id", "", "--driver", "mock-psu"],
            "--relay-id",
        ),
        (
            &["relay", "--relay-id", "psu 1", "--driver", "mock-psu"],
            "--relay-id",
        ),
        (&["bank", "--bank-id", "a b"], "--bank-id"),
        (&["sim", "psu", "--load-ohms", "0"], "--load-ohms"),
        (&["sim", "psu", "--load-ohms", "nan"], "--load-ohms"),
        (
            &["call", "psu", "lm.ping", "--timeout", "1e20"],
            "--timeout",
        ),
        (&["call", "psu", "lm.ping", "--timeout", "nan"], "--timeout"),
        (&["bench", "rpc", "--n", "0"], "--n"),
        (&["watch", "--count", "0"], "--count"),
        (&["datasets", "--meta", "=x"], "--meta"),
        (&["upload", "f", "--meta", "=x"], "--meta"),
        (&["get", "x", "--timeout", "0"], "--timeout"),
        (&["datasets", "--timeout=-1"], "--timeout"),
        (&["datasets", "--since", "yesterday"], "--since"),
        (&["call", "psu", "m", "--json", "{bad"], "--json"),
        (&["call", "psu", "m", "=2"], "[PARAMS]..."),
        (&["relay", "--relay-id", "a"], "--driver <DRIVER>"),
    ];
    for (args, flag) in cases {
        let out = run_cli_within(Some(&cfg.path), args, SHORT).await?;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        // `'--flag <VALUE>'`, or a fragment given as is.
        let want = if flag.starts_with("--") && !flag.contains(' ') {
            format!("'{flag} <")
        } else {
            flag.to_string()
        };
        assert!(
            out.stderr.contains(&want),
            "{args:?}: names the flag: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
    // `--broker` only where a broker is reached.
    for args in [
        &["drivers", "--broker", "h"][..],
        &["sim", "psu", "--broker", "h"],
        &["demo", "--broker", "h"],
    ] {
        let out = run_cli_within(Some(&cfg.path), args, SHORT).await?;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("'--broker'"),
            "{args:?}: {}",
            out.stderr
        );
    }
    Ok(())
}

/// Before: every client command waited 15 s, then `broker.hello: no reply
/// within 15s`, naming no endpoint. Now: at once, exit 4, the endpoint.
#[tokio::test]
async fn no_broker_fails_fast_naming_the_endpoint() -> anyhow::Result<()> {
    let cfg = write_cfg(10.0)?;
    let port = free_port()?;
    let ep = format!("tcp://127.0.0.1:{port}");
    for args in [
        vec!["ls"],
        vec!["call", "psu", "lm.ping"],
        vec!["watch"],
        vec!["datasets"],
        vec!["get", "x"],
    ] {
        let mut args = args;
        args.extend(["--broker", &ep]);
        let t0 = Instant::now();
        let out = run_cli_within(Some(&cfg.path), &args, SHORT).await?;
        assert_eq!(out.code, 4, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(&ep), "{args:?}: {}", out.stderr);
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{args:?} took {:?}",
            t0.elapsed()
        );
    }
    Ok(())
}

/// `--broker tcp://HOST:PORT` reaches a broker the file does not name.
#[tokio::test]
async fn broker_flag_takes_a_full_endpoint() -> anyhow::Result<()> {
    init_logging();
    let cfg = write_cfg(10.0)?;
    let broker = Node::start(&cfg.path, &["broker"], "broker:").await?;
    let r = relay(&cfg, "full-ep").await?;
    let ctx = zmq::Context::new();
    let c = client(&ctx, &cfg).await?;
    c.wait_for_relay("full-ep", WAIT).await?;
    // A file whose broker is elsewhere; the flag points at the real one.
    let other = cfg.path.with_file_name("elsewhere.toml");
    std::fs::write(
        &other,
        "[broker]\naddress = \"127.0.0.1\"\n[client]\nbroker_rpc = \"tcp://BROKER:1\"\n",
    )?;
    let text = std::fs::read_to_string(&cfg.path)?;
    let rpc_port = text
        .split("rpc_bind = \"tcp://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .context("rpc port")?
        .to_string();
    for b in [
        format!("tcp://127.0.0.1:{rpc_port}"),
        format!("127.0.0.1:{rpc_port}"),
    ] {
        let out = run_cli_within(Some(&other), &["ls", "--json", "--broker", &b], SHORT).await?;
        assert_eq!(out.code, 0, "{b}: {}", out.stderr);
        assert!(out.stdout.contains("full-ep"), "{b}: {}", out.stdout);
    }
    r.kill().await?;
    broker.kill().await?;
    Ok(())
}

/// `watch nosuch` waited forever without a word; `--count 0` printed one
/// message; `--json` dropped `interval` and printed `"seq":null`.
#[tokio::test]
async fn watch_names_an_unlisted_relay_and_json_is_the_message() -> anyhow::Result<()> {
    init_logging();
    let cfg = write_cfg(10.0)?;
    let broker = Node::start(&cfg.path, &["broker"], "broker:").await?;
    let r = relay(&cfg, "w1").await?;
    let ctx = zmq::Context::new();
    let c = client(&ctx, &cfg).await?;
    c.wait_for_relay("w1", WAIT).await?;
    let out = run_cli_within(Some(&cfg.path), &["watch", "nosuch"], SHORT).await?;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("\"nosuch\" is not listed") && out.stderr.contains("--wait"),
        "{}",
        out.stderr
    );
    let out = run_cli_within(
        Some(&cfg.path),
        &["watch", "w1", "--json", "--count", "2"],
        WAIT,
    )
    .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    for m in &lines {
        assert_eq!(m["relay_id"], "w1");
        assert!(m["seq"].is_u64(), "{m}");
        assert_eq!(m["interval"], json!(0.1), "{m}");
        assert!(m["state"].is_object(), "{m}");
        // The body exactly as StateMsg serialises it.
        let back: labmesh_proto::mesh::StateMsg = serde_json::from_value(m.clone())?;
        assert_eq!(serde_json::to_value(&back)?, *m);
    }
    // --wait: keeps waiting for a relay that comes later.
    let mut waiting = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&cfg.path)
        .args(["watch", "late", "--wait", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut err = tokio::io::BufReader::new(waiting.stderr.take().context("stderr")?).lines();
    let said = tokio::time::timeout(SHORT, err.next_line()).await??;
    assert!(
        said.as_deref()
            .is_some_and(|l| l.contains("not listed yet")),
        "{said:?}"
    );
    let late = relay(&cfg, "late").await?;
    let st = tokio::time::timeout(WAIT, waiting.wait()).await??;
    assert!(st.success(), "{st}");
    late.kill().await?;
    r.kill().await?;
    broker.kill().await?;
    Ok(())
}

async fn ask(s: &mut AsyncSocket, v: Value, data: Option<&[u8]>) -> anyhow::Result<Value> {
    let head = serde_json::to_vec(&v)?;
    match data {
        Some(d) => s.send_multipart([head.as_slice(), d]).await?,
        None => s.send_multipart([head]).await?,
    }
    let f = tokio::time::timeout(WAIT, s.recv_multipart()).await??;
    Ok(serde_json::from_slice(f.first().context("empty reply")?)?)
}

async fn ingest_raw(ingest: &str, id: &str, body: &[u8], sha: &str) -> anyhow::Result<Value> {
    let ctx = zmq::Context::new();
    let mut s = AsyncSocket::new(&ctx, zmq::DEALER, SocketOptions::default())?;
    s.connect(ingest)?;
    let start = json!({"type":"ingest_start","dataset_id":id,"relay_id":"r","meta":{},"token":format!("t-{id}")});
    let a = ask(&mut s, start, None).await?;
    anyhow::ensure!(a["type"] == "ingest_ack", "{a}");
    let chunk = json!({"type":"ingest_chunk","dataset_id":id,"seq":0,"eof":false});
    let a = ask(&mut s, chunk, Some(body)).await?;
    anyhow::ensure!(a["type"] == "ingest_ack_chunk", "{a}");
    let eof = json!({"type":"ingest_chunk","dataset_id":id,"seq":1,"eof":true,"size":body.len(),"sha256":sha});
    ask(&mut s, eof, None).await
}

/// A bank: uppercase SHA-256 accepted (was 422); `get` refuses to
/// overwrite without `--force`; `datasets` shows local time; a bank that
/// stops answering makes `datasets` and `get` fail within their
/// `--timeout`, exit 4, naming the bank; logs carry no colour codes or
/// Debug structs.
#[tokio::test]
async fn bank_findings_sha_case_force_local_time_and_a_dead_bank() -> anyhow::Result<()> {
    init_logging();
    let cfg = write_cfg(30.0)?;
    let broker = Node::start(&cfg.path, &["broker"], "broker:").await?;
    let data = cfg.path.with_file_name("bank_data");
    let mut bank = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&cfg.path)
        .args(["bank", "--bank-id", "bank-0", "--data-dir"])
        .arg(&data)
        .args([
            "--ingest-bind",
            "tcp://127.0.0.1:*",
            "--retrieve-bind",
            "tcp://127.0.0.1:*",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut out = tokio::io::BufReader::new(bank.stdout.take().context("stdout")?).lines();
    let mut err = tokio::io::BufReader::new(bank.stderr.take().context("stderr")?).lines();
    let banner = tokio::time::timeout(WAIT, out.next_line())
        .await??
        .context("bank printed nothing")?;
    let started = tokio::time::timeout(WAIT, async {
        while let Ok(Some(l)) = err.next_line().await {
            if l.contains("bank started") {
                return Some(l);
            }
        }
        None
    })
    .await?
    .context("no `bank started` log line")?;
    assert!(
        !started.contains('\u{1b}'),
        "colour codes in a pipe: {started:?}"
    );
    assert!(
        !started.contains("Recovery {") && started.contains("orphan_objects=0"),
        "{started}"
    );
    let ingest = banner
        .split_whitespace()
        .skip_while(|w| *w != "ingest")
        .nth(1)
        .context("ingest endpoint")?
        .to_string();
    let ctx = zmq::Context::new();
    let c = client(&ctx, &cfg).await?;
    wait_for_bank(&c, "bank-0", WAIT).await?;

    let body = vec![7u8; 10_000];
    let upper = hex::encode(Sha256::digest(&body)).to_ascii_uppercase();
    let done = ingest_raw(&ingest, "upper-sha", &body, &upper).await?;
    assert_eq!(done["type"], "ingest_done", "uppercase sha256: {done}");

    let p = Some(cfg.path.as_path());
    let dest = cfg.path.with_file_name("out.bin");
    std::fs::write(&dest, b"keep me")?;
    let d = dest.to_string_lossy().into_owned();
    let o = run_cli_within(p, &["get", "upper-sha", "-o", &d], SHORT).await?;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("--force"), "{}", o.stderr);
    assert_eq!(std::fs::read(&dest)?, b"keep me");
    let o = run_cli_within(p, &["get", "upper-sha", "-o", &d, "--force"], SHORT).await?;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(std::fs::read(&dest)?, body);

    let o = run_cli_within(p, &["datasets"], SHORT).await?;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let row = o
        .stdout
        .lines()
        .find(|l| l.starts_with("upper-sha"))
        .context("no row")?;
    let today = chrono_like_date(row).context(format!("no local date in {row:?}"))?;
    assert!(today.len() == 19, "{row}");
    let o = run_cli_within(p, &["datasets", "--json"], SHORT).await?;
    let v: Value = serde_json::from_str(o.stdout.trim())?;
    assert!(v[0]["created"].is_f64(), "{v}");

    // Freeze the bank: listed (TTL 30 s), silent.
    let pid = bank.id().context("pid")?.to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()?;
    let t0 = Instant::now();
    let o = run_cli_within(p, &["datasets", "--timeout", "1"], SHORT).await?;
    assert_eq!(o.code, 4, "{}", o.stderr);
    assert!(
        o.stderr.contains("bank bank-0") && o.stderr.contains("no answer"),
        "{}",
        o.stderr
    );
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    let t0 = Instant::now();
    let o = run_cli_within(
        p,
        &["get", "upper-sha", "-o", &d, "--force", "--timeout", "1"],
        SHORT,
    )
    .await?;
    assert_eq!(o.code, 4, "{}", o.stderr);
    assert!(o.stderr.contains("bank bank-0"), "{}", o.stderr);
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()?;
    bank.start_kill()?;
    broker.kill().await?;
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` in a row, if any.
fn chrono_like_date(row: &str) -> Option<String> {
    let b = row.as_bytes();
    (0..b.len().saturating_sub(18)).find_map(|i| {
        let s = row.get(i..i + 19)?;
        let ok = s.bytes().enumerate().all(|(j, c)| match j {
            4 | 7 => c == b'-',
            10 => c == b' ',
            13 | 16 => c == b':',
            _ => c.is_ascii_digit(),
        });
        ok.then(|| s.to_string())
    })
}

/// A second bank with a live bank's id is refused (409) and the first
/// stays listed, as for relays.
#[tokio::test]
async fn duplicate_bank_id_is_refused_like_a_duplicate_relay_id() -> anyhow::Result<()> {
    init_logging();
    let cfg = write_cfg(30.0)?;
    let broker = Node::start(&cfg.path, &["broker"], "broker:").await?;
    let first = bank(&cfg).await?;
    let ctx = zmq::Context::new();
    let c = client(&ctx, &cfg).await?;
    wait_for_bank(&c, "bank-0", WAIT).await?;
    let before = c.list_banks().await?;
    let data2 = cfg.path.with_file_name("bank2");
    let mut second = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&cfg.path)
        .args(["bank", "--bank-id", "bank-0", "--data-dir"])
        .arg(&data2)
        .args([
            "--ingest-bind",
            "tcp://127.0.0.1:*",
            "--retrieve-bind",
            "tcp://127.0.0.1:*",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut err = tokio::io::BufReader::new(second.stderr.take().context("stderr")?).lines();
    let refused = tokio::time::timeout(WAIT, async {
        while let Ok(Some(l)) = err.next_line().await {
            if l.contains("refused") {
                return Some(l);
            }
        }
        None
    })
    .await?
    .context("no refusal logged")?;
    assert!(
        refused.contains("409") && refused.contains("already registered"),
        "{refused}"
    );
    assert_eq!(c.list_banks().await?, before, "the first bank stays listed");
    second.start_kill()?;
    first.kill().await?;
    broker.kill().await?;
    Ok(())
}

/// `cannot bind …: Address already in use: Address already in use`: a
/// source printed twice. Now once; exit 1 (local).
#[tokio::test]
async fn errors_print_their_source_once() -> anyhow::Result<()> {
    let cfg = write_cfg(10.0)?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let ep = format!("tcp://{}", taken.local_addr()?);
    let out = run_cli_within(
        Some(&cfg.path),
        &[
            "relay",
            "--relay-id",
            "a",
            "--driver",
            "mock-psu",
            "--rpc",
            &ep,
        ],
        SHORT,
    )
    .await?;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("labmesh: "), "{last}");
    assert_eq!(
        last.to_ascii_lowercase()
            .matches("address already in use")
            .count(),
        1,
        "{last}"
    );
    assert!(last.contains("--rpc 'tcp://*:*'"), "a hint: {last}");
    // A missing driver directory: the io error once.
    let missing = cfg.path.with_file_name("drv.toml");
    std::fs::write(
        &missing,
        "[relay]\ndriver_dirs = [\"/nonexistent-labmesh-dir\"]\n",
    )?;
    let out = run_cli_within(Some(&missing), &["drivers"], SHORT).await?;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.matches("os error 2").count() <= 1,
        "{}",
        out.stderr
    );
    // Warnings in a pipe have no colour codes.
    let odd = cfg.path.with_file_name("odd.toml");
    std::fs::write(&odd, "[relay]\nstate_intervall = 2\n")?;
    let out = run_cli_within(Some(&odd), &["drivers"], SHORT).await?;
    assert!(out.stderr.contains("unknown key"), "{}", out.stderr);
    assert!(!out.stderr.contains('\u{1b}'), "{:?}", out.stderr);
    Ok(())
}

/// A command that reads no configuration file says that an explicit
/// `--config` has no effect (it does not silently ignore it); one that reads
/// it still refuses a missing file.
#[tokio::test]
async fn config_flag_on_a_command_that_reads_none_is_named() -> anyhow::Result<()> {
    let missing = "/nonexistent/labmesh.toml";
    let out = tokio::time::timeout(
        SHORT,
        tokio::process::Command::new(BIN)
            .args(["--config", missing, "scan"])
            .output(),
    )
    .await
    .context("scan within 10 s")??;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scan: {:?} {err}", out.status);
    assert!(
        err.contains("--config has no effect on `labmesh scan`"),
        "stderr: {err}"
    );
    // After the subcommand too (it is a global flag).
    let out = tokio::time::timeout(
        SHORT,
        tokio::process::Command::new(BIN)
            .args(["scan", "--config", missing])
            .output(),
    )
    .await
    .context("scan within 10 s")??;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no effect"), "stderr: {err}");
    // Without the flag: no warning.
    let out = tokio::time::timeout(
        SHORT,
        tokio::process::Command::new(BIN).arg("scan").output(),
    )
    .await
    .context("scan within 10 s")??;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("has no effect"), "stderr: {err}");
    // A command that reads the file: a missing one is a local error (1).
    let out = tokio::time::timeout(
        SHORT,
        tokio::process::Command::new(BIN)
            .args(["--config", missing, "drivers"])
            .output(),
    )
    .await
    .context("drivers within 10 s")??;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    Ok(())
}
