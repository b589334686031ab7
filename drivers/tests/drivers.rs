//! Drivers against the simulated PSUs over real TCP sockets and real
//! pseudo-terminals. One test binary, shared helpers below.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use base64::Engine;
use labmesh_drivers::psu::models::Family;
use labmesh_drivers::sim::{self, PtySim, SimConfig, SimPsu};
use labmesh_drivers::{
    BoxInstrument, DriverError, DriverRegistry, InstrumentConfig, Resource, ScpiSession,
    SessionOptions,
};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

mod common;
use common::Served;

const LIMIT: Duration = Duration::from_secs(20);

/// A simulator on 127.0.0.1:0; dropping it shuts the server down.
struct TcpSim {
    sim: SimPsu,
    resource: String,
    served: Served,
}

impl TcpSim {
    async fn start(family: Family) -> Result<TcpSim> {
        let sim = SimPsu::new(SimConfig::new(family))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let s = sim.clone();
        let served =
            Served::spawn(move |stopped| async move { s.serve_tcp(listener, stopped).await });
        Ok(TcpSim {
            sim,
            resource: format!("tcp://{addr}"),
            served,
        })
    }

    async fn shutdown(self) -> Result<()> {
        self.served.shutdown().await
    }
}

fn pty_sim(family: Family) -> Result<(SimPsu, PtySim, String)> {
    let (sim, pty) = sim::serve_pty(SimConfig::new(family))?;
    let resource = format!("serial://{}?baud=115200", pty.path().display());
    Ok((sim, pty, resource))
}

fn options(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

async fn create(driver: &str, resource: &str, opts: Value) -> Result<BoxInstrument> {
    let reg = DriverRegistry::with_builtins();
    let cfg = InstrumentConfig {
        id: format!("{driver}-1"),
        driver: driver.to_string(),
        resource: Some(resource.to_string()),
        options: options(opts),
    };
    Ok(reg.create(cfg).await?)
}

async fn call(inst: &mut BoxInstrument, method: &str, params: Value) -> Result<Value, DriverError> {
    let args = inst.describe().bind(method, &params)?;
    inst.call(method, args).await
}

fn close_to(v: &Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-6)
}

