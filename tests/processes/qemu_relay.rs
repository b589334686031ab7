//! Issue 17: the aarch64 relay (cross-built by `scripts/cross-build.sh`)
//! runs under qemu-user against the native simulated PSU and the native
//! broker: it registers and answers a call.
//!
//! The same test runs the armv7 binary with `LABMESH_QEMU=qemu-arm` and
//! `LABMESH_QEMU_LD_PREFIX=/usr/arm-linux-gnueabihf` (docs/PERFORMANCE.md).
//!
//! The binary comes from `LABMESH_AARCH64_BIN` (`.ci/run` builds it and
//! sets it). Without it the test is skipped with a printed reason locally
//! and fails with `CI=true`.

use std::time::Duration;

use labmesh_tests::{free_port, init_logging};
use serde_json::json;

use super::{client, write_cfg, Node};

#[tokio::test]
async fn aarch64_relay_under_qemu_registers_and_answers_a_call() -> anyhow::Result<()> {
    init_logging();
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let Some(bin) = std::env::var_os("LABMESH_AARCH64_BIN") else {
        anyhow::ensure!(
            !ci,
            "CI=true but LABMESH_AARCH64_BIN is not set (.ci/run cross-builds it)"
        );
        eprintln!("SKIP: LABMESH_AARCH64_BIN not set (scripts/cross-build.sh, then export it)");
        return Ok(());
    };
    let qemu = std::env::var("LABMESH_QEMU").unwrap_or_else(|_| "qemu-aarch64".into());
    let sysroot =
        std::env::var("LABMESH_QEMU_LD_PREFIX").unwrap_or_else(|_| "/usr/aarch64-linux-gnu".into());
    let cfg = write_cfg(30.0)?;
    let broker = Node::start(&cfg.path, &["broker"], "broker:").await?;
    let port = free_port()?;
    let sim_addr = format!("127.0.0.1:{port}");
    let sim = Node::start(&cfg.path, &["sim", "psu", "--tcp", &sim_addr], "raw SCPI").await?;
    let resource = format!("tcp://{sim_addr}");
    let mut relay = tokio::process::Command::new(&qemu)
        .arg("-L")
        .arg(&sysroot)
        .arg(&bin)
        .arg("--config")
        .arg(&cfg.path)
        .args([
            "relay",
            "--relay-id",
            "pi-psu",
            "--driver",
            "keysight-e36xx",
            "--resource",
            &resource,
        ])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let ctx = zmq::Context::new();
    let c = client(&ctx, &cfg).await?;
    // Emulated start-up is slower than native: a minute at most.
    let limit = Duration::from_secs(60);
    c.wait_for_relay("pi-psu", limit).await?;
    let r = tokio::time::timeout(
        limit,
        c.call("pi-psu", "set_voltage", json!({"value": 2.5})),
    )
    .await??;
    assert_eq!(r["voltage"], json!(2.5), "{r}");
    let idn = tokio::time::timeout(limit, c.call("pi-psu", "identify", json!({}))).await??;
    assert!(idn.as_str().is_some_and(|s| s.contains("E36313A")), "{idn}");
    let ok = tokio::time::timeout(limit, c.call("pi-psu", "lm.ping", json!({}))).await??;
    assert_eq!(ok["relay_id"], "pi-psu");
    relay.start_kill()?;
    let _ = tokio::time::timeout(limit, relay.wait()).await;
    sim.kill().await?;
    broker.kill().await?;
    Ok(())
}
