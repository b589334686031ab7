//! `labmesh watch`: live state messages (and with --all presence and
//! dataset announcements).

use std::process::ExitCode;

use labmesh_client::Event;

use crate::common::{connect_bus, shutdown_signal, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this relay (it must be listed by the broker, unless --wait).
    relay: Option<String>,
    /// With a relay id the broker does not list (yet): wait for it instead
    /// of failing.
    #[arg(long)]
    wait: bool,
    /// Stop after N messages (1 or more; without --count, until Ctrl-C).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Print each message as the JSON body it came in (one line each).
    #[arg(long)]
    json: bool,
    /// Also print presence (online/offline) and dataset announcements.
    #[arg(long)]
    all: bool,
    /// Print this stream's samples instead of states (needs RELAY).
    #[arg(long, requires = "relay")]
    stream: Option<String>,
    /// With --stream: show only the newest sample when the terminal lags.
    #[arg(long, requires = "stream", conflicts_with = "queue")]
    cache: bool,
    /// With --stream: keep up to N unread samples, dropping the oldest
    /// (counted) when full (default 1000).
    #[arg(long, requires = "stream", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    queue: Option<u64>,
}

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let client = connect_bus(global, ctx).await?;
    if let (Some(stream), Some(relay)) = (&a.stream, &a.relay) {
        let mode = match (a.cache, a.queue) {
            (true, _) => labmesh_client::Receive::Cache,
            (false, q) => labmesh_client::Receive::Queue(q.unwrap_or(1000) as usize),
        };
        return super::streams::watch(&client, relay, stream, mode, a.count, a.json).await;
    }
    let mut rx = client.events();
    if let Some(r) = &a.relay {
        if !client.list_relays().await?.iter().any(|x| &x.relay_id == r) {
            if !a.wait {
                return Err(crate::exit::remote(format!(
                    "relay {r:?} is not listed by the broker (`labmesh ls` lists them; --wait waits for it)"
                )));
            }
            eprintln!("labmesh: relay {r:?} is not listed yet; waiting for its state");
        }
    }
    let mut seen = 0u64;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let ev = tokio::select! {
            _ = &mut stop => break,
            ev = rx.recv() => ev,
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                eprintln!("labmesh: missed {n} messages (terminal too slow)");
                continue;
            }
            Err(_) => break,
        };
        let s = match ev {
            Event::State(s) => s,
            Event::Presence(p) if a.all && a.json => {
                println!("{}", serde_json::to_string(&p)?);
                continue;
            }
            Event::Dataset(d) if a.all && a.json => {
                println!("{}", serde_json::to_string(&d)?);
                continue;
            }
            Event::Presence(p) if a.all => {
                println!("[presence] {} {} {}: {}", p.role, p.id, p.status, p.reason);
                continue;
            }
            Event::Dataset(d) if a.all => {
                println!(
                    "[dataset] {} on {}: {} bytes from {}",
                    d.dataset_id, d.bank_id, d.size, d.relay_id
                );
                continue;
            }
            _ => continue,
        };
        if a.relay.as_ref().is_some_and(|r| r != &s.relay_id) {
            continue;
        }
        if a.json {
            // The message as the relay sent it (fields it left out stay out).
            let raw = labmesh_proto::mesh::StateMsg {
                relay_id: s.relay_id,
                state: s.state,
                seq: s.seq,
                ts: s.ts,
                stale: s.stale.then_some(true),
                interval: s.interval,
            };
            println!("{}", serde_json::to_string(&raw)?);
        } else {
            println!("[state] {}: {}", s.relay_id, s.state);
        }
        seen += 1;
        if a.count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
