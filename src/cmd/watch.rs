//! `labmesh watch`: live state messages (and with --all presence and
//! dataset announcements).

use std::process::ExitCode;

use labmesh_client::Event;

use crate::common::{connect_bus, shutdown_signal, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this relay.
    relay: Option<String>,
    /// Stop after N messages.
    #[arg(long)]
    count: Option<u64>,
    /// Print the raw JSON of each message.
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
            println!(
                "{}",
                serde_json::json!({"relay_id": s.relay_id, "state": s.state, "seq": s.seq, "ts": s.ts})
            );
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
