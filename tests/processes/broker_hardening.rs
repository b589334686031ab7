//! Issue 10 (broker): ids that could be taken over, liveness probes that
//! proved nothing, and a bus and directory without byte bounds. Every test
//! runs the real `labmesh` binary; attackers and fake peers are raw sockets.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use labmesh_proto::mesh::{decode_request, encode, HelloAck, Reply, Request, Role};
use labmesh_wire::{AsyncSocket, SocketOptions};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use super::{client, relay, write_cfg, Node, BIN};
use labmesh_tests::WAIT;

/// A DEALER to `ep` that sends one frame and waits (bounded) for one.
async fn ask(ctx: &zmq::Context, ep: &str, msg: Value) -> anyhow::Result<Value> {
    let mut s = AsyncSocket::new(
        ctx,
        zmq::DEALER,
        SocketOptions {
            linger_ms: 0,
            ..SocketOptions::default()
        },
    )?;
    s.connect(ep)?;
    s.send_multipart([serde_json::to_vec(&msg)?]).await?;
    let f = tokio::time::timeout(WAIT, s.recv_multipart())
        .await
        .context("no answer")??;
    Ok(serde_json::from_slice(&f[0])?)
}

/// Send one frame, expect no answer.
async fn tell(ctx: &zmq::Context, ep: &str, msg: Value) -> anyhow::Result<()> {
    let mut s = AsyncSocket::new(
        ctx,
        zmq::DEALER,
        SocketOptions {
            linger_ms: 1000,
            ..SocketOptions::default()
        },
    )?;
    s.connect(ep)?;
    s.send_multipart([serde_json::to_vec(&msg)?]).await?;
    // A ping behind it on the same socket: answered once the broker has
    // handled the first message (one socket, in order).
    s.send_multipart([serde_json::to_vec(
        &json!({"type":"rpc","rpc_uuid":"after","method":"ping","params":{}}),
    )?])
    .await?;
    tokio::time::timeout(WAIT, s.recv_multipart())
        .await
        .context("no ping answer")??;
    Ok(())
}

async fn rpc(ctx: &zmq::Context, ep: &str, method: &str, params: Value) -> anyhow::Result<Value> {
    ask(
        ctx,
        ep,
        json!({"type":"rpc","rpc_uuid":"t","method":method,"params":params}),
    )
    .await
}

async fn broker(cfg: &super::Cfg, env: &[(&str, &str)]) -> anyhow::Result<Node> {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("--config")
        .arg(&cfg.path)
        .arg("broker")
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut rd = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(l)) = rd.next_line().await {
            eprintln!("[broker] {l}");
            let _ = tx.send(l);
        }
    });
    let ready_line = tokio::time::timeout(WAIT, async {
        while let Some(l) = lines.recv().await {
            if l.contains("broker:") {
                return Ok(l);
            }
        }
        anyhow::bail!("broker exited")
    })
    .await
    .context("broker not ready")??;
    Ok(Node {
        child,
        lines,
        ready_line,
    })
}

/// The relay list as the broker answers it.
async fn relays(ctx: &zmq::Context, ep: &str) -> anyhow::Result<Vec<Value>> {
    let v = rpc(ctx, ep, "list_relay_ids", json!({})).await?;
    Ok(v["result"].as_array().cloned().unwrap_or_default())
}

/// Regression (issue 10, item 3): a forged `bye` for a live relay's id, then
/// a `hello` for it pointing elsewhere, took the id over.
#[tokio::test]
async fn forged_bye_and_hello_hijacked_a_live_relay() -> anyhow::Result<()> {
    let cfg = write_cfg(3.0)?;
    let _b = broker(&cfg, &[]).await?;
    let _r = relay(&cfg, "Inst-0").await?;
    let ctx = zmq::Context::new();
    let c = client(&ctx, &cfg).await?;
    let real = c.wait_for_relay("Inst-0", WAIT).await?.rpc_endpoint;
    tell(
        &ctx,
        &cfg.rpc,
        json!({"type":"bye","role":"relay","relay_id":"Inst-0"}),
    )
    .await?;
    let mut evil = AsyncSocket::new(&ctx, zmq::ROUTER, SocketOptions::default())?;
    let evil_ep = evil.bind("tcp://127.0.0.1:*")?;
    let ack = ask(
        &ctx,
        &cfg.rpc,
        json!({"type":"hello","role":"relay","relay_id":"Inst-0","rpc_endpoint":evil_ep}),
    )
    .await?;
    assert_eq!(ack["error"]["code"], json!(409), "{ack}");
    let listed = relays(&ctx, &cfg.rpc).await?;
    assert_eq!(listed, [json!({"relay_id":"Inst-0","rpc_endpoint":real})]);
    // A forged heartbeat (no token, another endpoint) is not `known`.
    let hb = ask(&ctx, &cfg.rpc, json!({"type":"heartbeat","role":"relay","relay_id":"Inst-0","rpc_endpoint":evil_ep,"rpc_uuid":"h","token":"guess"})).await?;
    assert_eq!(
        hb,
        json!({"type":"heartbeat_ack","rpc_uuid":"h","known":false})
    );
    // The real relay still answers through the directory.
    assert_eq!(
        c.call("Inst-0", "get_state", json!({})).await?["relay_id"],
        json!("Inst-0")
    );
    Ok(())
}

