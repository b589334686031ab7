//! VXI-11 and HiSLIP links: the client against the simulator's servers over
//! real TCP on 127.0.0.1. Every test is bounded by `LIMIT`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use labmesh_drivers::hislip::HislipLink;
use labmesh_drivers::psu::models::Family;
use labmesh_drivers::sim::{SimConfig, SimPsu};
use labmesh_drivers::vxi11::Vxi11Link;
use labmesh_drivers::{
    BoxInstrument, DriverError, DriverRegistry, InstrumentConfig, Resource, ScpiSession,
    SessionOptions,
};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod common;
use common::Served;

const LIMIT: Duration = Duration::from_secs(20);

async fn bounded<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, f)
        .await
        .map_err(|_| anyhow::anyhow!("test did not finish within {LIMIT:?}"))?
}

/// A simulator serving VXI-11 (portmapper + core channel) on 127.0.0.1.
struct VxiSim {
    sim: SimPsu,
    pm_port: u16,
    core_port: u16,
    served: Served,
}

impl VxiSim {
    async fn start(sim: SimPsu, pm_port: u16, core_port: u16) -> Result<VxiSim> {
        let pm = TcpListener::bind(("127.0.0.1", pm_port)).await?;
        let core = TcpListener::bind(("127.0.0.1", core_port)).await?;
        let (pm_port, core_port) = (pm.local_addr()?.port(), core.local_addr()?.port());
        let s = sim.clone();
        let served =
            Served::spawn(
                move |stopped| async move { s.serve_vxi11(Some(pm), core, stopped).await },
            );
        Ok(VxiSim {
            sim,
            pm_port,
            core_port,
            served,
        })
    }

    async fn keysight() -> Result<VxiSim> {
        VxiSim::start(SimPsu::new(SimConfig::new(Family::KeysightE36xx))?, 0, 0).await
    }

    fn resource(&self) -> String {
        format!("vxi11://127.0.0.1:{}/inst0", self.pm_port)
    }

    async fn shutdown(self) -> Result<()> {
        self.served.shutdown().await
    }
}

fn session(resource: &str, opts: Value) -> Result<ScpiSession> {
    let options: Map<String, Value> = serde_json::from_value(opts)?;
    let cfg = InstrumentConfig {
        id: "dut".into(),
        driver: "scpi".into(),
        resource: Some(resource.into()),
        options,
    };
    Ok(ScpiSession::from_config(&cfg, SessionOptions::default())?)
}

async fn create(driver: &str, resource: &str, opts: Value) -> Result<BoxInstrument> {
    let reg = DriverRegistry::with_builtins();
    let cfg = InstrumentConfig {
        id: format!("{driver}-1"),
        driver: driver.to_string(),
        resource: Some(resource.to_string()),
        options: serde_json::from_value(opts)?,
    };
    Ok(reg.create(cfg).await?)
}

async fn call(inst: &mut BoxInstrument, method: &str, params: Value) -> Result<Value, DriverError> {
    let args = inst.describe().bind(method, &params)?;
    inst.call(method, args).await
}

#[tokio::test]
async fn vxi11_psu_driver_through_the_portmapper() -> Result<()> {
    bounded(async {
        let v = VxiSim::keysight().await?;
        let mut psu = create("keysight-e36xx", &v.resource(), json!({"timeout_ms": 2000})).await?;
        let idn = call(&mut psu, "identify", Value::Null).await?;
        assert_eq!(idn, json!(v.sim.idn()));
        call(&mut psu, "set_voltage", json!({"value": 2.5, "channel": 1})).await?;
        call(&mut psu, "set_output", json!({"on": true})).await?;
        let volts = call(&mut psu, "measure_voltage", json!({})).await?;
        assert!((volts.as_f64().unwrap() - 2.5).abs() < 1e-6, "{volts}");
        // The driver refuses out-of-range values before sending (400).
        let e = call(&mut psu, "set_voltage", json!({"value": 9.0, "channel": 1}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), 400, "{e}");
        drop(psu);
        v.shutdown().await
    })
    .await
}

