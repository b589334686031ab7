//! Open-source third-party PSU drivers from PyPI drive `labmesh sim psu`
//! (the binary, over TCP) through PyVISA with the pyvisa-py backend:
//! PyMeasure's `KeysightE36312A`, QCoDeS's `RigolDP832`, and the
//! `spd3303x` package for the Siglent SPD3303X. The script
//! (tests/python/third_party_psu.py) asserts every step against the
//! programming guides; this side checks its summary. `.ci/run` installs the
//! packages (pinned); locally a missing one skips with the reason, and with
//! `CI=true` it fails.

use std::path::PathBuf;
use std::time::Duration;

use labmesh_tests::{free_port, last_json, run_python};
use serde_json::Value;

use crate::Node;

/// Python that imports pyvisa, pyvisa-py and `module`, or `None` (skipped
/// with the reason; a failure under `CI=true`).
fn python_with(module: &str, pip: &str) -> Option<PathBuf> {
    labmesh_tests::python_importing(
        &format!("pyvisa, pyvisa_py, {module}"),
        &format!("pyvisa-py {pip}"),
    )
}

/// Start `labmesh sim psu --dialect D --model M --tcp 127.0.0.1:PORT` and
/// run the script's `driver` against it; returns its JSON summary.
async fn drive(py: &PathBuf, dialect: &str, model: &str, driver: &str) -> anyhow::Result<Value> {
    let dir = std::env::temp_dir().join(format!("lm-3rd-{}-{driver}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("labmesh.toml");
    std::fs::write(&cfg, "")?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let _sim = Node::start(
        &cfg,
        &[
            "sim",
            "psu",
            "--dialect",
            dialect,
            "--model",
            model,
            "--tcp",
            &addr,
        ],
        "sim psu",
    )
    .await?;
    let resource = format!("TCPIP::127.0.0.1::{port}::SOCKET");
    let out = run_python(
        py,
        "third_party_psu.py",
        &[driver, &resource],
        // QCoDeS writes its logs under QCODES_USER_PATH (default ~/.qcodes).
        &[("QCODES_USER_PATH", &dir.to_string_lossy())],
        Duration::from_secs(120),
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    last_json(&out?)
}

#[tokio::test]
async fn pymeasure_keysight_e36312a_drives_the_keysight_simulator() -> anyhow::Result<()> {
    let Some(py) = python_with("pymeasure", "pymeasure==0.16.0") else {
        return Ok(());
    };
    let v = drive(&py, "keysight", "E36312A", "pymeasure-e36312a").await?;
    assert_eq!(v["options"], "0", "{v}");
    assert_eq!(v["ch1"], serde_json::json!([2.0, 0.2]), "{v}");
    assert_eq!(v["errors"][0][0].as_f64(), Some(-222.0), "{v}");
    assert_eq!(v["vers"], "1999.0", "{v}");
    Ok(())
}

#[tokio::test]
async fn qcodes_rigol_dp832_drives_the_rigol_simulator() -> anyhow::Result<()> {
    let Some(py) = python_with("qcodes", "qcodes==0.58.0") else {
        return Ok(());
    };
    let v = drive(&py, "rigol", "DP832", "qcodes-dp832").await?;
    assert_eq!(v["idn"]["model"], "DP832", "{v}");
    assert_eq!(v["options"], serde_json::json!([]), "{v}");
    assert_eq!(v["mode"], "ConstantVoltage", "{v}");
    assert_eq!(v["tripped"], "YES", "{v}");
    assert_eq!(v["ocp"], serde_json::json!([0.4, "ON"]), "{v}");
    assert_eq!(v["err"], "-222,\"Data out of range\"", "{v}");
    Ok(())
}

#[tokio::test]
async fn spd3303x_package_drives_the_siglent_simulator() -> anyhow::Result<()> {
    let Some(py) = python_with("spd3303x", "spd3303x==1.0.3") else {
        return Ok(());
    };
    let v = drive(&py, "siglent", "SPD3303X", "spd3303x").await?;
    assert!(
        v["idn"]
            .as_str()
            .is_some_and(|s| s.starts_with("Siglent Technologies,SPD3303X,")),
        "{v}"
    );
    assert_eq!(v["err"], "0 No Error", "{v}");
    assert_eq!(v["vers"], "1.01.01.02.05", "{v}");
    // Independent mode (bit 2), nothing on, no timers.
    assert_eq!(v["status"], "0x0004", "{v}");
    Ok(())
}
