//! Reconnect after unplug / power cycle for the links not covered in
//! links.rs (VXI-11 and HiSLIP are there): a Prologix GPIB adapter whose
//! server goes away and comes back on the same port, and a USBTMC device
//! unplugged and plugged back in. The call that finds the link gone is
//! 503; once the instrument is back the next call reconnects and the
//! init sequence runs again. Every test bounded by `LIMIT`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use labmesh_drivers::psu::models::Family;
use labmesh_drivers::sim::prologix::GpibBus;
use labmesh_drivers::sim::usbtmc::{SimUsbtmc, SimUsbtmcControl};
use labmesh_drivers::sim::{SimConfig, SimPsu};
use labmesh_drivers::transport::Link;
use labmesh_drivers::usbtmc::UsbtmcLink;
use labmesh_drivers::{
    DriverError, InstrumentConfig, LinkOpener, Resource, ScpiSession, SessionOptions,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const LIMIT: Duration = Duration::from_secs(20);

async fn bounded<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, f)
        .await
        .map_err(|_| anyhow::anyhow!("test did not finish within {LIMIT:?}"))?
}

async fn volts(s: &mut ScpiSession) -> Result<f64, DriverError> {
    s.query("VOLT?")
        .await
        .map(|v| v.trim().parse::<f64>().unwrap_or(f64::NAN))
}

async fn adapter(
    bus: GpibBus,
    port: u16,
) -> Result<(u16, oneshot::Sender<()>, JoinHandle<std::io::Result<()>>)> {
    let l = TcpListener::bind(("127.0.0.1", port)).await?;
    let port = l.local_addr()?.port();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        bus.serve_tcp(l, async {
            let _ = rx.await;
        })
        .await
    });
    Ok((port, stop, task))
}

#[tokio::test]
async fn prologix_adapter_lost_is_503_then_reconnect_sets_up_and_replays_init() -> Result<()> {
    bounded(async {
        let sim = SimPsu::new(SimConfig::new(Family::KeysightE36xx))?;
        let bus = GpibBus::new([(5, sim.clone())]);
        let (port, stop, task) = adapter(bus.clone(), 0).await?;
        let cfg = InstrumentConfig {
            id: "gpib-psu".into(),
            driver: "scpi".into(),
            resource: Some("GPIB0::5::INSTR".into()),
            options: serde_json::from_value(serde_json::json!({
                "adapter": format!("tcp://127.0.0.1:{port}"),
                "init": ["VOLT 1.25"],
                "timeout_ms": 1000,
                "connect_timeout_ms": 1000,
            }))?,
        };
        let mut s = ScpiSession::from_config(&cfg, SessionOptions::default())?;
        assert_eq!(volts(&mut s).await?, 1.25);
        sim.execute("VOLT 4");
        // The adapter goes away (power cycle): every connection closes.
        let _ = stop.send(());
        task.await??;
        let e = s.query("VOLT?").await.unwrap_err();
        assert_eq!(e.code(), 503, "{e}");
        // Still gone: 503 again, at once (connection refused).
        let e = s.query("VOLT?").await.unwrap_err();
        assert_eq!(e.code(), 503, "{e}");
        // Back on the same port: the adapter is set up again and init replayed.
        let (_, stop, task) = adapter(bus, port).await?;
        assert_eq!(volts(&mut s).await?, 1.25);
        assert_eq!(s.query("*IDN?").await?, sim.idn());
        let _ = stop.send(());
        task.await??;
        Ok(())
    })
    .await
}

/// A USB bus with one simulated USBTMC device that can be unplugged and
/// plugged back in; each open is a fresh device (as after a replug).
struct UsbBus {
    sim: SimPsu,
    plugged: AtomicBool,
    current: Mutex<Option<Arc<SimUsbtmcControl>>>,
    opens: AtomicUsize,
}

impl UsbBus {
    fn opener(bus: &Arc<UsbBus>) -> LinkOpener {
        let bus = bus.clone();
        Arc::new(move || {
            let bus = bus.clone();
            Box::pin(async move {
                if !bus.plugged.load(Ordering::SeqCst) {
                    return Err(DriverError::link_lost(
                        "USB0::0x2A8D::0x1202::SIM000001::INSTR",
                        std::io::ErrorKind::NotFound,
                        "no such USB device plugged in",
                    ));
                }
                bus.opens.fetch_add(1, Ordering::SeqCst);
                let dev = SimUsbtmc::new(bus.sim.clone(), 512);
                *bus.current.lock().unwrap() = Some(dev.control());
                let l =
                    UsbtmcLink::open(Box::new(dev), "sim-usbtmc", Duration::from_secs(1)).await?;
                Ok(Link::Usbtmc(Box::new(l)))
            })
        })
    }

    fn unplug(&self) {
        self.plugged.store(false, Ordering::SeqCst);
        if let Some(c) = self.current.lock().unwrap().as_ref() {
            c.set_unplugged(true);
        }
    }
}

#[tokio::test]
async fn usbtmc_unplug_is_503_then_replug_reconnects_and_replays_init() -> Result<()> {
    bounded(async {
        let bus = Arc::new(UsbBus {
            sim: SimPsu::new(SimConfig::new(Family::KeysightE36xx))?,
            plugged: AtomicBool::new(true),
            current: Mutex::new(None),
            opens: AtomicUsize::new(0),
        });
        let opts = SessionOptions {
            init: vec!["VOLT 1.25".into()],
            timeout: Duration::from_millis(500),
            ..SessionOptions::default()
        };
        let resource = Resource::parse("USB0::0x2A8D::0x1202::SIM000001::INSTR")?;
        let mut s = ScpiSession::with_opener(resource, opts, UsbBus::opener(&bus));
        assert_eq!(volts(&mut s).await?, 1.25);
        bus.sim.execute("VOLT 4");
        bus.unplug();
        let e = s.query("VOLT?").await.unwrap_err();
        assert_eq!(e.code(), 503, "{e}");
        let e = s.query("VOLT?").await.unwrap_err();
        assert_eq!(e.code(), 503, "{e}");
        assert!(e.to_string().contains("no such USB device"), "{e}");
        bus.plugged.store(true, Ordering::SeqCst);
        assert_eq!(volts(&mut s).await?, 1.25);
        assert_eq!(bus.opens.load(Ordering::SeqCst), 2);
        // A timeout does not reopen a USBTMC link: it aborts and clears.
        bus.sim.set_muted(true);
        let e = s.query("*IDN?").await.unwrap_err();
        assert_eq!(e.code(), 408, "{e}");
        bus.sim.set_muted(false);
        assert_eq!(s.query("*OPC?").await?, "1");
        assert_eq!(bus.opens.load(Ordering::SeqCst), 2);
        let c = bus.current.lock().unwrap().clone().unwrap();
        assert_eq!(c.aborts_in(), 1);
        Ok(())
    })
    .await
}