/// The common PSU method set, end to end, against a simulator of the family.
async fn exercise_psu(family: Family, resource: &str, sim: &SimPsu) -> Result<()> {
    let mut psu = create(family.driver_name(), resource, json!({"timeout_ms": 2000})).await?;
    let idn = call(&mut psu, "identify", Value::Null).await?;
    let model = family.default_model().model;
    assert!(
        idn.as_str().is_some_and(|s| s.contains(model)),
        "{family}: {idn}"
    );

    // 5 V into the simulator's 10 ohm load with a 1 A limit: CV, 0.5 A.
    let r = call(&mut psu, "set_voltage", json!({"value": 5.0, "channel": 2})).await?;
    assert_eq!(r["ok"], true);
    call(&mut psu, "set_current", json!([1.0, 2])).await?;
    call(&mut psu, "set_output", json!({"on": true, "channel": 2})).await?;
    let v = call(&mut psu, "measure_voltage", json!({"channel": 2})).await?;
    let i = call(&mut psu, "measure_current", json!({"channel": 2})).await?;
    assert!(close_to(&v, 5.0), "{family}: V = {v}");
    assert!(close_to(&i, 0.5), "{family}: I = {i}");
    assert!(
        (sim.reading(2).current - 0.5).abs() < 1e-9,
        "{family}: sim disagrees"
    );

    // Lower the limit below V/R: constant current, the voltage sags.
    call(&mut psu, "set_current", json!({"value": 0.2, "channel": 2})).await?;
    let v = call(&mut psu, "measure_voltage", json!({"channel": 2})).await?;
    assert!(close_to(&v, 2.0), "{family}: CC V = {v}");

    // Channel 1 stays off and reads zero.
    let i1 = call(&mut psu, "measure_current", json!({})).await?;
    assert!(close_to(&i1, 0.0), "{family}: ch1 I = {i1}");

    let state = psu.poll().await?;
    let ch2 = &state["channels"][1];
    assert_eq!(ch2["output"], true, "{family}: {state}");
    assert!(close_to(&ch2["voltage_set"], 5.0), "{family}: {state}");
    assert!(close_to(&ch2["current_set"], 0.2), "{family}: {state}");
    assert_eq!(state["channels"][0]["output"], false, "{family}: {state}");
    assert_eq!(
        state["channels"].as_array().map(Vec::len),
        Some(family.default_model().channels.len())
    );

    // Per-channel limits: above the model's maximum is refused before any I/O.
    let max = family.default_model().channels[0].max_voltage;
    let e = call(
        &mut psu,
        "set_voltage",
        json!({"value": max + 1.0, "channel": 1}),
    )
    .await
    .expect_err("over range");
    assert_eq!(e.code(), 400, "{family}: {e}");
    let e = call(&mut psu, "set_output", json!({"on": true, "channel": 9}))
        .await
        .expect_err("no channel 9");
    assert_eq!(e.code(), 400, "{family}: {e}");

    call(&mut psu, "set_output", json!([false, 2])).await?;
    let i = call(&mut psu, "measure_current", json!({"channel": 2})).await?;
    assert!(close_to(&i, 0.0), "{family}: off I = {i}");
    assert_eq!(sim.error_count(), 0, "{family}: driver caused SCPI errors");
    psu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn psu_families_over_tcp() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        for family in Family::ALL {
            let sim = TcpSim::start(family).await?;
            exercise_psu(family, &sim.resource, &sim.sim)
                .await
                .with_context(|| format!("{family} over TCP"))?;
            sim.shutdown().await?;
        }
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn psu_families_over_a_pty() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        for family in Family::ALL {
            let (sim, pty, resource) = pty_sim(family)?;
            exercise_psu(family, &resource, &sim)
                .await
                .with_context(|| format!("{family} over {resource}"))?;
            pty.close().await;
        }
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn generic_scpi_write_read_query_binary() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        let sim = TcpSim::start(Family::KeysightE36xx).await?;
        let mut inst = create("scpi", &sim.resource, json!({})).await?;
        assert_eq!(call(&mut inst, "connect", Value::Null).await?, json!(true));
        assert_eq!(inst.poll().await?["connected"], true);
        assert_eq!(
            call(&mut inst, "write", json!({"cmd": "VOLT 3.5"})).await?,
            json!(true)
        );
        assert_eq!(
            call(&mut inst, "write", json!(["VOLT?"])).await?,
            json!(true)
        );
        assert_eq!(
            call(&mut inst, "read", Value::Null).await?,
            json!([true, "+3.50000000E+00"])
        );
        let idn = call(&mut inst, "query", json!({"cmd": "*IDN?"})).await?;
        assert_eq!(idn, json!([true, sim.sim.idn()]));
        // Binary: the data contains '\n' bytes; a line read would cut it.
        let r = call(&mut inst, "query_binary", json!({"cmd": "HCOP:SDUM:DATA?"})).await?;
        assert_eq!(r[0], true, "{r}");
        let b64 = r[1].as_str().ok_or_else(|| anyhow!("not a string: {r}"))?;
        let data = base64::engine::general_purpose::STANDARD.decode(b64)?;
        assert_eq!(data, sim::psu::screenshot());
        assert!(data.contains(&b'\n'));
        // The block's trailing terminator does not leak into the next reply.
        assert_eq!(
            call(&mut inst, "query", json!({"cmd": "*OPC?"})).await?,
            json!([true, "1"])
        );
        // A non-block reply to query_binary: [false, why], then back in step.
        let r = call(&mut inst, "query_binary", json!({"cmd": "*IDN?"})).await?;
        assert_eq!(r[0], false, "{r}");
        assert_eq!(
            call(&mut inst, "query", json!({"cmd": "VOLT?"})).await?,
            json!([true, "+3.50000000E+00"])
        );
        assert_eq!(call(&mut inst, "close", Value::Null).await?, Value::Null);
        assert_eq!(inst.poll().await?["connected"], false);
        // The next call reconnects by itself.
        assert_eq!(
            call(&mut inst, "query", json!({"cmd": "*OPC?"})).await?,
            json!([true, "1"])
        );
        // Missing cmd is a request error, not [false, ..].
        let e = call(&mut inst, "query", json!({}))
            .await
            .expect_err("no cmd");
        assert_eq!(e.code(), 400);
        sim.shutdown().await
    })
    .await?
}

/// Regression (issue 17): a query the instrument never answers came back
/// as `[false, "instrument timeout"]`, a success; it is a 408 error.
#[tokio::test]
async fn generic_scpi_query_timeout_is_a_408_error() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        let sim = TcpSim::start(Family::KeysightE36xx).await?;
        let mut inst = create("scpi", &sim.resource, json!({"timeout_ms": 300})).await?;
        // `VOLT 1` is a setting: the instrument sends nothing back.
        let e = call(&mut inst, "query", json!({"cmd": "VOLT 1"}))
            .await
            .expect_err("no reply is not a success");
        assert_eq!(e.code(), 408, "{e}");
        // Back in step afterwards.
        assert_eq!(
            call(&mut inst, "query", json!({"cmd": "*OPC?"})).await?,
            json!([true, "1"])
        );
        sim.shutdown().await
    })
    .await?
}

#[tokio::test]
async fn tcp_clients_share_one_instrument() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        let sim = TcpSim::start(Family::RigolDp8xx).await?;
        let res = Resource::parse(&sim.resource)?;
        let mut a = ScpiSession::new(res.clone(), SessionOptions::default());
        let mut b = ScpiSession::new(res, SessionOptions::default());
        a.write(":SOUR1:VOLT 7.25").await?;
        a.opc().await?;
        assert_eq!(b.query(":SOUR1:VOLT?").await?, "7.250");
        sim.shutdown().await
    })
    .await?
}