#[tokio::test]
async fn vxi11_session_queries_blocks_and_pyvisa_style_resources() -> Result<()> {
    bounded(async {
        let v = VxiSim::keysight().await?;
        for resource in [
            v.resource(),
            format!("TCPIP0::127.0.0.1,{}::INSTR", v.core_port),
            format!("TCPIP::127.0.0.1,{}::inst0::INSTR", v.core_port),
            format!(
                "vxi11://127.0.0.1:{}/inst0?core_port={}",
                v.pm_port, v.core_port
            ),
        ] {
            let mut s = session(&resource, json!({}))?;
            assert!(s.resource().is_message_based());
            assert_eq!(s.query("*IDN?").await?, v.sim.idn(), "{resource}");
            s.write("VOLT 1.5").await?;
            let volts: f64 = s.query("VOLT?").await?.parse()?;
            assert!((volts - 1.5).abs() < 1e-9);
            // A definite-length block with \n bytes inside.
            let bmp = s.query_binary("HCOP:SDUM:DATA?").await?;
            assert!(bmp.starts_with(b"BM") && bmp.contains(&b'\n'));
            assert_eq!(s.query("*OPC?").await?, "1");
            s.close().await;
        }
        // Without a read terminator in the reply, END ends it.
        let mut s = session(&v.resource(), json!({"read_termination": "#"}))?;
        assert_eq!(s.query("*IDN?").await?, v.sim.idn());
        // The error queue through the link: SYST:ERR? after the write (500).
        let mut s = session(&v.resource(), json!({"check_errors": true}))?;
        let e = s.write("VOLT 99").await.unwrap_err();
        assert_eq!(e.code(), 500, "{e}");
        assert!(e.to_string().contains("-222"), "{e}");
        v.shutdown().await
    })
    .await
}

#[tokio::test]
async fn vxi11_timeout_is_408_and_no_stale_reply_follows() -> Result<()> {
    bounded(async {
        let v = VxiSim::keysight().await?;
        let mut s = session(&v.resource(), json!({"timeout_ms": 300}))?;
        s.write("VOLT 2").await?;
        v.sim.set_muted(true);
        let e = s.query("*IDN?").await.unwrap_err();
        assert!(matches!(e, DriverError::Timeout(_)), "{e}");
        assert_eq!(e.code(), 408);
        v.sim.set_muted(false);
        // The late *IDN? answer died with the old link.
        let volts: f64 = s.query("VOLT?").await?.parse()?;
        assert!((volts - 2.0).abs() < 1e-9);
        v.shutdown().await
    })
    .await
}

#[tokio::test]
async fn vxi11_device_clear_drops_an_unread_reply() -> Result<()> {
    bounded(async {
        let v = VxiSim::keysight().await?;
        let mut s = session(&v.resource(), json!({}))?;
        s.write("*IDN?").await?; // a reply nobody reads
        s.clear().await?;
        s.write("VOLT 3").await?;
        let volts: f64 = s.query("VOLT?").await?.parse()?;
        assert!((volts - 3.0).abs() < 1e-9);
        v.shutdown().await
    })
    .await
}

