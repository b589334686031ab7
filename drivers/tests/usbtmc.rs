//! USBTMC: the link's framing and state machine against the simulator's
//! USBTMC endpoint (`sim::usbtmc::SimUsbtmc`), the kernel-driver fallback's
//! plain read/write against a real pseudo-terminal, and (with the
//! `usb-hardware` feature) a real device. Every test is bounded by `LIMIT`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use labmesh_drivers::psu::models::Family;
use labmesh_drivers::sim::usbtmc::{SimUsbtmc, SimUsbtmcControl};
use labmesh_drivers::sim::{SimConfig, SimPsu};
use labmesh_drivers::transport::Link;
use labmesh_drivers::usbtmc::{
    self, BulkEndpoint, DevUsbtmc, PipeError, Recipient, UsbtmcLink, UsbtmcPipes,
};
use labmesh_drivers::{Resource, ScpiSession, SessionOptions};

const LIMIT: Duration = Duration::from_secs(20);
const T: Duration = Duration::from_secs(2);

async fn bounded<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, f)
        .await
        .map_err(|_| anyhow::anyhow!("test did not finish within {LIMIT:?}"))?
}

fn psu() -> SimPsu {
    SimPsu::new(SimConfig::new(Family::KeysightE36xx)).unwrap()
}

async fn link(sim: &SimPsu, mps: usize) -> Result<(UsbtmcLink, Arc<SimUsbtmcControl>)> {
    let dev = SimUsbtmc::new(sim.clone(), mps);
    let control = dev.control();
    let l = UsbtmcLink::open(Box::new(dev), "sim-usbtmc", T).await?;
    Ok((l, control))
}

/// Write `cmd` and read the whole reply (until EOM).
async fn query(l: &mut UsbtmcLink, cmd: &str) -> Result<Vec<u8>, labmesh_drivers::DriverError> {
    l.write(format!("{cmd}\n").as_bytes(), T).await?;
    let mut out = Vec::new();
    loop {
        let (data, eom) = l.read(1 << 20, T).await?;
        out.extend_from_slice(&data);
        if eom {
            return Ok(out);
        }
    }
}

async fn volts(l: &mut UsbtmcLink) -> Result<f64> {
    Ok(String::from_utf8(query(l, "VOLT?").await?)?
        .trim()
        .parse()?)
}

