//! HiSLIP overlapped mode: negotiation against the simulator's server
//! (preferring either mode), several queries in flight, and proof that
//! they really are in flight (a server that answers only once it has every
//! query). Real TCP on 127.0.0.1; every test bounded by `LIMIT`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use labmesh_drivers::hislip::{msg, read_message, write_message, HislipLink, HislipMode};
use labmesh_drivers::psu::models::Family;
use labmesh_drivers::sim::hislip::HislipServerOptions;
use labmesh_drivers::sim::{SimConfig, SimPsu};
use labmesh_drivers::{Resource, ScpiSession, SessionOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const LIMIT: Duration = Duration::from_secs(20);
const T: Duration = Duration::from_secs(2);

async fn bounded<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, f)
        .await
        .map_err(|_| anyhow::anyhow!("test did not finish within {LIMIT:?}"))?
}

async fn serve(prefer_overlap: bool) -> Result<(SimPsu, u16, oneshot::Sender<()>)> {
    let sim = SimPsu::new(SimConfig::new(Family::KeysightE36xx))?;
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    let (stop, rx) = oneshot::channel::<()>();
    let s = sim.clone();
    tokio::spawn(async move {
        s.serve_hislip_with(l, HislipServerOptions { prefer_overlap }, async {
            let _ = rx.await;
        })
        .await
    });
    Ok((sim, port, stop))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end().to_string()
}