async fn timeout_then_no_stale_reply(
    resource: &str,
    sim: &SimPsu,
    driver: &str,
    stall: impl Fn(&SimPsu, bool),
) -> Result<()> {
    // A generous serial drain window: a loaded CI machine may answer late.
    let opts = json!({"timeout_ms": 300, "drain_quiet_ms": 500});
    let mut psu = create(driver, resource, opts).await?;
    call(&mut psu, "set_voltage", json!({"value": 1.5, "channel": 1})).await?;
    call(&mut psu, "set_output", json!({"on": true, "channel": 1})).await?;
    stall(sim, true);
    let started = tokio::time::Instant::now();
    let e = call(&mut psu, "identify", Value::Null)
        .await
        .expect_err("stalled");
    assert!(matches!(e, DriverError::Timeout(_)), "{e}");
    assert_eq!(e.code(), 408);
    // Bounded by the call's own timeout (generous slack; not a timing test).
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    stall(sim, false);
    // The *IDN? answer arrives late; it must not be taken as this reply.
    let v = call(&mut psu, "measure_voltage", json!({"channel": 1})).await?;
    assert!(close_to(&v, 1.5), "stale reply? {v}");
    let idn = call(&mut psu, "identify", Value::Null).await?;
    assert_eq!(idn, json!(sim.idn()));
    psu.shutdown().await;
    Ok(())
}

fn mute(sim: &SimPsu, on: bool) {
    sim.set_muted(on);
}

fn slow(sim: &SimPsu, on: bool) {
    sim.set_latency(if on {
        Duration::from_millis(600)
    } else {
        Duration::ZERO
    });
}

#[tokio::test]
async fn muted_sim_times_out_then_recovers_over_tcp() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        let sim = TcpSim::start(Family::KeysightE36xx).await?;
        timeout_then_no_stale_reply(&sim.resource, &sim.sim, "keysight-e36xx", mute).await?;
        timeout_then_no_stale_reply(&sim.resource, &sim.sim, "keysight-e36xx", slow).await?;
        sim.shutdown().await
    })
    .await?
}

#[tokio::test]
async fn muted_sim_times_out_then_recovers_over_a_pty() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        let (sim, pty, resource) = pty_sim(Family::SiglentSpd3303x)?;
        timeout_then_no_stale_reply(&resource, &sim, "siglent-spd3303x", mute).await?;
        pty.close().await;
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn unplugged_pty_is_a_link_error_and_replugging_reconnects() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        // A stable name, as udev's /dev/serial/by-id links give real ports.
        let dir = tempfile::tempdir()?;
        let link = dir.path().join("ttyUSB0");
        let (sim, pty, _) = pty_sim(Family::RigolDp8xx)?;
        std::os::unix::fs::symlink(pty.path(), &link)?;
        let resource = format!("ASRL{}::INSTR", link.display());
        let mut psu = create(
            "rigol-dp8xx",
            &resource,
            json!({"timeout_ms": 1000, "baud": 115200}),
        )
        .await?;
        call(&mut psu, "set_voltage", json!({"value": 2.0})).await?;

        pty.close().await; // unplug
        let e = call(&mut psu, "measure_voltage", Value::Null)
            .await
            .expect_err("unplugged");
        assert!(matches!(e, DriverError::Link { .. }), "{e}");
        assert_eq!(e.code(), 503);
        // Still gone: reopening fails, clearly.
        std::fs::remove_file(&link)?;
        let e = call(&mut psu, "measure_voltage", Value::Null)
            .await
            .expect_err("still unplugged");
        assert!(matches!(e, DriverError::Link { .. }), "{e}");
        assert!(e.to_string().contains("ttyUSB0"), "{e}");

        // Plug a port back under the same name: the next call reconnects.
        let pty2 = sim.serve_pty()?;
        std::os::unix::fs::symlink(pty2.path(), &link)?;
        let v = call(&mut psu, "measure_voltage", Value::Null).await?;
        assert!(close_to(&v, 0.0), "{v}");
        let idn = call(&mut psu, "identify", Value::Null).await?;
        assert_eq!(idn, json!(sim.idn()));
        psu.shutdown().await;
        pty2.close().await;
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn tcp_link_loss_then_reconnect() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        let sim = TcpSim::start(Family::KeysightE36xx).await?;
        let resource = sim.resource.clone();
        let handle = sim.sim.clone();
        let mut psu = create("keysight-e36xx", &resource, json!({"timeout_ms": 1000})).await?;
        call(&mut psu, "identify", Value::Null).await?;
        sim.shutdown().await?; // the instrument goes away, connections close
        let e = call(&mut psu, "identify", Value::Null)
            .await
            .expect_err("gone");
        assert_eq!(e.code(), 503, "{e}");
        // Back on the same port.
        let addr = resource.trim_start_matches("tcp://").to_string();
        let listener = TcpListener::bind(&addr).await?;
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            handle
                .serve_tcp(listener, async {
                    let _ = rx.await;
                })
                .await
        });
        let idn = call(&mut psu, "identify", Value::Null).await?;
        assert!(idn.as_str().is_some_and(|s| s.contains("E36313A")));
        let _ = stop.send(());
        task.await??;
        Ok(())
    })
    .await?
}