/// Regression (issue 10, item 4): one `hello` with an existing `bank_id`
/// replaced the live bank, so uploads went to the impostor.
#[tokio::test]
async fn hello_with_a_live_bank_id_replaced_the_bank() -> anyhow::Result<()> {
    let cfg = write_cfg(3.0)?;
    let _b = broker(&cfg, &[]).await?;
    let data = cfg.path.with_file_name("bank-data");
    let _bank = Node::start(
        &cfg.path,
        &[
            "bank",
            "--bank-id",
            "bank-0",
            "--data-dir",
            data.to_str().context("path")?,
            "--ingest-bind",
            "tcp://127.0.0.1:*",
            "--retrieve-bind",
            "tcp://127.0.0.1:*",
        ],
        "bank bank-0:",
    )
    .await?;
    let ctx = zmq::Context::new();
    let deadline = Instant::now() + WAIT;
    let real = loop {
        let v = rpc(&ctx, &cfg.rpc, "list_banks", json!({})).await?;
        if let Some(b) = v["result"].as_array().and_then(|a| a.first().cloned()) {
            break b;
        }
        anyhow::ensure!(Instant::now() < deadline, "bank never listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ack = ask(&ctx, &cfg.rpc, json!({"type":"hello","role":"bank","bank_id":"bank-0","ingest":"tcp://127.0.0.1:1","retrieve":"tcp://127.0.0.1:2"})).await?;
    assert_eq!(ack["error"]["code"], json!(409), "{ack}");
    let v = rpc(&ctx, &cfg.rpc, "list_banks", json!({})).await?;
    assert_eq!(v["result"], json!([real]));
    Ok(())
}

/// Regression (issue 10, item 5): a "relay" registered at the broker's own
/// directory endpoint never expired: the broker probed itself and took its
/// own error reply for a sign of life.
#[tokio::test]
async fn relay_at_the_brokers_own_endpoint_never_expired() -> anyhow::Result<()> {
    let cfg = write_cfg(1.0)?;
    let _b = broker(&cfg, &[]).await?;
    let ctx = zmq::Context::new();
    let ack = ask(
        &ctx,
        &cfg.rpc,
        json!({"type":"hello","role":"relay","relay_id":"mirror","rpc_endpoint":cfg.rpc}),
    )
    .await?;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    let t0 = Instant::now();
    while relays(&ctx, &cfg.rpc)
        .await?
        .iter()
        .any(|r| r["relay_id"] == "mirror")
    {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(6),
            "still listed after {:?} (ttl 1 s)",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Regression (issue 10, item 5b): with a network password, the broker's
/// `lm.ping` probes carried none, so every relay that checks it answered
/// 401. A raw relay here checks it and records the probes.
#[tokio::test]
async fn liveness_probes_carried_no_password() -> anyhow::Result<()> {
    let cfg = write_cfg(1.0)?;
    let _b = broker(&cfg, &[("LMH_NETWORK_PASSWORD", "s3cret")]).await?;
    let ctx = zmq::Context::new();
    let mut quiet = AsyncSocket::new(&ctx, zmq::ROUTER, SocketOptions::default())?;
    let ep = quiet.bind("tcp://127.0.0.1:*")?;
    let ack = ask(&ctx, &cfg.rpc, json!({"type":"hello","role":"relay","relay_id":"quiet","rpc_endpoint":ep,"password":"s3cret"})).await?;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    // Answer probes for three TTLs, as a relay that checks the password.
    let mut probes = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(f) = tokio::time::timeout_at(end, quiet.recv_multipart()).await {
        let f = f?;
        let Ok(Request::Rpc(r)) = decode_request(&f[1]) else {
            continue;
        };
        let ok = r.password == Some(json!("s3cret"));
        probes.push((r.method.clone(), ok));
        let reply = if ok {
            Reply::RpcResult {
                rpc_uuid: r.rpc_uuid,
                result: json!({"ok": true, "relay_id": "quiet"}),
            }
        } else {
            Reply::RpcError {
                rpc_uuid: r.rpc_uuid,
                error: labmesh_proto::ErrorBody::new(401, "invalid password"),
            }
        };
        quiet.send_multipart([f[0].clone(), encode(&reply)]).await?;
    }
    assert!(!probes.is_empty(), "never probed");
    assert!(
        probes.iter().all(|(m, ok)| m == "lm.ping" && *ok),
        "{probes:?}"
    );
    let listed = {
        let mut s = AsyncSocket::new(&ctx, zmq::DEALER, SocketOptions::default())?;
        s.connect(&cfg.rpc)?;
        s.send_multipart([serde_json::to_vec(&json!({"type":"rpc","rpc_uuid":"l","method":"list_relay_ids","params":{},"password":"s3cret"}))?]).await?;
        let f = tokio::time::timeout(WAIT, s.recv_multipart()).await??;
        serde_json::from_slice::<Value>(&f[0])?
    };
    assert_eq!(
        listed["result"],
        json!([{"relay_id":"quiet","rpc_endpoint":ep}]),
        "alive through three TTLs of probes"
    );
    Ok(())
}

/// Regression (issue 10, item 6): after one heartbeat went unanswered (a
/// broker outage) and a ping then got through, a relay decided the broker
/// was labmesh v0 and stopped asking for acks; expired later, it never
/// registered again. The broker here is a raw socket playing that story
/// against the real `labmesh relay`.
#[tokio::test]
async fn relay_that_saw_one_unanswered_heartbeat_never_registered_again() -> anyhow::Result<()> {
    let ctx = zmq::Context::new();
    let mut fake = AsyncSocket::new(&ctx, zmq::ROUTER, SocketOptions::default())?;
    let ep = fake.bind("tcp://127.0.0.1:*")?;
    let dir = std::env::temp_dir().join(format!("labmesh-v0-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("relay.toml");
    std::fs::write(&path, format!("[relay]\nbroker_rpc = \"{ep}\"\nbroker_xsub = \"tcp://127.0.0.1:1\"\nheartbeat_seconds = 0.2\ndefault_rpc_bind = \"tcp://127.0.0.1:*\"\n"))?;
    let _r = Node::start(
        &path,
        &["relay", "--relay-id", "r1", "--driver", "mock-psu"],
        "relay r1:",
    )
    .await?;
    let mut hellos = 0;
    let mut acked = 0;
    let mut dropped = false;
    let mut expired = false;
    let end = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let f = match tokio::time::timeout_at(end, fake.recv_multipart()).await {
            Ok(f) => f?,
            Err(_) => anyhow::bail!("the relay never registered again ({hellos} hellos, acked {acked}, dropped {dropped}, expired {expired})"),
        };
        let reply = match decode_request(&f[1]) {
            Ok(Request::Hello(_)) => {
                hellos += 1;
                if expired {
                    break;
                }
                Some(Reply::Hello(HelloAck {
                    token: Some("t".into()),
                    ..HelloAck::ok(Role::Relay)
                }))
            }
            Ok(Request::Heartbeat(hb)) => match hb.rpc_uuid {
                // Two acknowledged beats, one lost in an outage, then "you
                // are expired" to every beat that asks.
                Some(id) if acked < 2 => {
                    acked += 1;
                    Some(Reply::HeartbeatAck {
                        rpc_uuid: Value::String(id),
                        known: true,
                    })
                }
                Some(_) if !dropped => {
                    dropped = true;
                    None
                }
                Some(id) => {
                    expired = true;
                    Some(Reply::HeartbeatAck {
                        rpc_uuid: Value::String(id),
                        known: false,
                    })
                }
                None => None,
            },
            Ok(Request::Rpc(r)) => Some(Reply::RpcResult {
                rpc_uuid: r.rpc_uuid,
                result: json!({"ok": true}),
            }),
            _ => None,
        };
        if let Some(reply) = reply {
            fake.send_multipart([f[0].clone(), encode(&reply)]).await?;
        }
        if dropped && !expired && hellos >= 2 {
            // Registered again right after the outage: fine too.
            break;
        }
    }
    Ok(())
}

/// The broker's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Regression (issue 10, item 7): the bus bound counted messages, not
/// bytes: one subscriber that never reads plus 600 published 1 MB messages
/// grew the broker by 430 MiB.
#[tokio::test]
async fn a_subscriber_that_never_reads_grew_the_broker_by_the_bus_traffic() -> anyhow::Result<()> {
    let cfg = write_cfg(3.0)?;
    let b = broker(&cfg, &[]).await?;
    let pid = b.child.id().unwrap_or(0);
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB)?;
    // Linger 0 on every socket here: the publisher ends with hundreds of
    // MB the broker never takes, and the default (wait forever) made the
    // context's drop at the end of the test hang.
    sub.set_linger(0)?;
    sub.set_rcvhwm(1)?;
    sub.set_rcvbuf(4096)?;
    sub.set_subscribe(b"")?;
    sub.connect(&cfg.xpub)?;
    let text = std::fs::read_to_string(&cfg.path)?;
    let xsub_ep = text
        .lines()
        .find_map(|l| l.strip_prefix("xsub_bind = \""))
        .and_then(|l| l.strip_suffix('"'))
        .context("xsub_bind")?
        .to_string();
    let publ = ctx.socket(zmq::PUB)?;
    publ.set_linger(0)?;
    publ.set_sndhwm(100_000)?;
    publ.connect(&xsub_ep)?;
    // Wait until the subscription has reached the publisher side.
    let probe = ctx.socket(zmq::SUB)?;
    probe.set_linger(0)?;
    probe.set_subscribe(b"ready")?;
    probe.connect(&cfg.xpub)?;
    let t0 = Instant::now();
    loop {
        publ.send_multipart([&b"ready"[..], b"{}"], 0)?;
        if probe.poll(zmq::POLLIN, 50)? > 0 {
            break;
        }
        anyhow::ensure!(t0.elapsed() < WAIT, "bus never carried a message");
    }
    let before = rss_kib(pid);
    let big = vec![b'x'; 1_000_000];
    let small = vec![b'y'; 60_000];
    for _ in 0..600 {
        publ.send_multipart([&b"state.big"[..], &big], 0)?;
    }
    for _ in 0..2000 {
        publ.send_multipart([&b"state.small"[..], &small], 0)?;
    }
    // Let the broker take in everything the publisher queued.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = rss_kib(pid);
    println!("broker RSS {before} kB -> {peak} kB after 600 x 1 MB + 2000 x 60 kB to a reader that never reads");
    assert!(
        peak < before + 100 * 1024,
        "broker grew {} MiB",
        (peak - before) / 1024
    );
    Ok(())
}

/// Regression (issue 10, item 9): relay ids had no length limit: 80 hellos
/// with 900 KB ids made the relay list 72 MB and every `ls` failed.
#[tokio::test]
async fn huge_relay_ids_made_the_directory_unusable() -> anyhow::Result<()> {
    let cfg = write_cfg(30.0)?;
    let b = broker(&cfg, &[]).await?;
    let pid = b.child.id().unwrap_or(0);
    let ctx = zmq::Context::new();
    let before = rss_kib(pid);
    for i in 0..80 {
        let id = format!("{i}{}", "x".repeat(900_000));
        let ack = ask(
            &ctx,
            &cfg.rpc,
            json!({"type":"hello","role":"relay","relay_id":id,"rpc_endpoint":"tcp://127.0.0.1:9"}),
        )
        .await?;
        assert_eq!(ack["error"]["code"], json!(400), "hello {i}");
    }
    for bad in ["", "a b", "../x", "ü"] {
        let ack = ask(&ctx, &cfg.rpc, json!({"type":"hello","role":"relay","relay_id":bad,"rpc_endpoint":"tcp://127.0.0.1:9"})).await?;
        assert_eq!(ack["error"]["code"], json!(400), "{bad:?}: {ack}");
    }
    let ack = ask(&ctx, &cfg.rpc, json!({"type":"hello","role":"relay","relay_id":"ok-1","rpc_endpoint":format!("tcp://{}", "h".repeat(300))})).await?;
    assert_eq!(ack["error"]["code"], json!(400), "{ack}");
    assert!(relays(&ctx, &cfg.rpc).await?.is_empty());
    let (code, out) = super::run_cli(Some(&cfg.path), &["ls"]).await?;
    assert_eq!(code, 0, "{out}");
    let after = rss_kib(pid);
    println!("broker RSS {before} kB -> {after} kB after 80 hellos with 900 KB ids");
    assert!(after < before + 32 * 1024);
    Ok(())
}
