//! Issue 15: `labmesh sim toml FILE --pty` serves a simulator derived from
//! a shipped TOML driver, `labmesh relay` hosts that driver on the pty,
//! and mesh calls go all the way through: setpoints per channel read
//! back, state polled, the identity from the file.

use anyhow::Context;
use labmesh_tests::{init_logging, WAIT};
use serde_json::json;

use super::{client, write_cfg, Node};

#[tokio::test]
async fn sim_toml_on_a_pty_driven_through_a_relay_with_the_same_driver() -> anyhow::Result<()> {
    init_logging();
    tokio::time::timeout(2 * WAIT, async {
        let instruments = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("instruments");
        let psu_toml = instruments.join("labmesh-sim-psu.toml");
        let cfg = write_cfg(30.0)?;
        let sim = Node::start(
            &cfg.path,
            &["sim", "toml", &psu_toml.to_string_lossy(), "--pty"],
            "/dev/pts/",
        )
        .await?;
        let pty = sim.ready_line.trim().to_string();
        let base = std::fs::read_to_string(&cfg.path)?;
        let text = base.replacen(
            "[relay]\n",
            &format!(
                "[relay]\ndriver_dirs = [{:?}]\n",
                instruments.to_string_lossy()
            ),
            1,
        ) + &format!(
            "\n[[relay.instruments]]\nid = \"toml-psu\"\ndriver = \"labmesh-sim-psu\"\n\
             resource = \"ASRL{pty}::INSTR\"\nrpc_bind = \"tcp://127.0.0.1:*\"\n"
        );
        std::fs::write(&cfg.path, text)?;
        let broker = Node::start(&cfg.path, &["broker"], "broker:").await?;
        let relay = Node::start(&cfg.path, &["relay"], "relay toml-psu:").await?;
        let ctx = zmq::Context::new();
        let c = client(&ctx, &cfg).await?;
        c.wait_for_relay("toml-psu", WAIT).await?;

        let idn = c.call("toml-psu", "identify", json!({})).await?;
        assert_eq!(idn, json!("labmesh,labmesh-sim-psu,SIM000001,1.0"));
        // Two channels, two setpoints: the simulator keeps them apart
        // (INST:NSEL is a selector in the file's templates).
        c.call(
            "toml-psu",
            "set_voltage",
            json!({"value": 5.0, "channel": 2}),
        )
        .await?;
        c.call(
            "toml-psu",
            "set_voltage",
            json!({"value": 3.25, "channel": 1}),
        )
        .await?;
        let v2 = c
            .call("toml-psu", "measure_voltage", json!({"channel": 2}))
            .await?;
        let v1 = c
            .call("toml-psu", "measure_voltage", json!({"channel": 1}))
            .await?;
        assert_eq!((v1, v2), (json!(3.25), json!(5.0)));
        // The driver's own range check answers 400 before the simulator
        // sees anything; the simulator's -222 path is the same range.
        let e = c
            .call("toml-psu", "set_voltage", json!({"value": 30.0}))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("value"), "{e}");
        // The poll ran against the simulator too (check_errors: every
        // SYST:ERR? it asked answered 0).
        let st = c.call("toml-psu", "get_state", json!({})).await?;
        assert_eq!(st["connected"], json!(true), "{st}");
        assert!(st["voltages"].is_array(), "{st}");

        relay.terminate().await?;
        broker.terminate().await?;
        sim.terminate().await?;
        anyhow::Ok(())
    })
    .await
    .context("sim toml end to end took too long")?
}