/// Commands -> what `SYST:ERR?` answers next (Keysight formats `+0`).
#[tokio::test]
async fn scpi_error_queue_table() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        let sim = TcpSim::start(Family::KeysightE36xx).await?;
        let mut s = ScpiSession::new(Resource::parse(&sim.resource)?, SessionOptions::default());
        let table: &[(&str, &str)] = &[
            ("VOLT 5", "+0,\"No error\""),
            ("voltage:level:immediate:amplitude 5", "+0,\"No error\""),
            ("SOUR:VOLT 5;CURR 1", "+0,\"No error\""),
            ("VOLT 99", "-222,\"Data out of range\""),
            ("VOLT -1", "-222,\"Data out of range\""),
            ("CURR 11", "-222,\"Data out of range\""),
            ("INST:NSEL 4", "-222,\"Data out of range\""),
            ("FOO", "-113,\"Undefined header\""),
            ("VOLTA 5", "-113,\"Undefined header\""),
            ("*FOO", "-113,\"Undefined header\""),
            ("*RST?", "-113,\"Undefined header\""),
            ("MEAS:VOLT", "-113,\"Undefined header\""),
            ("VOLT", "-109,\"Missing parameter\""),
            ("VOLT abc", "-104,\"Data type error\""),
            ("VOLT 1,2,3", "-108,\"Parameter not allowed\""),
            ("OUTP MAYBE", "-224,\"Illegal parameter value\""),
            ("OUTP ON,(@7)", "-224,\"Illegal parameter value\""),
            ("VOLT::5", "-100,\"Command error\""),
            ("VO$T 5", "-100,\"Command error\""),
            ("VOLT 500mV", "+0,\"No error\""),
        ];
        for (cmd, want) in table {
            s.write(cmd).await?;
            assert_eq!(s.query("SYST:ERR?").await?, *want, "after {cmd:?}");
            assert_eq!(
                s.query("SYST:ERR?").await?,
                "+0,\"No error\"",
                "after {cmd:?}"
            );
        }
        assert_eq!(s.query("VOLT?").await?, "+5.00000000E-01");

        // A command error aborts the rest of the message.
        s.write("VOLT 1;BAD;VOLT 2").await?;
        assert_eq!(s.query("SYST:ERR?").await?, "-113,\"Undefined header\"");
        assert_eq!(s.query("VOLT?").await?, "+1.00000000E+00");

        // *ESR? reports (and clears) the event classes seen so far:
        // command errors (bit 5) and execution errors (bit 4).
        assert_eq!(s.query("*ESR?").await?, "48");
        assert_eq!(s.query("*ESR?").await?, "0");
        // Overflow: 20 entries, the last one -350; later errors are lost.
        for _ in 0..25 {
            s.write("NOPE").await?;
        }
        assert_eq!(s.query("*STB?").await?, "4");
        assert_eq!(s.query("*ESR?").await?, "32");
        let errs = s.errors().await?;
        assert_eq!(errs.len(), 20, "{errs:?}");
        assert!(errs[..19].iter().all(|(c, _)| *c == -113), "{errs:?}");
        assert_eq!(errs[19], (-350, "Queue overflow".to_string()));
        // *CLS empties the queue.
        s.write("BAD;").await?;
        s.write("*CLS").await?;
        assert_eq!(s.query("SYST:ERR?").await?, "+0,\"No error\"");

        // check_errors turns an error entry into DriverError::Instrument.
        let mut checked = ScpiSession::new(
            Resource::parse(&sim.resource)?,
            SessionOptions {
                check_errors: true,
                ..SessionOptions::default()
            },
        );
        checked.write("VOLT 2").await?;
        let e = checked.write("VOLT 99").await.expect_err("out of range");
        assert!(matches!(e, DriverError::Instrument(_)), "{e}");
        assert!(e.to_string().contains("-222"), "{e}");
        assert!(e.to_string().contains("VOLT 99"), "{e}");
        sim.shutdown().await
    })
    .await?
}