#[tokio::test]
async fn vxi11_link_loss_is_503_then_reconnect_replays_init() -> Result<()> {
    bounded(async {
        let v = VxiSim::keysight().await?;
        let (sim, pm, core) = (v.sim.clone(), v.pm_port, v.core_port);
        let resource = v.resource();
        let mut s = session(&resource, json!({"init": ["VOLT 1.25"]}))?;
        assert_eq!(s.query("VOLT?").await?.parse::<f64>()?, 1.25);
        sim.execute("VOLT 4");
        v.shutdown().await?; // the server closes every connection
        let e = s.query("VOLT?").await.unwrap_err();
        assert_eq!(e.code(), 503, "{e}");
        assert!(!s.is_connected());
        // Back on the same ports: the next call reconnects and runs init again.
        let v = VxiSim::start(sim, pm, core).await?;
        assert_eq!(s.query("VOLT?").await?.parse::<f64>()?, 1.25);
        // Nothing listening at all: 503 naming the portmapper.
        v.shutdown().await?;
        let mut s = session(&resource, json!({"connect_timeout_ms": 1000}))?;
        let e = s.query("*IDN?").await.unwrap_err();
        assert_eq!(e.code(), 503, "{e}");
        assert!(e.to_string().contains("portmapper"), "{e}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn vxi11_lock_is_exclusive_between_links() -> Result<()> {
    bounded(async {
        let v = VxiSim::keysight().await?;
        let t = Duration::from_millis(500);
        let mut a = Vxi11Link::connect("127.0.0.1", v.pm_port, None, "inst0", t).await?;
        let mut b = Vxi11Link::connect("127.0.0.1", v.pm_port, None, "inst0", t).await?;
        assert_eq!(a.max_recv_size(), 16 * 1024);
        a.lock(t).await?;
        // b does not wait for the lock (no WAITLOCK on writes): 409 at once.
        let e = b.write(b"VOLT 1\n", t).await.unwrap_err();
        assert_eq!(e.code(), 409, "{e}");
        let e = b.lock(Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(e.code(), 409, "{e}");
        a.write(b"*IDN?\n", t).await?;
        let chunk = a.read(4096, None, t).await?;
        assert_eq!(chunk.data, format!("{}\n", v.sim.idn()).into_bytes());
        assert_eq!(chunk.reason, labmesh_drivers::vxi11::REASON_END);
        a.unlock(t).await?;
        b.write(b"VOLT 1\n", t).await?;
        // Unlocking without the lock is error 12.
        let e = b.unlock(t).await.unwrap_err();
        assert!(e.to_string().contains("no lock held"), "{e}");
        // b locks; a's closed connection would release, b's explicit close does.
        b.lock(t).await?;
        b.close(t).await;
        a.lock(t).await?;
        a.close(t).await;
        v.shutdown().await
    })
    .await
}

#[tokio::test]
async fn vxi11_reads_in_chunks_and_stops_at_the_term_char() -> Result<()> {
    bounded(async {
        let v = VxiSim::keysight().await?;
        let t = Duration::from_millis(500);
        let mut a = Vxi11Link::connect("127.0.0.1", v.pm_port, None, "inst0", t).await?;
        a.write(b"*IDN?;*IDN?\n", t).await?;
        let idn = v.sim.idn();
        let first = a.read(4, None, t).await?;
        assert_eq!(first.data, idn.as_bytes()[..4].to_vec());
        assert_eq!(first.reason, labmesh_drivers::vxi11::REASON_REQCNT);
        let rest = a.read(4096, Some(b';'), t).await?;
        assert_eq!(rest.data, format!("{};", &idn[4..]).into_bytes());
        assert_eq!(rest.reason, labmesh_drivers::vxi11::REASON_CHR);
        // Nothing to read: the device's own I/O timeout (error 15) is a 408.
        let last = a.read(4096, None, t).await?;
        assert_ne!(last.reason & labmesh_drivers::vxi11::REASON_END, 0);
        let e = a
            .read(4096, None, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(e.code(), 408, "{e}");
        a.close(t).await;
        v.shutdown().await
    })
    .await
}

#[tokio::test]
async fn vxi11_refusals_are_clear() -> Result<()> {
    bounded(async {
        let v = VxiSim::keysight().await?;
        let t = Duration::from_millis(500);
        let e = Vxi11Link::connect("127.0.0.1", v.pm_port, None, "gpib0,5", t)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("invalid address"), "{e}");
        // The portmapper is not a core channel: the RPC layer says so.
        let e = Vxi11Link::connect("127.0.0.1", v.pm_port, Some(v.pm_port), "inst0", t)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("program unavailable"), "{e}");
        // The firmware driver needs a byte stream.
        let e = create("firmware", &v.resource(), json!({}))
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("byte stream"), "{e}");
        let r = Resource::parse("TCPIP::127.0.0.1::INSTR")?;
        assert_eq!(r.to_string(), "vxi11://127.0.0.1:111/inst0");
        v.shutdown().await
    })
    .await
}

/// A simulator serving HiSLIP on 127.0.0.1.
struct HislipSim {
    sim: SimPsu,
    port: u16,
    served: Served,
}

impl HislipSim {
    async fn start(sim: SimPsu, port: u16) -> Result<HislipSim> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let s = sim.clone();
        let served =
            Served::spawn(move |stopped| async move { s.serve_hislip(listener, stopped).await });
        Ok(HislipSim { sim, port, served })
    }

    async fn keysight() -> Result<HislipSim> {
        HislipSim::start(SimPsu::new(SimConfig::new(Family::KeysightE36xx))?, 0).await
    }

    fn resource(&self) -> String {
        format!("TCPIP::127.0.0.1::hislip0,{}::INSTR", self.port)
    }

    async fn shutdown(self) -> Result<()> {
        self.served.shutdown().await
    }
}

#[tokio::test]
async fn hislip_psu_driver_and_session() -> Result<()> {
    bounded(async {
        let h = HislipSim::keysight().await?;
        let mut psu = create("keysight-e36xx", &h.resource(), json!({})).await?;
        assert_eq!(
            call(&mut psu, "identify", Value::Null).await?,
            json!(h.sim.idn())
        );
        call(&mut psu, "set_voltage", json!({"value": 2.5})).await?;
        call(&mut psu, "set_output", json!({"on": true})).await?;
        let volts = call(&mut psu, "measure_voltage", json!({})).await?;
        assert!((volts.as_f64().unwrap() - 2.5).abs() < 1e-6, "{volts}");
        drop(psu);
        for resource in [
            h.resource(),
            format!("hislip://127.0.0.1:{}/hislip0", h.port),
        ] {
            let mut s = session(&resource, json!({"check_errors": true}))?;
            assert!(s.resource().is_message_based());
            assert_eq!(s.query("*IDN?").await?, h.sim.idn());
            s.write("VOLT 1.5").await?;
            assert_eq!(s.query("VOLT?").await?.parse::<f64>()?, 1.5);
            let e = s.write("VOLT 99").await.unwrap_err();
            assert_eq!(e.code(), 500, "{e}");
            let bmp = s.query_binary("HCOP:SDUM:DATA?").await?;
            assert!(bmp.starts_with(b"BM") && bmp.contains(&b'\n'));
            assert_eq!(s.query("*OPC?").await?, "1");
            s.close().await;
        }
        // Without a read terminator in the reply, DataEnd ends it.
        let mut s = session(&h.resource(), json!({"read_termination": "#"}))?;
        assert_eq!(s.query("*IDN?").await?, h.sim.idn());
        h.shutdown().await
    })
    .await
}

#[tokio::test]
async fn hislip_handshake_sizes_status_and_clear() -> Result<()> {
    bounded(async {
        let h = HislipSim::keysight().await?;
        let t = Duration::from_millis(500);
        let mut a = HislipLink::connect("127.0.0.1", h.port, "hislip0", t).await?;
        let b = HislipLink::connect("127.0.0.1", h.port, "hislip0", t).await?;
        assert_ne!(a.session_id(), b.session_id());
        assert_eq!(a.server_max_message(), 16 * 1024);
        assert!(!a.server_prefers_overlap());
        // A message bigger than nothing: fragments are joined at DataEnd.
        a.write(b"*IDN?\n", t).await?;
        let (data, end) = a.read(t).await?;
        assert!(end);
        assert_eq!(data, format!("{}\n", h.sim.idn()).into_bytes());
        // An error in the queue shows in the status byte (bit 2).
        a.write(b"BOGUS\n", t).await?;
        assert_eq!(a.read_stb(t).await? & 0x04, 0x04);
        // An unread answer is dropped by device clear; ids start again.
        a.write(b"*IDN?\n", t).await?;
        a.clear(t).await?;
        a.write(b"*OPC?\n", t).await?;
        assert_eq!(a.read(t).await?, (b"1\n".to_vec(), true));
        // Nothing asked, nothing comes: a timeout (408).
        let e = a.read(Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(e.code(), 408, "{e}");
        drop(b);
        // An unknown sub-address is refused with FatalError (503).
        let e = HislipLink::connect("127.0.0.1", h.port, "inst0", t)
            .await
            .unwrap_err();
        assert_eq!(e.code(), 503, "{e}");
        assert!(e.to_string().contains("unknown sub-address"), "{e}");
        h.shutdown().await
    })
    .await
}

#[tokio::test]
async fn hislip_lock_request_and_release() -> Result<()> {
    bounded(async {
        let h = HislipSim::keysight().await?;
        let t = Duration::from_millis(500);
        let mut a = HislipLink::connect("127.0.0.1", h.port, "hislip0", t).await?;
        let mut b = HislipLink::connect("127.0.0.1", h.port, "hislip0", t).await?;
        a.lock(t).await?;
        let e = b.lock(Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(e.code(), 409, "{e}");
        // a still works while holding the lock.
        a.write(b"VOLT 2\n", t).await?;
        a.unlock(t).await?;
        let e = a.unlock(t).await.unwrap_err();
        assert!(e.to_string().contains("no lock held"), "{e}");
        b.lock(t).await?;
        // a closing its session does not release b's lock; b's close does.
        a.close(t).await;
        let mut c = HislipLink::connect("127.0.0.1", h.port, "hislip0", t).await?;
        assert_eq!(
            c.lock(Duration::from_millis(50)).await.unwrap_err().code(),
            409
        );
        b.close(t).await;
        drop(b);
        c.lock(t).await?;
        h.shutdown().await
    })
    .await
}

#[tokio::test]
async fn hislip_timeout_no_stale_reply_link_loss_and_reconnect() -> Result<()> {
    bounded(async {
        let h = HislipSim::keysight().await?;
        let (sim, port) = (h.sim.clone(), h.port);
        let mut s = session(
            &h.resource(),
            json!({"timeout_ms": 300, "init": ["VOLT 1.25"]}),
        )?;
        assert_eq!(s.query("VOLT?").await?.parse::<f64>()?, 1.25);
        sim.set_muted(true);
        let e = s.query("*IDN?").await.unwrap_err();
        assert_eq!(e.code(), 408, "{e}");
        sim.set_muted(false);
        sim.execute("VOLT 3");
        // A new session (init runs again) and no stale *IDN? answer.
        assert_eq!(s.query("VOLT?").await?.parse::<f64>()?, 1.25);
        s.write("*IDN?").await?;
        s.clear().await?;
        assert_eq!(s.query("*OPC?").await?, "1");
        h.shutdown().await?;
        let e = s.query("VOLT?").await.unwrap_err();
        assert_eq!(e.code(), 503, "{e}");
        sim.execute("VOLT 4");
        let h = HislipSim::start(sim, port).await?;
        assert_eq!(s.query("VOLT?").await?.parse::<f64>()?, 1.25);
        h.shutdown().await
    })
    .await
}

#[tokio::test]
async fn vxi11_long_writes_are_fragmented_and_garbage_does_not_stop_the_server() -> Result<()> {
    use labmesh_drivers::vxi11::{read_record, write_record};
    use tokio::io::AsyncWriteExt;
    bounded(async {
        let v = VxiSim::keysight().await?;
        // 40 000 bytes: three device_write fragments of at most 16 KiB.
        let mut s = session(&v.resource(), json!({}))?;
        let long = format!("{}*IDN?", "*CLS;".repeat(8000));
        assert_eq!(s.query(&long).await?, v.sim.idn());
        // Truncated arguments: GARBAGE_ARGS (accept_stat 4), connection kept.
        let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", v.core_port)).await?;
        let call = labmesh_drivers::vxi11::call_message(9, 0x0607AF, 1, 11, &[0, 0, 0, 1]);
        write_record(&mut raw, &call).await?;
        let reply = read_record(&mut raw, 4096).await?;
        assert_eq!(
            labmesh_drivers::vxi11::parse_reply(&reply, 9).unwrap_err(),
            "RPC garbage arguments"
        );
        // Not RPC at all: the server hangs up on that connection only.
        raw.write_all(&[0x80, 0, 0, 4, 1, 2, 3, 4]).await?;
        assert!(read_record(&mut raw, 4096).await.is_err());
        let mut pm = tokio::net::TcpStream::connect(("127.0.0.1", v.pm_port)).await?;
        pm.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
        assert!(read_record(&mut pm, 4096).await.is_err());
        assert_eq!(s.query("*IDN?").await?, v.sim.idn());
        v.shutdown().await
    })
    .await
}

#[tokio::test]
async fn hislip_garbage_gets_fatal_error_and_the_server_keeps_serving() -> Result<()> {
    use labmesh_drivers::hislip::{msg, read_message, write_message};
    use tokio::io::AsyncWriteExt;
    bounded(async {
        let h = HislipSim::keysight().await?;
        let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await?;
        raw.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
        let m = read_message(&mut raw, 4096).await?;
        assert_eq!((m.header.msg_type, m.header.control), (msg::FATAL_ERROR, 1));
        // AsyncInitialize for a session that does not exist.
        let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await?;
        write_message(&mut raw, msg::ASYNC_INITIALIZE, 0, 0xBEEF, &[]).await?;
        let m = read_message(&mut raw, 4096).await?;
        assert_eq!((m.header.msg_type, m.header.control), (msg::FATAL_ERROR, 3));
        // 40 000 bytes: Data, Data, DataEnd (16 KiB maximum), joined by the server.
        let mut s = session(&h.resource(), json!({}))?;
        let long = format!("{}*IDN?", "*CLS;".repeat(8000));
        assert_eq!(s.query(&long).await?, h.sim.idn());
        h.shutdown().await
    })
    .await
}

/// A simulated Prologix adapter over TCP with instruments at `addrs`.
async fn prologix(
    addrs: &[(u8, Family, &str)],
) -> Result<(
    Vec<SimPsu>,
    String,
    oneshot::Sender<()>,
    JoinHandle<std::io::Result<()>>,
)> {
    use labmesh_drivers::sim::prologix::GpibBus;
    let mut sims = Vec::new();
    let mut bus = Vec::new();
    for (addr, family, serial) in addrs {
        let sim = SimPsu::new(SimConfig {
            serial: serial.to_string(),
            ..SimConfig::new(*family)
        })?;
        sims.push(sim.clone());
        bus.push((*addr, sim));
    }
    let bus = GpibBus::new(bus);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let adapter = format!("tcp://{}", listener.local_addr()?);
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        bus.serve_tcp(listener, async {
            let _ = rx.await;
        })
        .await
    });
    Ok((sims, adapter, stop, task))
}

#[tokio::test]
async fn gpib_instruments_share_one_prologix_adapter() -> Result<()> {
    bounded(async {
        let (sims, adapter, stop, task) = prologix(&[
            (5, Family::KeysightE36xx, "GPIB-5"),
            (7, Family::RigolDp8xx, "GPIB-7"),
        ])
        .await?;
        let mut tasks = Vec::new();
        for (i, addr) in [5u8, 7].into_iter().enumerate() {
            let mut s = session(
                &format!("GPIB0::{addr}::INSTR"),
                json!({"adapter": adapter, "check_errors": true}),
            )?;
            let idn = sims[i].idn();
            tasks.push(tokio::spawn(async move {
                for n in 0..25 {
                    let v = f64::from(n % 5) + 0.5;
                    s.write(&format!("VOLT {v}")).await?;
                    assert_eq!(s.query("*IDN?").await?, idn);
                    assert_eq!(s.query("VOLT?").await?.parse::<f64>()?, v);
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        // The PSU driver through the same adapter, with the adapter an option.
        let mut psu = create(
            "keysight-e36xx",
            "GPIB::5::INSTR",
            json!({"adapter": adapter}),
        )
        .await?;
        call(&mut psu, "set_voltage", json!({"value": 1.25})).await?;
        assert_eq!(sims[0].execute("VOLT?").unwrap(), b"+1.25000000E+00");
        let _ = stop.send(());
        task.await??;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn gpib_timeout_on_one_instrument_does_not_leak_into_another() -> Result<()> {
    bounded(async {
        let (sims, adapter, stop, task) = prologix(&[
            (5, Family::KeysightE36xx, "GPIB-5"),
            (7, Family::KeysightE36xx, "GPIB-7"),
        ])
        .await?;
        let mut five = session(
            "GPIB0::5::INSTR",
            json!({"adapter": adapter, "timeout_ms": 300}),
        )?;
        let mut seven = session(
            "GPIB0::7::INSTR",
            json!({"adapter": adapter, "timeout_ms": 8000}),
        )?;
        five.write("VOLT 2").await?;
        assert_eq!(five.query("*OPC?").await?, "1"); // VOLT 2 has run
        sims[0].set_muted(true);
        let e = five.query("*IDN?").await.unwrap_err();
        assert_eq!(e.code(), 408, "{e}");
        // The adapter is released at once; seven waits out the adapter's
        // read timeout and gets its own answer, not five's.
        assert_eq!(seven.query("*IDN?").await?, sims[1].idn());
        sims[0].set_muted(false);
        // five's late *IDN? answer is cleared (++clr) before its next query.
        assert_eq!(five.query("VOLT?").await?.parse::<f64>()?, 2.0);
        // `+` (and CR, LF, ESC) in data are escaped for the adapter.
        five.write("VOLT +0.75").await?;
        assert_eq!(five.query("VOLT?").await?.parse::<f64>()?, 0.75);
        five.clear().await?;
        assert_eq!(five.query("*OPC?").await?, "1");
        // An answer that is not the block asked for: 500, and the adapter
        // is let go at once (seven is not left waiting for five's next call).
        let e = five.query_binary("*IDN?").await.unwrap_err();
        assert_eq!(e.code(), 500, "{e}");
        assert_eq!(seven.query("*OPC?").await?, "1");
        assert_eq!(five.query("*OPC?").await?, "1");
        // No adapter named: a configuration error.
        let e = session("GPIB0::9::INSTR", json!({})).unwrap_err();
        assert!(e.to_string().contains("needs option 'adapter'"), "{e}");
        let _ = stop.send(());
        task.await??;
        Ok(())
    })
    .await
}
