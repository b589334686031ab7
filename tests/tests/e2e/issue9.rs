//! Issue 9 regressions: instrument identity on the mesh, and driver options
//! checked against what each driver declares.

use std::time::Duration;

use labmesh_drivers::sim::Dialect;
use labmesh_drivers::DriverRegistry;
use labmesh_relay::{Hosted, RelayOptions};
use labmesh_tests::{Mesh, WAIT};
use serde_json::json;
use tokio::time::timeout;

use crate::instruments::{create, tcp_sim};

/// `lm.describe` was snapshotted before the link opened, so it never carried
/// the identity; the `scpi` driver's state said `"idn": null` until someone
/// called `connect`, which constellation never does. Now the first poll
/// opens the link, the driver learns `*IDN?`, and the relay's description
/// follows the driver's after every poll and call.
#[tokio::test]
async fn regression_identity_reaches_lm_describe_and_the_scpi_state_without_connect(
) -> anyhow::Result<()> {
    let mesh = Mesh::start(&["mock"], Duration::from_millis(200)).await?;
    let t = tcp_sim(Dialect::KeysightE36xx).await?;
    let idn = t.sim.idn();
    let registry = DriverRegistry::with_builtins();
    let resource = format!("tcp://{}", t.addr);
    let every = Duration::from_millis(100);
    let hosted = vec![
        Hosted::new(
            "scpi-1",
            create(&registry, "scpi-1", "scpi", &resource, json!({})).await?,
        )
        .poll_every(every),
        Hosted::new(
            "psu-1",
            create(&registry, "psu-1", "keysight-e36xx", &resource, json!({})).await?,
        )
        .poll_every(every),
    ];
    let relay = labmesh_relay::spawn(
        &mesh.ctx,
        RelayOptions::with_broker(mesh.broker.rpc_endpoint(), mesh.broker.xsub_endpoint()),
        hosted,
    )
    .await?;
    timeout(WAIT * 2, async {
        for id in ["scpi-1", "psu-1"] {
            mesh.client.wait_for_relay(id, WAIT).await?;
            // The first state that arrives: nobody has called anything.
            let s = mesh.client.wait_state(id, WAIT, |_| true).await?;
            if id == "scpi-1" {
                assert_eq!(s.state["idn"], json!(idn), "{id}: {}", s.state);
            }
            let d = mesh.client.relay(id).await?.describe().await?;
            assert_eq!(d["identity"], json!(idn), "{id}: {d}");
        }
        anyhow::Ok(())
    })
    .await??;
    relay.shutdown().await;
    drop(t);
    mesh.stop().await;
    Ok(())
}

/// Driver options were flattened into the instrument table and never
/// checked: `timout_ms = 500` on an `scpi` instrument did nothing. Now the
/// relay refuses it, naming the file, the instrument and the key; a known
/// option still works.
#[tokio::test]
async fn regression_unknown_instrument_option_names_file_id_and_key() -> anyhow::Result<()> {
    timeout(WAIT, unknown_option_in_a_config_file()).await?
}

async fn unknown_option_in_a_config_file() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "labmesh-issue9-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("lab.toml");
    let table = |extra: &str| {
        format!(
            "[[relay.instruments]]\nid = \"scope-1\"\ndriver = \"scpi\"\n\
             resource = \"tcp://127.0.0.1:1\"\n{extra}\n"
        )
    };
    let registry = DriverRegistry::with_builtins();

    std::fs::write(&file, table("timout_ms = 500"))?;
    let (cfg, _) = labmesh_config::Config::load(&file)?;
    let e = match labmesh_relay::hosted_from_config(&cfg, &registry).await {
        Ok(_) => anyhow::bail!("timout_ms accepted"),
        Err(e) => e.to_string(),
    };
    for want in [
        file.display().to_string(),
        "scope-1".into(),
        "timout_ms".into(),
    ] {
        assert!(e.contains(&want), "{want:?} not in {e}");
    }
    assert!(e.contains("timeout_ms"), "known options listed: {e}");

    // The same inside `options = { ... }`.
    std::fs::write(&file, table("options = { timout_ms = 500 }"))?;
    let (cfg, _) = labmesh_config::Config::load(&file)?;
    assert!(labmesh_relay::hosted_from_config(&cfg, &registry)
        .await
        .is_err());

    // Known options, either way, are fine.
    std::fs::write(
        &file,
        table("timeout_ms = 500\noptions = { raise_errors = true }"),
    )?;
    let (cfg, _) = labmesh_config::Config::load(&file)?;
    let hosted = labmesh_relay::hosted_from_config(&cfg, &registry).await?;
    assert_eq!(hosted.len(), 1);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