#[tokio::test]
async fn rigol_and_siglent_error_answers() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        for (family, cmd, want) in [
            (
                Family::RigolDp8xx,
                ":SOUR3:VOLT 6",
                "-222,\"Data out of range\"",
            ),
            (
                Family::RigolDp8xx,
                ":SOUR4:VOLT 1",
                "-224,\"Illegal parameter value\"",
            ),
            (
                Family::RigolDp8xx,
                ":OUTP CH9,ON",
                "-224,\"Illegal parameter value\"",
            ),
            (
                Family::SiglentSpd3303x,
                "CH1:VOLT 33",
                // The SPD3303X manual's format: code, space, text.
                "-222 Data out of range",
            ),
            (
                Family::SiglentSpd3303x,
                "OUTP? CH1",
                "-113 Undefined header",
            ),
            (Family::SiglentSpd3303x, "OUTP ON", "-109 Missing parameter"),
            (Family::SiglentSpd3303x, "CH1:VOLT 3", "0 No Error"),
        ] {
            let sim = TcpSim::start(family).await?;
            let mut s =
                ScpiSession::new(Resource::parse(&sim.resource)?, SessionOptions::default());
            s.write(cmd).await?;
            assert_eq!(s.query("SYST:ERR?").await?, want, "{family}: {cmd}");
            sim.shutdown().await?;
        }
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn sim_shutdown_closes_connected_clients() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        let sim = TcpSim::start(Family::KeysightE36xx).await?;
        let mut s = ScpiSession::new(Resource::parse(&sim.resource)?, SessionOptions::default());
        s.idn().await?;
        sim.shutdown().await?; // returns only once the client's task ended
        let e = s.idn().await.expect_err("server gone");
        assert_eq!(e.code(), 503, "{e}");
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn registry_rejects_bad_configs_clearly() -> Result<()> {
    let reg = DriverRegistry::with_builtins();
    for name in [
        "scpi",
        "keysight-e36xx",
        "rigol-dp8xx",
        "siglent-spd3303x",
        "mock-psu",
    ] {
        assert!(reg.names().iter().any(|n| n == name), "{name}");
    }
    let cases = [
        ("keysight-e36xx", None, json!({}), "needs a resource"),
        (
            "rigol-dp8xx",
            Some("GPIB0::1::INSTR"),
            json!({}),
            "resource",
        ),
        (
            "rigol-dp8xx",
            Some("tcp://h:1"),
            json!({"model": "DP9000"}),
            "DP832",
        ),
        (
            "scpi",
            Some("tcp://h:1"),
            json!({"timeout_ms": "x"}),
            "timeout_ms",
        ),
        (
            "scpi",
            Some("ASRL/dev/x::INSTR"),
            json!({"parity": "mark"}),
            "parity",
        ),
    ];
    for (driver, resource, opts, why) in cases {
        let cfg = InstrumentConfig {
            id: "x".into(),
            driver: driver.into(),
            resource: resource.map(str::to_string),
            options: options(opts),
        };
        let e = reg
            .create(cfg)
            .await
            .err()
            .ok_or_else(|| anyhow!("{driver} accepted"))?;
        assert_eq!(e.code(), 500, "{e}");
        assert!(e.to_string().contains(why), "{driver}: {e}");
    }
    // Nothing listening: creation succeeds (instruments may be switched on
    // later), the first call is a link error.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let mut psu = create(
        "keysight-e36xx",
        &format!("tcp://127.0.0.1:{port}"),
        json!({}),
    )
    .await?;
    let e = call(&mut psu, "identify", Value::Null)
        .await
        .expect_err("nothing there");
    assert_eq!(e.code(), 503, "{e}");
    Ok(())
}

fn shipped_instruments() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../instruments")
}

async fn exercise_declarative(reg: &DriverRegistry, resource: &str, sim: &SimPsu) -> Result<()> {
    let cfg = InstrumentConfig {
        id: "bench-psu".into(),
        driver: "labmesh-sim-psu".into(),
        resource: Some(resource.to_string()),
        options: Map::new(),
    };
    let mut psu = reg.create(cfg).await?;
    let d = psu.describe();
    assert_eq!(d.driver, "labmesh-sim-psu");
    let sv = d
        .method("set_voltage")
        .ok_or_else(|| anyhow!("no set_voltage"))?;
    assert_eq!(sv.params[0].unit.as_deref(), Some("V"));
    assert_eq!(sv.params[0].max, Some(25.0));
    assert!(d.method("identify").is_some() && d.method("get_state").is_some());

    assert_eq!(
        call(&mut psu, "reset", Value::Null).await?,
        json!({"ok": true})
    );
    call(&mut psu, "set_voltage", json!({"value": 12, "channel": 2})).await?;
    call(&mut psu, "set_current", json!({"value": 0.5, "channel": 2})).await?;
    call(&mut psu, "set_output", json!({"on": true, "channel": 2})).await?;
    let v = call(&mut psu, "measure_voltage", json!({"channel": 2})).await?;
    assert!(close_to(&v, 5.0), "CC into 10 ohm at 0.5 A: {v}");
    let i = call(&mut psu, "measure_current", json!([2])).await?;
    assert!(close_to(&i, 0.5), "{i}");
    let state = psu.poll().await?;
    assert_eq!(state["voltages"], json!([0.0, 5.0, 0.0]), "{state}");
    assert_eq!(state["outputs"], json!([0.0, 1.0, 0.0]), "{state}");
    assert_eq!(state["relay_id"], "bench-psu");

    let shot = call(&mut psu, "screenshot", Value::Null).await?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(shot.as_str().ok_or_else(|| anyhow!("{shot}"))?)?;
    assert_eq!(bytes, sim::psu::screenshot());

    // Range-checked from the file before anything is sent ...
    let e = call(&mut psu, "set_voltage", json!({"value": 26}))
        .await
        .expect_err("max 25");
    assert_eq!(e.code(), 400, "{e}");
    let e = call(&mut psu, "set_voltage", json!({"value": 1, "chanel": 2}))
        .await
        .expect_err("typo");
    assert!(e.to_string().contains("chanel"), "{e}");
    // ... and the instrument's own per-channel limit comes back via SYST:ERR?.
    let e = call(&mut psu, "set_voltage", json!({"value": 7, "channel": 1}))
        .await
        .expect_err("CH1 6 V");
    assert!(matches!(e, DriverError::Instrument(_)), "{e}");
    assert!(e.to_string().contains("-222"), "{e}");
    assert_eq!(sim.error_count(), 0, "the driver read the queue empty");
    let idn = call(&mut psu, "identify", Value::Null).await?;
    assert_eq!(idn, json!(sim.idn()));
    psu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn declarative_driver_drives_the_sim_over_tcp_and_a_pty() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        let mut reg = DriverRegistry::with_builtins();
        let names = reg.load_dir(&shipped_instruments())?;
        assert_eq!(names, ["keysight-34461a", "labmesh-sim-psu"]);
        assert!(reg.contains("labmesh-sim-psu"));
        let tcp = TcpSim::start(Family::KeysightE36xx).await?;
        exercise_declarative(&reg, &tcp.resource, &tcp.sim)
            .await
            .context("over TCP")?;
        tcp.shutdown().await?;
        let (sim, pty, resource) = pty_sim(Family::KeysightE36xx)?;
        exercise_declarative(&reg, &resource, &sim)
            .await
            .context("over a pty")?;
        pty.close().await;
        // Loading the same directory again would shadow the drivers: refused.
        let e = reg
            .load_dir(&shipped_instruments())
            .expect_err("already registered");
        assert!(e.to_string().contains("already registered"), "{e}");
        Ok(())
    })
    .await?
}

