//! Cascading brokers across network namespaces (issue 13): the lab's relay
//! and bank in namespace `a`, reachable only from the lab broker (`b`, two
//! interfaces, no forwarding); a chain `b` -> `m` -> `t`, the two lower ones
//! gateways; a client in namespace `c`, which reaches `m` and `t` only.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use labmesh_tests::{init_logging, WAIT};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use crate::{netns_unavailable, sh, Netns, BIN};

/// A `labmesh` process in a namespace, its stdout lines on a channel.
struct NsNode {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl NsNode {
    async fn start(ns: &str, cfg: &Path, args: &[&str], ready: &str) -> anyhow::Result<NsNode> {
        let mut argv = vec![
            "netns".to_string(),
            "exec".into(),
            ns.to_string(),
            BIN.into(),
            "--config".into(),
            cfg.to_string_lossy().into_owned(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        let mut child = tokio::process::Command::new("ip")
            .args(&argv)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut rd = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(l)) = rd.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        if !ready.is_empty() {
            let ok = tokio::time::timeout(WAIT, async {
                while let Some(l) = lines.recv().await {
                    eprintln!("[{ns}] {l}");
                    if l.contains(ready) {
                        return true;
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
            anyhow::ensure!(ok, "{argv:?} not ready");
        }
        Ok(NsNode { child, lines })
    }

    async fn next_line(&mut self, within: Duration) -> anyhow::Result<String> {
        tokio::time::timeout(within, self.lines.recv())
            .await
            .context("no line in time")?
            .context("process ended")
    }
}

async fn run_in(ns: &str, cfg: &Path, args: &[&str]) -> anyhow::Result<(i32, String)> {
    let out = tokio::time::timeout(
        WAIT * 2,
        tokio::process::Command::new("ip")
            .args(["netns", "exec", ns, BIN, "--config"])
            .arg(cfg)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        eprintln!("[{ns} {args:?}] {}", err.trim());
    }
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// The endpoint namespace `c` sees for `deep`, once listed (or `None`
/// once not listed, with `want_listed == false`).
async fn wait_listed(ns: &str, cfg: &Path, want_listed: bool) -> anyhow::Result<Value> {
    tokio::time::timeout(WAIT * 2, async {
        loop {
            if let Ok((0, out)) = run_in(ns, cfg, &["ls", "--json"]).await {
                if let Ok(v) = serde_json::from_str::<Value>(out.trim()) {
                    let has = v["relays"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|r| r["relay_id"] == json!("deep")));
                    let bank = v["banks"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|b| b["bank_id"] == json!("lab-bank")));
                    if has == want_listed && bank == want_listed {
                        return v;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .context(if want_listed {
        "deep never listed at the top"
    } else {
        "deep still listed at the top"
    })
}

#[tokio::test]
async fn a_chain_of_three_brokers_across_namespaces_reaches_a_private_lab() -> anyhow::Result<()> {
    init_logging();
    if let Some(why) = netns_unavailable() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true and {why}");
        }
        eprintln!("SKIPPED: {why}");
        return Ok(());
    }
    let tag = format!("{}", std::process::id() % 100_000);
    let [a, b, m, t, c, sw] = ["a", "b", "m", "t", "c", "s"].map(|x| format!("lmc{x}{tag}"));
    let mut guard = Netns { names: Vec::new() };
    for n in [&a, &b, &m, &t, &c, &sw] {
        sh(&["ip", "netns", "add", n])?;
        guard.names.push(n.clone());
        sh(&["ip", "-n", n, "link", "set", "lo", "up"])?;
    }
    // A point-to-point link between two namespaces.
    let link = |x: &str, xa: &str, y: &str, ya: &str, k: &str| -> anyhow::Result<()> {
        let (i, j) = (format!("p{k}x{tag}"), format!("p{k}y{tag}"));
        sh(&["ip", "link", "add", &i, "type", "veth", "peer", "name", &j])?;
        sh(&["ip", "link", "set", &i, "netns", x])?;
        sh(&["ip", "link", "set", &j, "netns", y])?;
        sh(&["ip", "-n", x, "addr", "add", xa, "dev", &i])?;
        sh(&["ip", "-n", y, "addr", "add", ya, "dev", &j])?;
        sh(&["ip", "-n", x, "link", "set", &i, "up"])?;
        sh(&["ip", "-n", y, "link", "set", &j, "up"])?;
        Ok(())
    };
    // Lab network a--b; b--m; and the site's switch joining m, t and c.
    link(&a, "10.78.1.1/24", &b, "10.78.1.2/24", "1")?;
    link(&b, "10.78.2.1/24", &m, "10.78.2.2/24", "2")?;
    sh(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    sh(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
    for (k, (n, addr)) in [
        (&m, "10.78.3.2/24"),
        (&t, "10.78.3.3/24"),
        (&c, "10.78.3.4/24"),
    ]
    .into_iter()
    .enumerate()
    {
        let (i, j) = (format!("q{k}x{tag}"), format!("q{k}y{tag}"));
        sh(&["ip", "link", "add", &i, "type", "veth", "peer", "name", &j])?;
        sh(&["ip", "link", "set", &i, "netns", n])?;
        sh(&["ip", "link", "set", &j, "netns", &sw])?;
        sh(&["ip", "-n", &sw, "link", "set", &j, "master", "br0", "up"])?;
        sh(&["ip", "-n", n, "addr", "add", addr, "dev", &i])?;
        sh(&["ip", "-n", n, "link", "set", &i, "up"])?;
    }
    let dir = std::env::temp_dir().join(format!("labmesh-cascade-netns-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    };
    // a: relay and bank, talking to the lab broker at 10.78.1.2.
    let cfg_a = write(
        "a.toml",
        r#"
[broker]
address = "10.78.1.2"
[relay]
default_address = "10.78.1.1"
state_interval = 0.2
[[relay.instruments]]
id = "deep"
driver = "mock-psu"
rpc_bind = "tcp://*:5850"
streams = [{ name = "v", method = "get_state", hz = 50 }]
[bank]
ingest_bind = "tcp://*:5761"
retrieve_bind = "tcp://*:5762"
default_address = "10.78.1.1"
"#
        .into(),
    )?;
    // A broker joining a parent as a gateway, advertised on `addr`.
    let broker_cfg = |addr: &str, parent: &str, ttl: u32| {
        format!(
            r#"
[broker]
rpc_bind = "tcp://*:5750"
xsub_bind = "tcp://*:5751"
xpub_bind = "tcp://*:5752"
address = "{addr}"
ttl_seconds = {ttl}
parent_rpc = "tcp://{parent}:5750"
parent_xsub = "tcp://{parent}:5751"
parent_xpub = "tcp://{parent}:5752"
advertise = "gateway"
gateway_bind = "tcp://*:*"
"#
        )
    };
    let cfg_b = write("b.toml", broker_cfg("10.78.2.1", "10.78.2.2", 3))?;
    let cfg_m = write("m.toml", broker_cfg("10.78.3.2", "10.78.3.3", 3))?;
    let cfg_t = write(
        "t.toml",
        r#"
[broker]
rpc_bind = "tcp://*:5750"
xsub_bind = "tcp://*:5751"
xpub_bind = "tcp://*:5752"
address = "10.78.3.3"
ttl_seconds = 3
"#
        .into(),
    )?;
    let cfg_c = write(
        "c.toml",
        "[broker]\naddress = \"10.78.3.3\"\n[client]\ntimeout_seconds = 5\n".into(),
    )?;

    let _top = NsNode::start(&t, &cfg_t, &["broker"], "broker:").await?;
    let _mid = NsNode::start(&m, &cfg_m, &["broker"], "broker:").await?;
    let mut lab = NsNode::start(&b, &cfg_b, &["broker"], "broker:").await?;
    let data = dir.join("bank_data").to_string_lossy().into_owned();
    let _relay = NsNode::start(&a, &cfg_a, &["relay"], "relay deep:").await?;
    let _bank = NsNode::start(
        &a,
        &cfg_a,
        &["bank", "--bank-id", "lab-bank", "--data-dir", &data],
        "bank lab-bank:",
    )
    .await?;

    // The lab is private: its relay's port answers in a, not from c.
    let reach = |ns: &str| {
        std::process::Command::new("ip")
            .args(["netns", "exec", ns, "timeout", "2", "bash", "-c"])
            .arg("exec 3<>/dev/tcp/10.78.1.1/5850")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    assert!(reach(&b), "the lab broker reaches the relay");
    assert!(!reach(&c), "namespace c reaches the lab's relay directly");
    assert!(!reach(&m), "namespace m reaches the lab's relay directly");

    let listed = wait_listed(&c, &cfg_c, true).await?;
    let ep = listed["relays"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["relay_id"] == json!("deep")))
        .map(|r| r["rpc_endpoint"].clone());
    // Listed at the middle broker's gateway, on the site's network.
    assert!(
        ep.as_ref()
            .and_then(Value::as_str)
            .is_some_and(|e| e.starts_with("tcp://10.78.3.2:")),
        "{listed}"
    );

    let (code, out) = run_in(&c, &cfg_c, &["call", "deep", "set_voltage", "value=2.5"]).await?;
    assert_eq!(code, 0, "{out}");
    let (code, out) = run_in(&c, &cfg_c, &["watch", "deep", "--count", "3", "--json"]).await?;
    assert_eq!(code, 0, "{out}");
    let last: Value = serde_json::from_str(out.lines().last().unwrap_or_default())?;
    assert_eq!(last["state"]["voltage"], json!(2.5));

    // A dataset uploaded in the lab, downloaded at the top.
    let src = dir.join("data.bin");
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &payload)?;
    let src_s = src.to_string_lossy().into_owned();
    let (code, out) = run_in(
        &a,
        &cfg_a,
        &[
            "upload",
            &src_s,
            "--relay-id",
            "deep",
            "--dataset-id",
            "lab-1",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{out}");
    let dest = dir.join("got.bin");
    let dest_s = dest.to_string_lossy().into_owned();
    let (code, out) = run_in(&c, &cfg_c, &["get", "lab-1", "-o", &dest_s]).await?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read(&dest)?, payload);

    // A stream watched at the top while the lab broker is killed and
    // restarted: each sample at most once, in order.
    let mut watch = NsNode::start(
        &c,
        &cfg_c,
        &[
            "watch", "deep", "--stream", "v", "--json", "--count", "1000000",
        ],
        "",
    )
    .await?;
    let mut seqs: Vec<u64> = Vec::new();
    let take = |l: String, seqs: &mut Vec<u64>| -> anyhow::Result<()> {
        let v: Value = serde_json::from_str(&l).with_context(|| l.clone())?;
        seqs.push(v["seq"].as_u64().context("seq")?);
        Ok(())
    };
    while seqs.len() < 20 {
        let l = watch.next_line(WAIT).await?;
        take(l, &mut seqs)?;
    }
    let t0 = Instant::now();
    lab.child.kill().await?;
    let _ = lab.child.wait().await;
    wait_listed(&c, &cfg_c, false).await?;
    let gone = t0.elapsed();
    // ttl 3 s at the middle broker, plus its mirror's round and the top's.
    assert!(gone < Duration::from_secs(8), "offline after {gone:?}");
    let before = seqs.len();
    while let Ok(l) = watch.next_line(Duration::from_millis(1)).await {
        take(l, &mut seqs)?;
    }
    let _lab = NsNode::start(&b, &cfg_b, &["broker"], "broker:").await?;
    wait_listed(&c, &cfg_c, true).await?;
    let (code, out) = run_in(&c, &cfg_c, &["call", "deep", "set_voltage", "value=1.5"]).await?;
    assert_eq!(code, 0, "{out}");
    let until = Instant::now() + WAIT;
    let resumed_at = seqs.len();
    while seqs.len() < resumed_at + 20 {
        let l = watch
            .next_line(until.saturating_duration_since(Instant::now()))
            .await
            .context("the stream did not resume after the lab broker restarted")?;
        take(l, &mut seqs)?;
    }
    for w in seqs.windows(2) {
        assert!(w[1] > w[0], "each sample once, in order: {w:?}");
    }
    assert!(
        seqs[resumed_at] > seqs[before - 1],
        "samples resumed from the same stream"
    );
    let _ = watch.child.kill().await;
    eprintln!(
        "cascade across namespaces: offline at the top {gone:?} after the lab broker was killed; {} samples in order",
        seqs.len()
    );
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