#[tokio::test]
async fn usbtmc_query_capabilities_and_open_clears() -> Result<()> {
    bounded(async {
        let sim = psu();
        let (mut l, control) = link(&sim, 64).await?;
        // Opening clears the device (so no old reply is taken for ours).
        assert_eq!(control.clears(), 1);
        let caps = l.capabilities();
        assert_eq!(caps.bcd_usbtmc, 0x0100);
        assert!(caps.term_char && caps.bcd_usb488 == 0x0100);
        let idn = query(&mut l, "*IDN?").await?;
        assert_eq!(String::from_utf8(idn)?.trim_end(), sim.idn());
        // One DEV_DEP_MSG_OUT (tag 1) and one request (tag 2).
        assert_eq!(control.last_tag(), 2);
        assert_eq!(l.next_bulk_tag(), 3);
        l.write(b"VOLT 2.5\n", T).await?;
        assert_eq!(volts(&mut l).await?, 2.5);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn usbtmc_btag_wraps_from_255_to_1() -> Result<()> {
    bounded(async {
        let sim = psu();
        let (mut l, control) = link(&sim, 64).await?;
        l.set_next_tag(253);
        let mut seen = Vec::new();
        for v in ["1.5", "2.5", "3.5"] {
            l.write(format!("VOLT {v}\n").as_bytes(), T).await?;
            seen.push(control.last_tag());
            let r = query(&mut l, "VOLT?").await?;
            seen.push(control.last_tag());
            assert_eq!(
                String::from_utf8(r)?.trim().parse::<f64>()?,
                v.parse::<f64>()?
            );
        }
        // write, query-write, query-request per round: 253 254 255 | 1 2 3 | 4 5 6
        assert_eq!(seen, [253, 255, 1, 3, 4, 6]);
        assert_eq!(l.next_bulk_tag(), 7);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn usbtmc_reply_spans_transfers_packets_and_split_headers() -> Result<()> {
    bounded(async {
        let sim = psu();
        let want = sim.execute("HCOP:SDUM:DATA?").unwrap();
        // 8-byte packets: the 12-byte header itself spans two packets;
        // the host reads one packet at a time; the device sends at most
        // 10 data bytes per DEV_DEP_MSG_IN, so EOM comes many transfers on.
        let (mut l, control) = link(&sim, 8).await?;
        control.set_max_transfer(10);
        l.set_read_len(8);
        let before = control.requests();
        let got = query(&mut l, "HCOP:SDUM:DATA?").await?;
        assert_eq!(&got[..want.len()], &want[..]);
        assert_eq!(&got[want.len()..], b"\n");
        let transfers = control.requests() - before;
        assert_eq!(
            transfers,
            got.len().div_ceil(10),
            "one request per transfer"
        );
        // The host asking for less than the device has: EOM clear until the end.
        control.set_max_transfer(0);
        l.set_transfer_size(5);
        l.write(b"*IDN?\n", T).await?;
        let (first, eom) = l.read(1 << 20, T).await?;
        assert_eq!((first.len(), eom), (5, false));
        // Exact multiples of the packet size end with a zero-length packet,
        // which the next read skips: 12 + 4 = 16 bytes = two 8-byte packets.
        l.set_transfer_size(4);
        let mut rest = first;
        loop {
            let (d, eom) = l.read(1 << 20, T).await?;
            rest.extend_from_slice(&d);
            if eom {
                break;
            }
        }
        assert_eq!(String::from_utf8(rest)?.trim_end(), sim.idn());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn usbtmc_scpi_session_over_the_link_blocks_and_unplug_is_503() -> Result<()> {
    bounded(async {
        let sim = psu();
        let dev = SimUsbtmc::new(sim.clone(), 64);
        let control = dev.control();
        control.set_max_transfer(100);
        let l = UsbtmcLink::open(Box::new(dev), "sim-usbtmc", T).await?;
        let resource = Resource::parse("USB0::0x2A8D::0x1202::SIM000001::INSTR")?;
        let opts = SessionOptions {
            init: vec!["VOLT 1.25".into()],
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            ..SessionOptions::default()
        };
        let mut s = ScpiSession::new(resource, opts);
        s.attach(Link::Usbtmc(Box::new(l))).await?;
        assert_eq!(s.query("VOLT?").await?.parse::<f64>()?, 1.25);
        let block = s.query_binary("HCOP:SDUM:DATA?").await?;
        assert_eq!(
            labmesh_drivers::block::encode(&block),
            sim.execute("HCOP:SDUM:DATA?").unwrap()
        );
        assert_eq!(s.query("*OPC?").await?, "1");
        // Device clear through the session is INITIATE_CLEAR.
        let clears = control.clears();
        s.clear().await?;
        assert_eq!(control.clears(), clears + 1);
        // Unplugged: the call is 503, and reopening finds no such device (503).
        control.set_unplugged(true);
        let e = s.query("VOLT?").await.unwrap_err();
        assert_eq!(e.code(), 503, "{e}");
        assert!(!s.is_connected());
        let e = s.query("VOLT?").await.unwrap_err();
        assert_eq!(e.code(), 503, "{e}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn usbtmc_mismatched_btag_is_an_error_and_a_clear_recovers() -> Result<()> {
    bounded(async {
        let sim = psu();
        let (mut l, control) = link(&sim, 64).await?;
        control.wrong_tag_once();
        let e = query(&mut l, "*IDN?").await.unwrap_err();
        assert_eq!(e.code(), 500, "{e}");
        assert!(e.to_string().contains("bTag"), "{e}");
        assert!(l.needs_clear());
        let clears = control.clears();
        // The next exchange clears first; no part of the old reply leaks.
        assert_eq!(query(&mut l, "*OPC?").await?, b"1\n".to_vec());
        assert_eq!(control.clears(), clears + 1);
        assert!(!l.needs_clear());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn usbtmc_timeout_aborts_bulk_in_and_no_stale_reply_follows() -> Result<()> {
    bounded(async {
        let sim = psu();
        let (mut l, control) = link(&sim, 64).await?;
        sim.set_muted(true);
        l.write(b"*IDN?\n", T).await?;
        let e = l.read(1024, Duration::from_millis(200)).await.unwrap_err();
        assert_eq!(e.code(), 408, "{e}");
        assert_eq!(
            control.aborts_in(),
            1,
            "INITIATE_ABORT_BULK_IN after the timeout"
        );
        sim.set_muted(false);
        // The instrument would now answer *IDN?; the clear before the next
        // exchange drops that answer.
        assert_eq!(volts(&mut l).await?, 0.0);
        // A read with nothing asked times out too (the endpoint NAKs), and
        // the device says there was nothing to abort.
        let e = l.read(1024, Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(e.code(), 408, "{e}");
        assert_eq!(control.aborts_in(), 2);
        assert_eq!(query(&mut l, "*OPC?").await?, b"1\n".to_vec());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn usbtmc_bad_header_stalls_until_halt_is_cleared() -> Result<()> {
    bounded(async {
        let sim = psu();
        let mut dev = SimUsbtmc::new(sim.clone(), 64);
        let control = dev.control();
        // bTagInverse wrong.
        let mut bad = usbtmc::dev_dep_msg_out(5, b"*RST\n", true);
        bad[2] = 0;
        assert!(matches!(dev.bulk_out(&bad, T).await, Err(PipeError::Stall)));
        let good = usbtmc::dev_dep_msg_out(6, b"VOLT 1\n", true);
        assert!(matches!(
            dev.bulk_out(&good, T).await,
            Err(PipeError::Stall)
        ));
        dev.clear_halt(BulkEndpoint::Out, T)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        dev.bulk_out(&good, T)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(
            String::from_utf8(sim.execute("VOLT?").unwrap())?.parse::<f64>()?,
            1.0
        );
        assert_eq!(control.stalls(), 1);
        // Unknown control requests stall the control pipe.
        let r = dev.control_in(Recipient::Interface, 99, 0, 1, T).await;
        assert!(matches!(r, Err(PipeError::Stall)));
        // The link over a stalled device recovers by clearing (which clears the halt).
        let mut l = UsbtmcLink::open(Box::new(dev), "sim-usbtmc", T).await?;
        assert_eq!(volts(&mut l).await?, 1.0);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn usbtmc_read_status_byte_by_control_and_by_interrupt() -> Result<()> {
    bounded(async {
        for interrupt in [false, true] {
            let sim = psu();
            sim.execute("NO:SUCH:CMD"); // an error in the queue: EAV (bit 2)
            let want: u8 = String::from_utf8(sim.execute("*STB?").unwrap())?.parse()?;
            assert_ne!(want, 0);
            let dev = SimUsbtmc::new(sim.clone(), 64);
            let dev = if interrupt {
                dev.with_interrupt_in()
            } else {
                dev
            };
            let mut l = UsbtmcLink::open(Box::new(dev), "sim-usbtmc", T).await?;
            for _ in 0..130 {
                // bTags 2..=127 wrap without trouble.
                assert_eq!(l.read_stb(T).await?, want, "interrupt={interrupt}");
            }
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn usb_resource_without_the_device_is_503() -> Result<()> {
    bounded(async {
        let r = Resource::parse("USB0::0x1AB1::0x0E11::NOSUCH0001::INSTR")?;
        let e = Link::open(&r, Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(e.code(), 503, "{e}");
        let r = Resource::parse("usbtmc:///dev/usbtmc-does-not-exist")?;
        let e = Link::open(&r, Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(e.code(), 503, "{e}");
        Ok(())
    })
    .await
}

/// The kernel-driver fallback does plain write/read on a character device:
/// exercised on a real pseudo-terminal with the simulator behind it.
#[tokio::test]
async fn dev_usbtmc_plain_read_write_on_a_character_device() -> Result<()> {
    bounded(async {
        let (sim, pty) = labmesh_drivers::sim::serve_pty(SimConfig::new(Family::KeysightE36xx))?;
        let path = pty.path().to_string_lossy().into_owned();
        let mut d = DevUsbtmc::open(&path).await?;
        d.write(b"*IDN?\n", T).await?;
        let mut got = Vec::new();
        while !got.ends_with(b"\n") {
            let (data, _) = d.read(4096, T).await?;
            got.extend_from_slice(&data);
        }
        assert_eq!(String::from_utf8(got)?.trim_end(), sim.idn());
        let e = d.read(4096, Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(e.code(), 408, "{e}");
        pty.close().await;
        Ok(())
    })
    .await
}

/// A real USBTMC instrument: `LABMESH_USBTMC_RESOURCE=USB0::0x...::INSTR
/// cargo test -p labmesh-drivers --features usb-hardware --test usbtmc`.
#[cfg(feature = "usb-hardware")]
#[tokio::test]
async fn hardware_idn_and_status_byte() -> Result<()> {
    let Ok(text) = std::env::var("LABMESH_USBTMC_RESOURCE") else {
        anyhow::bail!("set LABMESH_USBTMC_RESOURCE to the device's USB resource string");
    };
    bounded(async {
        let devices = usbtmc::list_devices().await?;
        assert!(!devices.is_empty(), "no USBTMC device found");
        let mut s = ScpiSession::new(Resource::parse(&text)?, SessionOptions::default());
        let idn = s.idn().await?;
        assert!(idn.split(',').count() >= 3, "{idn}");
        s.clear().await?;
        assert_eq!(s.query("*OPC?").await?, "1");
        Ok(())
    })
    .await
}