#[test]
fn bad_driver_files_are_refused_naming_file_and_key() -> Result<()> {
    const OK_HEAD: &str = "[driver]\nname = \"x\"\n";
    let table: &[(&str, &str)] = &[
        ("[driver]\n", "name"),
        ("[driver]\nname = \"x\"\ncolour = 1\n", "colour"),
        (
            "[driver]\nname = \"x\"\n[[methods]]\nname = \"m\"\nwrite = \"VOLT {v}\"\n",
            "placeholder {v}",
        ),
        (
            "[driver]\nname = \"x\"\n[[methods]]\nname = \"m\"\nquery = \"VOLT?\"\nreply = \"flaot\"\n",
            "flaot",
        ),
        ("[driver]\nname = \"x\"\n[[methods]]\nname = \"m\"\n", "methods[0] (m)"),
        (
            "[driver]\nname = \"x\"\n[[methods]]\nname = \"m\"\nwrite = \"A\"\n[[methods]]\nname = \"m\"\nwrite = \"B\"\n",
            "methods[1] (m)",
        ),
        (
            "[driver]\nname = \"x\"\n[[methods]]\nname = \"m\"\nwrite = \"V {v}\"\nparams = [{name = \"v\", type = \"float\", min = 5, max = 1}]\n",
            "min 5 is above max 1",
        ),
        (
            "[driver]\nname = \"x\"\n[[methods]]\nname = \"m\"\nwrite = \"V {v}\"\nparams = [{name = \"v\", type = \"float\", max = 1, default = 2}]\n",
            "params.v.default",
        ),
        (
            "[driver]\nname = \"x\"\n[[methods]]\nname = \"m\"\nwrite = \"V {v\"\nparams = [{name = \"v\", type = \"float\"}]\n",
            "unclosed",
        ),
        ("[driver]\nname = \"x\"\n[session]\ntimeout_ms = \"soon\"\n", "timeout_ms"),
        ("[driver]\nname = \"x\"\n[[poll]]\nname = \"p\"\nquery = \"X? {a}\"\n", "poll[0]"),
        ("this is not toml", "x.toml"),
    ];
    for (text, why) in table {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("a-fine.toml"), OK_HEAD)?;
        let bad = dir.path().join("x.toml");
        std::fs::write(&bad, text)?;
        let mut reg = DriverRegistry::empty();
        let e = reg.load_dir(dir.path()).expect_err(text);
        let msg = e.to_string();
        assert!(msg.contains("x.toml"), "{text:?}: {msg}");
        assert!(msg.contains(why), "{text:?}: {msg}");
        // All or nothing: the good file was not registered either.
        assert!(reg.names().is_empty(), "{text:?}");
    }
    // Two files, one name.
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("a.toml"), OK_HEAD)?;
    std::fs::write(dir.path().join("b.toml"), OK_HEAD)?;
    let e = DriverRegistry::empty()
        .load_dir(dir.path())
        .expect_err("dup");
    assert!(
        e.to_string().contains("a.toml") && e.to_string().contains("b.toml"),
        "{e}"
    );
    // Not a directory.
    let e = DriverRegistry::empty()
        .load_dir(&dir.path().join("missing"))
        .expect_err("missing");
    assert!(e.to_string().contains("missing"), "{e}");
    Ok(())
}

