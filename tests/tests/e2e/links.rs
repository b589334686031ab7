//! VXI-11 and HiSLIP interop: pyvisa-py (PyPI `pyvisa` + `pyvisa-py`)
//! against the simulator's servers on 127.0.0.1.
//!
//! The script (tests/python/pyvisa_query.py) asks *IDN?, sets and reads
//! back VOLT, reads SYST:ERR? after an out-of-range set, queries after
//! viClear, locks exclusively and queries (VXI-11 always; HiSLIP where the
//! installed pyvisa-py implements viLock for it: 0.8 does not), and reads
//! the status byte.

use labmesh_drivers::psu::models::Family;
use labmesh_drivers::sim::{SimConfig, SimPsu};
use labmesh_tests::{last_json, python_pyvisa, run_python, skip_or_fail, WAIT};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serve VXI-11 until the returned sender is dropped or sends true.
fn serve_vxi11(
    sim: &SimPsu,
    pm: Option<TcpListener>,
    core: TcpListener,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (stop, mut stopped) = watch::channel(false);
    let s = sim.clone();
    let task = tokio::spawn(async move {
        s.serve_vxi11(pm, core, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
    });
    (stop, task)
}

async fn pyvisa_session(
    py: &std::path::PathBuf,
    sim: &SimPsu,
    resource: &str,
    must_lock: bool,
) -> anyhow::Result<()> {
    let out = run_python(py, "pyvisa_query.py", &[resource], &[], WAIT).await?;
    let v = last_json(&out)?;
    assert_eq!(v["idn"], sim.idn(), "{resource}: {v}");
    let volts: f64 = v["volt"].as_str().unwrap_or_default().trim().parse()?;
    assert!((volts - 2.5).abs() < 1e-9, "{resource}: {v}");
    assert_eq!(v["err"], "-222,\"Data out of range\"", "{resource}: {v}");
    assert_eq!(v["after_clear"], "1", "{resource}: {v}");
    assert_eq!(v["stb"], 0, "{resource}: {v}");
    if v["lock"] == "ok" {
        assert_eq!(v["locked_idn"], sim.idn(), "{resource}: {v}");
    } else {
        assert!(!must_lock, "{resource}: {v}");
        eprintln!("NOTE: {resource}: {} (lock not exercised)", v["lock"]);
    }
    Ok(())
}

/// pyvisa-py opens `TCPIP::127.0.0.1,PORT::INSTR` (its own spelling for
/// "core channel at PORT, no portmapper") and, when port 111 can be had,
/// `TCPIP::127.0.0.1::INSTR` through the simulator's portmapper (pyvisa-py
/// always asks the portmapper on 111; it has no option for another port).
#[tokio::test]
async fn pyvisa_py_drives_the_simulator_over_vxi11() -> anyhow::Result<()> {
    let Some(py) = python_pyvisa() else {
        return Ok(());
    };
    let sim = SimPsu::new(SimConfig::new(Family::KeysightE36xx))?;
    let core = TcpListener::bind("127.0.0.1:0").await?;
    let core_port = core.local_addr()?.port();
    let pm = match TcpListener::bind("127.0.0.1:111").await {
        Ok(l) => Some(l),
        Err(e) => {
            skip_or_fail(&format!(
                "cannot listen on 127.0.0.1:111 for the portmapper ({e}); \
                 only the TCPIP::HOST,PORT::INSTR form is tested"
            ));
            None
        }
    };
    let with_pm = pm.is_some();
    let (stop, task) = serve_vxi11(&sim, pm, core);
    pyvisa_session(
        &py,
        &sim,
        &format!("TCPIP::127.0.0.1,{core_port}::INSTR"),
        true,
    )
    .await?;
    if with_pm {
        pyvisa_session(&py, &sim, "TCPIP::127.0.0.1::INSTR", true).await?;
        pyvisa_session(&py, &sim, "TCPIP0::127.0.0.1::inst0::INSTR", true).await?;
    }
    let _ = stop.send(true);
    task.await??;
    Ok(())
}

/// pyvisa-py opens `TCPIP::127.0.0.1::hislip0,PORT::INSTR` (a free port:
/// pyvisa-py takes the port in the resource string, so no root is needed).
#[tokio::test]
async fn pyvisa_py_drives_the_simulator_over_hislip() -> anyhow::Result<()> {
    let Some(py) = python_pyvisa() else {
        return Ok(());
    };
    let sim = SimPsu::new(SimConfig::new(Family::KeysightE36xx))?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (stop, mut stopped) = watch::channel(false);
    let s = sim.clone();
    let task = tokio::spawn(async move {
        s.serve_hislip(listener, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
    });
    let resource = format!("TCPIP::127.0.0.1::hislip0,{port}::INSTR");
    pyvisa_session(&py, &sim, &resource, false).await?;
    let _ = stop.send(true);
    task.await??;
    Ok(())
}
