//! `labmesh lock`, `unlock`, `who` and `call` as real processes: a lease
//! held around a command, handed to it in `LABMESH_LEASE`.

use std::time::Duration;

use serde_json::json;

use crate::{client, run_cli_within, write_cfg, Node, BIN, WAIT};

#[tokio::test]
async fn lock_runs_a_command_holding_the_lease_and_call_uses_it() -> anyhow::Result<()> {
    labmesh_tests::init_logging();
    let cfg = write_cfg(5.0)?;
    let _broker = Node::start(&cfg.path, &["broker"], "broker:").await?;
    let _relay = Node::start(
        &cfg.path,
        &["relay", "--relay-id", "r1", "--driver", "mock-psu"],
        "relay r1:",
    )
    .await?;
    let ctx = zmq::Context::new();
    let c = client(&ctx, &cfg).await?;
    c.wait_for_relay("r1", WAIT).await?;
    let cfg_path = cfg.path.to_string_lossy().into_owned();
    let limit = WAIT * 2;

    // Inside `lock -- CMD`, `labmesh call` carries the lease; a call
    // without it (LABMESH_LEASE removed) is refused; CMD's exit code is
    // lock's.
    let script = format!(
        "'{BIN}' --config '{cfg_path}' call r1 set_voltage value=4 || exit 3; \
         env -u LABMESH_LEASE '{BIN}' --config '{cfg_path}' call r1 set_voltage value=5; \
         echo unleased=$?; echo \"lease=$LABMESH_LEASE\"; exit 7"
    );
    let out = run_cli_within(
        Some(&cfg.path),
        &[
            "lock",
            "r1",
            "--ttl",
            "5",
            "--holder",
            "ci@runner",
            "--",
            "sh",
            "-c",
            &script,
        ],
        limit,
    )
    .await?;
    assert_eq!(out.code, 7, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("unleased=3"),
        "remote errors exit 3: {}",
        out.stdout
    );
    assert!(out.stdout.contains("lease=r1:"), "{}", out.stdout);
    assert!(out.stderr.contains("leased by ci@runner"), "{}", out.stderr);
    assert_eq!(
        c.call("r1", "get_state", json!({})).await?["voltage"],
        json!(4.0)
    );
    // Released when CMD exited.
    let who = run_cli_within(Some(&cfg.path), &["who", "r1", "--json"], limit).await?;
    assert_eq!((who.code, who.stdout.trim()), (0, "null"));

    // Without CMD: printed for scripts, held until unlocked.
    let out = run_cli_within(
        Some(&cfg.path),
        &["lock", "r1", "--ttl", "60", "--holder", "script"],
        limit,
    )
    .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let granted: serde_json::Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(granted["holder"], json!("script"));
    let token = granted["token"].as_u64().unwrap_or_default();
    assert!(token > 0, "{granted}");
    let e = c
        .call("r1", "set_voltage", json!({"value": 1.0}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(409), "{e}");
    // Someone else's lock fails with 3 (remote error) and says who holds it.
    let busy = run_cli_within(Some(&cfg.path), &["lock", "r1", "--", "true"], limit).await?;
    assert_eq!(busy.code, 3, "{}", busy.stderr);
    assert!(busy.stderr.contains("leased by script"), "{}", busy.stderr);
    let all = run_cli_within(Some(&cfg.path), &["who", "--json"], limit).await?;
    let all: serde_json::Value = serde_json::from_str(all.stdout.trim())?;
    assert_eq!(all["r1"]["holder"], json!("script"), "{all}");
    let table = run_cli_within(Some(&cfg.path), &["who"], limit).await?;
    assert!(table.stdout.contains("script"), "{}", table.stdout);
    let out = run_cli_within(
        Some(&cfg.path),
        &["unlock", "r1", "--token", &token.to_string()],
        limit,
    )
    .await?;
    assert_eq!(
        (out.code, out.stdout.trim()),
        (0, r#"{"ok":true}"#),
        "{}",
        out.stderr
    );
    c.call("r1", "set_voltage", json!({"value": 1.0})).await?;

    // Flags are checked before anything is sent.
    for bad in [["--ttl", "0"], ["--ttl", "86401"], ["--ttl", "nan"]] {
        let out = run_cli_within(
            Some(&cfg.path),
            &["lock", "r1", bad[0], bad[1]],
            Duration::from_secs(10),
        )
        .await?;
        assert_ne!(out.code, 0, "{bad:?}");
        assert!(out.stderr.contains("--ttl"), "{bad:?}: {}", out.stderr);
    }
    let out = run_cli_within(Some(&cfg.path), &["unlock", "r1"], limit).await?;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("LABMESH_LEASE"), "{}", out.stderr);
    Ok(())
}