/// A misbehaving instrument on a real socket: the session reports clear
/// errors, never panics, and the next exchange is back in step.
#[tokio::test]
async fn garbage_from_the_instrument_is_an_error_not_a_panic() -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    tokio::time::timeout(LIMIT, async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (r, mut w) = sock.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let reply: Vec<u8> = match line.as_str() {
                            "LONG?" => vec![b'A'; 4096],
                            "HUGE?" => b"#9999999999\n".to_vec(),
                            "NOTBLOCK?" => b"hello\n".to_vec(),
                            "UTF?" => vec![0xff, 0xfe, b'o', b'k', b'\r', b'\n'],
                            _ => b"ok\n".to_vec(),
                        };
                        if w.write_all(&reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let opts = SessionOptions {
            max_reply: 1024,
            timeout: Duration::from_secs(2),
            ..SessionOptions::default()
        };
        let mut s = ScpiSession::new(Resource::parse(&format!("tcp://{addr}"))?, opts);
        let e = s.query("LONG?").await.expect_err("no terminator, too long");
        assert!(e.to_string().contains("longer than 1024"), "{e}");
        assert_eq!(s.query("*IDN?").await?, "ok");
        let e = s.query_binary("HUGE?").await.expect_err("absurd length");
        assert!(e.to_string().contains("exceeds"), "{e}");
        assert_eq!(s.query("*IDN?").await?, "ok");
        let e = s.query_binary("NOTBLOCK?").await.expect_err("not a block");
        assert!(e.to_string().contains("'#'"), "{e}");
        assert_eq!(s.query("*IDN?").await?, "ok");
        assert_eq!(s.query("UTF?").await?, "\u{fffd}\u{fffd}ok");
        assert_eq!(s.query("*IDN?").await?, "ok");
        server.abort();
        Ok(())
    })
    .await?
}

/// Issue 9: link failures used to be flattened to a string; the
/// `std::io::Error` is now the error's source, and the message still
/// names the resource and the cause.
#[tokio::test]
async fn link_errors_keep_the_io_error_as_source() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        // A port nothing listens on: bind, note the port, close.
        let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        let mut scpi = create(
            "scpi",
            &format!("tcp://{addr}"),
            json!({"raise_errors": true}),
        )
        .await?;
        let e = call(&mut scpi, "write", json!({"cmd": "*RST"}))
            .await
            .expect_err("nothing listens");
        assert_eq!(e.code(), 503, "{e}");
        let io = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .ok_or_else(|| anyhow!("no io::Error source: {e:?}"))?;
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
        assert!(e.to_string().contains(&io.to_string()), "{e}");
        Ok(())
    })
    .await?
}

/// Issue 9: a driver's identity (`describe().identity`, the state's `idn`)
/// stayed unknown until someone called `connect`/`identify`. It is now
/// learned whenever the link opens, whatever opened it.
#[tokio::test]
async fn identity_is_learned_when_the_link_opens_for_any_reason() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        let tcp = TcpSim::start(Family::KeysightE36xx).await?;
        let idn = tcp.sim.idn();

        // scpi: a poll opens the link; no connect, no *IDN? query.
        let mut scpi = create("scpi", &tcp.resource, json!({})).await?;
        assert_eq!(scpi.describe().identity, None);
        let state = scpi.poll().await?;
        assert_eq!(state["idn"], json!(idn), "{state}");
        assert_eq!(state["connected"], json!(true), "{state}");
        assert_eq!(scpi.describe().identity.as_deref(), Some(idn.as_str()));
        // ... and after `close` a poll leaves the link closed.
        call(&mut scpi, "close", Value::Null).await?;
        let state = scpi.poll().await?;
        assert_eq!(state["connected"], json!(false), "{state}");
        assert_eq!(state["idn"], json!(idn), "{state}");
        // scpi: any call opens it too.
        let mut scpi = create("scpi", &tcp.resource, json!({})).await?;
        call(&mut scpi, "write", json!({"cmd": "*CLS"})).await?;
        assert_eq!(scpi.describe().identity.as_deref(), Some(idn.as_str()));

        // A PSU family: a setter, then the state.
        let mut psu = create("keysight-e36xx", &tcp.resource, json!({})).await?;
        call(&mut psu, "set_voltage", json!({"value": 1.0})).await?;
        assert_eq!(psu.describe().identity.as_deref(), Some(idn.as_str()));
        assert_eq!(psu.poll().await?["idn"], json!(idn));

        // A declarative driver: its first poll.
        let mut reg = DriverRegistry::with_builtins();
        reg.load_dir(&shipped_instruments())?;
        let mut decl = reg
            .create(InstrumentConfig {
                id: "decl-1".into(),
                driver: "labmesh-sim-psu".into(),
                resource: Some(tcp.resource.clone()),
                options: Map::new(),
            })
            .await?;
        decl.poll().await?;
        assert_eq!(decl.describe().identity.as_deref(), Some(idn.as_str()));

        // `identify = false` turns the *IDN? on open off.
        let mut quiet = create("scpi", &tcp.resource, json!({"identify": false})).await?;
        call(&mut quiet, "write", json!({"cmd": "*CLS"})).await?;
        assert_eq!(quiet.describe().identity, None);
        tcp.shutdown().await
    })
    .await?
}

