//! Mesh client -> broker -> relay -> `firmware` driver -> pseudo-terminal ->
//! the no_std firmware PSU run as a simulated microcontroller.

use std::time::Duration;

use labmesh_drivers::firmware::{serve_firmware_pty, DRIVER};
use labmesh_drivers::{DriverRegistry, InstrumentConfig};
use labmesh_relay::{Hosted, RelayOptions};
use labmesh_tests::{Mesh, WAIT};
use serde_json::{json, Map, Value};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

fn close(v: &Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9)
}

/// Line noise without 0x00 bytes.
fn noise(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 89 % 251) as u8 + 1).collect()
}

#[tokio::test]
async fn firmware_psu_through_the_mesh_with_a_timeout_and_line_noise() -> anyhow::Result<()> {
    timeout(LIMIT, async {
        let mesh = Mesh::start(&["mock"], Duration::from_millis(100)).await?;
        let pty = serve_firmware_pty(Some(Duration::from_millis(50)))?;
        let mut options = Map::new();
        options.insert("timeout_ms".into(), json!(300));
        let inst = DriverRegistry::with_builtins()
            .create(InstrumentConfig {
                id: "fw-psu".into(),
                driver: DRIVER.into(),
                resource: Some(format!("serial://{}", pty.path().display())),
                options,
            })
            .await?;
        let relay = labmesh_relay::spawn(
            &mesh.ctx,
            RelayOptions::with_broker(mesh.broker.rpc_endpoint(), mesh.broker.xsub_endpoint()),
            vec![Hosted::new("fw-psu", inst).poll_every(Duration::from_millis(100))],
        )
        .await?;
        mesh.client.wait_for_relay("fw-psu", WAIT).await?;
        let psu = mesh.client.relay("fw-psu").await?;

        let d = psu.describe().await?;
        assert_eq!(d["driver"], json!("firmware"));
        let names: Vec<&str> = d["methods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "identify",
                "set_voltage",
                "set_current",
                "set_output",
                "measure",
                "get_state"
            ]
        );

        let st = psu.call("set_voltage", json!({"value": 5.0})).await?;
        assert!(close(&st["voltage_set"], 5.0), "{st}");
        let st = psu.call("set_output", json!({"on": true})).await?;
        assert_eq!(st["output"], json!(true));
        assert_eq!(st["mode"], json!("cv"));
        // The firmware itself holds the setpoint.
        assert_eq!(pty.device_state().await?.set_mv, 5_000);

        // The relay publishes the device's telemetry as its state.
        let s = mesh
            .client
            .wait_state("fw-psu", WAIT, |s| {
                close(&s.state["voltage"], 5.0) && s.state["source"] == json!("telemetry")
            })
            .await?;
        assert!(close(&s.state["current"], 0.5), "{}", s.state); // 5 V into 10 Ω
        assert!(close(&s.state["voltage_set"], 5.0), "{}", s.state);
        assert_eq!(s.state["output"], json!(true));
        let m = psu.call("measure", Value::Null).await?;
        assert_eq!(m, json!({"voltage": 5.0, "current": 0.5, "mode": "cv"}));

        let e = psu
            .call("set_voltage", json!({"value": 31.0}))
            .await
            .expect_err("31 V accepted");
        assert_eq!(e.code(), Some(400), "{e}");

        // The device stops answering: 408 through the mesh.
        pty.set_muted(true).await?;
        let e = psu
            .call("get_state", Value::Null)
            .await
            .expect_err("a muted device answered");
        assert_eq!(e.code(), Some(408), "{e}");
        assert!(e.to_string().contains("fw-psu.get_state"), "{e}");
        // The relay keeps serving: its own methods and the other instrument.
        assert_eq!(psu.call("lm.ping", Value::Null).await?["ok"], json!(true));
        assert_eq!(
            mesh.client
                .call("mock", "set_voltage", json!({"value": 2.0}))
                .await?["voltage"],
            json!(2.0)
        );
        pty.set_muted(false).await?;
        let st = psu.call("get_state", Value::Null).await?;
        assert!(close(&st["voltage"], 5.0), "{st}");

        // A burst of noise each way (delimited towards the host; the host
        // leads every request with a delimiter): calls carry on.
        let mut burst = noise(100);
        burst.push(0);
        burst.extend(noise(700));
        burst.push(0);
        pty.inject_to_host(&burst).await?;
        pty.inject_to_device(&noise(200)).await?;
        let m = psu.call("measure", Value::Null).await?;
        assert!(close(&m["voltage"], 5.0), "{m}");
        let st = psu.call("set_voltage", json!(6.0)).await?;
        assert!(close(&st["voltage_set"], 6.0), "{st}");
        // And the state bus follows the new setpoint.
        mesh.client
            .wait_state("fw-psu", WAIT, |s| close(&s.state["voltage"], 6.0))
            .await?;

        relay.shutdown().await;
        pty.close().await;
        mesh.stop().await;
        Ok(())
    })
    .await?
}