#[tokio::test]
async fn overlapped_mode_is_negotiated_both_ways() -> Result<()> {
    bounded(async {
        for prefer in [false, true] {
            let (_sim, port, _stop) = serve(prefer).await?;
            for (want, expect) in [
                (HislipMode::Synchronized, false),
                (HislipMode::Overlapped, true),
                (HislipMode::Server, prefer),
            ] {
                let l = HislipLink::connect_mode("127.0.0.1", port, "hislip0", want, T).await?;
                assert_eq!(l.server_prefers_overlap(), prefer);
                assert_eq!(
                    l.is_overlapped(),
                    expect,
                    "server prefers {prefer}, asked {want:?}"
                );
            }
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn overlapped_queries_in_flight_come_back_in_order() -> Result<()> {
    bounded(async {
        let (sim, port, _stop) = serve(false).await?;
        let mut l =
            HislipLink::connect_mode("127.0.0.1", port, "hislip0", HislipMode::Overlapped, T)
                .await?;
        assert!(l.is_overlapped());
        l.write(b"VOLT 1.5\n", T).await?;
        let queries: Vec<String> = (0..40)
            .map(|i| match i % 4 {
                0 => "*IDN?\n".to_string(),
                1 => "VOLT?\n".to_string(),
                2 => "*OPC?\n".to_string(),
                _ => "SYST:ERR?\n".to_string(),
            })
            .collect();
        let q: Vec<&[u8]> = queries.iter().map(|s| s.as_bytes()).collect();
        let first_id = l.next_message_id();
        let answers = l.query_many(&q, T).await?;
        assert_eq!(answers.len(), 40);
        for (i, a) in answers.iter().enumerate() {
            let a = text(a);
            match i % 4 {
                0 => assert_eq!(a, sim.idn()),
                1 => assert_eq!(a.parse::<f64>()?, 1.5),
                2 => assert_eq!(a, "1"),
                _ => assert!(a.starts_with("+0,") || a.starts_with("0,"), "{a}"),
            }
        }
        assert_eq!(l.next_message_id(), first_id.wrapping_add(80));
        // A device clear keeps the mode asked for; ids start again.
        l.clear(T).await?;
        assert!(l.is_overlapped());
        assert_eq!(
            l.next_message_id(),
            labmesh_drivers::hislip::FIRST_MESSAGE_ID
        );
        let a = l.query_many(&[b"*OPC?\n", b"VOLT?\n"], T).await?;
        assert_eq!(text(&a[0]), "1");
        Ok(())
    })
    .await
}

/// A HiSLIP server that answers nothing until it holds `n` queries, then
/// answers them all in order: only a client with all `n` in flight gets
/// any answer.
async fn batch_server(n: usize) -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        let Ok((mut sync, _)) = l.accept().await else {
            return;
        };
        let Ok(init) = read_message(&mut sync, 4096).await else {
            return;
        };
        assert_eq!(init.header.msg_type, msg::INITIALIZE);
        let _ = write_message(
            &mut sync,
            msg::INITIALIZE_RESPONSE,
            1,
            (0x0100 << 16) | 7,
            &[],
        )
        .await;
        let Ok((mut asyn, _)) = l.accept().await else {
            return;
        };
        tokio::spawn(async move {
            while let Ok(m) = read_message(&mut asyn, 4096).await {
                let (t, payload): (u8, Vec<u8>) = match m.header.msg_type {
                    msg::ASYNC_INITIALIZE => (msg::ASYNC_INITIALIZE_RESPONSE, vec![]),
                    msg::ASYNC_MAXIMUM_MESSAGE_SIZE => (
                        msg::ASYNC_MAXIMUM_MESSAGE_SIZE_RESPONSE,
                        4096u64.to_be_bytes().to_vec(),
                    ),
                    msg::ASYNC_DEVICE_CLEAR => (msg::ASYNC_DEVICE_CLEAR_ACKNOWLEDGE, vec![]),
                    _ => continue,
                };
                let c = u8::from(t == msg::ASYNC_DEVICE_CLEAR_ACKNOWLEDGE);
                if write_message(&mut asyn, t, c, 0, &payload).await.is_err() {
                    return;
                }
            }
        });
        let mut held = Vec::new();
        while let Ok(m) = read_message(&mut sync, 1 << 20).await {
            match m.header.msg_type {
                msg::DEVICE_CLEAR_COMPLETE => {
                    let c = m.header.control & 1;
                    let _ =
                        write_message(&mut sync, msg::DEVICE_CLEAR_ACKNOWLEDGE, c, 0, &[]).await;
                }
                msg::DATA_END => {
                    held.push((m.header.param, m.payload));
                    if held.len() == n {
                        for (id, q) in held.drain(..) {
                            let mut a = b"answer to ".to_vec();
                            a.extend_from_slice(&q);
                            let _ = write_message(&mut sync, msg::DATA_END, 0, id, &a).await;
                        }
                    }
                }
                _ => {}
            }
        }
    });
    Ok(port)
}

#[tokio::test]
async fn overlapped_queries_really_are_in_flight_at_once() -> Result<()> {
    bounded(async {
        let port = batch_server(5).await?;
        let mut l =
            HislipLink::connect_mode("127.0.0.1", port, "hislip0", HislipMode::Server, T).await?;
        assert!(l.is_overlapped(), "the server started in overlapped mode");
        let q: Vec<String> = (0..5).map(|i| format!("Q{i}?\n")).collect();
        let qs: Vec<&[u8]> = q.iter().map(|s| s.as_bytes()).collect();
        let a = l.query_many(&qs, T).await?;
        for (i, a) in a.iter().enumerate() {
            assert_eq!(text(a), format!("answer to Q{i}?"));
        }
        // The same in synchronized mode waits for the first answer, which
        // this server never gives: a timeout.
        let port = batch_server(5).await?;
        let mut l =
            HislipLink::connect_mode("127.0.0.1", port, "hislip0", HislipMode::Synchronized, T)
                .await?;
        assert!(!l.is_overlapped());
        let e = l
            .query_many(&qs, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(e.code(), 408, "{e}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn session_over_an_overlapped_resource() -> Result<()> {
    bounded(async {
        let (sim, port, _stop) = serve(false).await?;
        let r = Resource::parse(&format!(
            "hislip://127.0.0.1:{port}/hislip0?mode=overlapped"
        ))?;
        assert_eq!(Resource::parse(&r.to_string())?, r);
        let mut s = ScpiSession::new(r, SessionOptions::default());
        assert_eq!(s.query("*IDN?").await?, sim.idn());
        s.write("VOLT 2.5").await?;
        assert_eq!(s.query("VOLT?").await?.parse::<f64>()?, 2.5);
        s.clear().await?;
        assert_eq!(s.query("*OPC?").await?, "1");
        // The option spelling, over the PyVISA form.
        let mut r = Resource::parse(&format!("TCPIP::127.0.0.1::hislip0,{port}::INSTR"))?;
        let opts = serde_json::json!({"hislip_mode": "overlapped"});
        r.apply_options(opts.as_object().unwrap())?;
        assert!(r.to_string().ends_with("?mode=overlapped"), "{r}");
        let bad = serde_json::json!({"hislip_mode": "fast"});
        assert!(r.apply_options(bad.as_object().unwrap()).is_err());
        Ok(())
    })
    .await
}