/// Issue 9: driver options were never checked, so `timout_ms = 500` did
/// nothing. Every driver declares its options with the registry, which
/// refuses any other key, naming it and listing the known ones.
#[tokio::test]
async fn unknown_driver_options_are_refused_naming_the_key() -> Result<()> {
    tokio::time::timeout(LIMIT, unknown_driver_options()).await?
}

async fn unknown_driver_options() -> Result<()> {
    let mut reg = DriverRegistry::with_builtins();
    reg.load_dir(&shipped_instruments())?;
    for driver in reg.names() {
        let cfg = InstrumentConfig {
            id: "x-1".into(),
            driver: driver.clone(),
            resource: Some("tcp://127.0.0.1:1".into()),
            options: options(json!({"timout_ms": 500})),
        };
        let e = match reg.create(cfg).await {
            Ok(_) => return Err(anyhow!("{driver}: timout_ms accepted")),
            Err(e) => e,
        };
        assert!(
            matches!(&e, DriverError::UnknownOption { key, .. } if key == "timout_ms"),
            "{driver}: {e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("'timout_ms'") && msg.contains(&driver),
            "{msg}"
        );
        let known = reg.options(&driver).unwrap_or_default();
        if driver != "mock-psu" {
            assert!(known.iter().any(|o| o.name == "timeout_ms"), "{driver}");
            assert!(msg.contains("timeout_ms"), "{driver}: {msg}");
        }
        // Every declared option gets past the check (values are the
        // driver's business: give each a valid one where it matters).
        for o in known {
            let value = match o.name {
                "model" => json!(Family::ALL
                    .into_iter()
                    .find(|f| f.driver_name() == driver)
                    .map_or("", |f| f.default_model().model)),
                "parity" | "flow" => json!("none"),
                "data_bits" => json!(8),
                "stop_bits" => json!(1),
                "init" => json!(["*CLS"]),
                "write_termination" | "read_termination" => json!("\n"),
                _ => match o.ty {
                    labmesh_drivers::OptionType::Bool => json!(true),
                    _ => json!(500),
                },
            };
            let cfg = InstrumentConfig {
                id: "x-1".into(),
                driver: driver.clone(),
                resource: Some("tcp://127.0.0.1:1".into()),
                options: options(json!({ o.name: value })),
            };
            if let Err(e) = reg.create(cfg).await {
                return Err(anyhow!("{driver}: option {} refused: {e}", o.name));
            }
        }
    }
    Ok(())
}

/// docs/DRIVERS.md shows every driver's option table as the registry has it.
#[test]
fn drivers_md_lists_every_drivers_options() -> Result<()> {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/DRIVERS.md"))?;
    let mut reg = DriverRegistry::with_builtins();
    reg.load_dir(&shipped_instruments())?;
    for driver in reg.names() {
        let known = reg.options(&driver).unwrap_or_default();
        if known.is_empty() {
            continue;
        }
        let table = labmesh_drivers::options::markdown_table(known);
        assert!(
            docs.contains(&table),
            "docs/DRIVERS.md lacks {driver}'s option table:\n{table}"
        );
    }
    Ok(())
}

/// Regression (issue 17): the E36313A's description gave every channel
/// 25 V, though CH1 is a 6 V output. Each channel's range is in
/// `range_by`, and binding 7 V on channel 1 fails before the instrument is
/// asked.
#[tokio::test]
async fn e36313a_description_gives_each_channel_its_own_range() -> Result<()> {
    // No simulator: describe() and bind() need no link.
    let psu = create(
        "keysight-e36xx",
        "tcp://127.0.0.1:9",
        json!({"model": "E36313A"}),
    )
    .await?;
    let d = psu.describe();
    let sv = d
        .method("set_voltage")
        .ok_or_else(|| anyhow!("no set_voltage"))?;
    let by = sv.params[0]
        .range_by
        .as_ref()
        .ok_or_else(|| anyhow!("no range_by: {:?}", sv.params[0]))?;
    assert_eq!(by.param, "channel");
    let maxes: Vec<(Value, f64)> = by.ranges.iter().map(|r| (r.when.clone(), r.max)).collect();
    assert_eq!(
        maxes,
        vec![(json!(1), 6.0), (json!(2), 25.0), (json!(3), 25.0)]
    );
    assert_eq!(sv.params[0].max, Some(25.0), "the envelope stays");
    let e = d
        .bind("set_voltage", &json!({"value": 7.0, "channel": 1}))
        .expect_err("CH1 is 6 V");
    assert_eq!(e.code(), 400);
    assert!(d
        .bind("set_voltage", &json!({"value": 7.0, "channel": 2}))
        .is_ok());
    let sc = d
        .method("set_current")
        .ok_or_else(|| anyhow!("no set_current"))?;
    let by = sc.params[0]
        .range_by
        .as_ref()
        .ok_or_else(|| anyhow!("{sc:?}"))?;
    assert_eq!(by.ranges[0].max, 10.0);
    Ok(())
}
