//! Issue 17: `labmesh relay` reloads `[[relay.instruments]]` on SIGHUP:
//! adds, removes and restarts instruments while an untouched one keeps
//! answering.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use labmesh_client::Client;
use labmesh_tests::{init_logging, WAIT};
use serde_json::json;

use super::{client, write_cfg, Node};

fn instruments(list: &[(&str, f64)]) -> String {
    list.iter()
        .map(|(id, poll)| {
            format!(
                "\n[[relay.instruments]]\nid = \"{id}\"\ndriver = \"mock-psu\"\nrpc_bind = \"tcp://127.0.0.1:*\"\npoll_interval = {poll}\n"
            )
        })
        .collect()
}

/// Wait (bounded) until the broker lists exactly `want` (sorted).
async fn listed_exactly(c: &Client, want: &[&str]) -> anyhow::Result<()> {
    tokio::time::timeout(WAIT, async {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if let Ok(r) = c.list_relays().await {
                let mut ids: Vec<&str> = r.iter().map(|x| x.relay_id.as_str()).collect();
                ids.sort();
                if ids == want {
                    return;
                }
            }
        }
    })
    .await
    .with_context(|| format!("the broker did not come to list {want:?}"))
}

fn hup(node: &Node) -> anyhow::Result<()> {
    let st = std::process::Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()?;
    anyhow::ensure!(st.success(), "kill -HUP failed");
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_instruments_while_an_untouched_one_keeps_answering() -> anyhow::Result<()> {
    init_logging();
    let cfg = write_cfg(30.0)?;
    let base = std::fs::read_to_string(&cfg.path)?;
    std::fs::write(
        &cfg.path,
        format!("{base}{}", instruments(&[("keep", 0.1), ("gone", 0.1)])),
    )?;
    let broker = Node::start(&cfg.path, &["broker"], "broker:").await?;
    let relay = Node::start(&cfg.path, &["relay"], "relay ").await?;
    let ctx = zmq::Context::new();
    let c = client(&ctx, &cfg).await?;
    listed_exactly(&c, &["gone", "keep"]).await?;
    let keep_ep = c.relay("keep").await?.endpoint().to_string();
    c.call("keep", "set_voltage", json!({"value": 4.5})).await?;

    // `keep` is called all through the reloads; no call may fail.
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let caller = {
        let (c, ok, failed) = (c.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    r = c.call("keep", "get_state", json!({})) => match r {
                        Ok(v) if v["voltage"] == json!(4.5) => { ok.fetch_add(1, Ordering::Relaxed); }
                        _ => { failed.fetch_add(1, Ordering::Relaxed); }
                    },
                }
            }
        })
    };

    // 1. Remove `gone`, add `new`.
    std::fs::write(
        &cfg.path,
        format!("{base}{}", instruments(&[("keep", 0.1), ("new", 0.1)])),
    )?;
    hup(&relay)?;
    listed_exactly(&c, &["keep", "new"]).await?;
    assert_eq!(
        c.call("new", "lm.ping", json!({})).await?["relay_id"],
        "new"
    );

    // 2. Reconfigure `new` (its poll interval): restarted, its states say so.
    std::fs::write(
        &cfg.path,
        format!("{base}{}", instruments(&[("keep", 0.1), ("new", 0.25)])),
    )?;
    hup(&relay)?;
    let s = c
        .wait_state("new", WAIT, |s| s.interval == Some(0.25))
        .await
        .context("`new` never published with its new interval")?;
    assert_eq!(s.interval, Some(0.25));

    // 3. A broken file changes nothing.
    std::fs::write(
        &cfg.path,
        format!("{base}\n[[relay.instruments]]\nid = \"\"\n"),
    )?;
    hup(&relay)?;
    // The relay still answers for both, on the same endpoint for `keep`.
    assert_eq!(
        c.call("new", "lm.ping", json!({})).await?["relay_id"],
        "new"
    );

    let _ = stop_tx.send(true);
    caller.await?;
    assert_eq!(failed.load(Ordering::Relaxed), 0, "calls to `keep` failed");
    assert!(ok.load(Ordering::Relaxed) > 0);
    // `keep` was never restarted: same endpoint, its voltage kept.
    c.wait_state("keep", WAIT, |_| true).await?;
    let listed = c.list_relays().await?;
    let keep = listed
        .iter()
        .find(|r| r.relay_id == "keep")
        .context("keep not listed")?;
    assert_eq!(keep.rpc_endpoint, keep_ep);
    assert_eq!(
        c.call("keep", "get_state", json!({})).await?["voltage"],
        json!(4.5)
    );
    let status = relay.terminate().await?;
    assert!(status.success(), "relay exit status {status}");
    broker.kill().await?;
    Ok(())
}
