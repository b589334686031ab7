//! `labmesh datasets`: the banks' catalogues, newest first.

use std::process::ExitCode;

use anyhow::{bail, Context};
use labmesh_transfer::Query;

use crate::common::{connect, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this bank.
    #[arg(long)]
    bank: Option<String>,
    /// Only datasets from this relay.
    #[arg(long)]
    relay: Option<String>,
    /// Created at or after: Unix seconds, or 30s / 10m / 2h / 7d ago.
    #[arg(long)]
    since: Option<String>,
    /// Created before: Unix seconds, or a duration ago.
    #[arg(long)]
    until: Option<String>,
    /// Metadata filter `key=value` (repeatable; all must match).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// At most N datasets.
    #[arg(long)]
    limit: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `1700000000` (Unix seconds) or `30s` / `10m` / `2h` / `7d` ago.
fn parse_time(s: &str) -> anyhow::Result<f64> {
    if let Ok(t) = s.parse::<f64>() {
        return Ok(t);
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: f64 = num
        .parse()
        .with_context(|| format!("{s:?}: expected Unix seconds or a duration like 10m, 2h, 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => bail!("{s:?}: unit must be s, m, h or d"),
    };
    Ok(labmesh_proto::unix_now() - secs)
}

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let client = connect(global, ctx).await?;
    let banks = match &a.bank {
        Some(id) => vec![client.bank(Some(id)).await?],
        None => client.banks().await?,
    };
    let mut meta = Vec::new();
    for p in &a.meta {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--meta expects key=value, got {p:?}");
        };
        meta.push((k.to_string(), v.to_string()));
    }
    let query = Query {
        relay_id: a.relay.clone(),
        since: a.since.as_deref().map(parse_time).transpose()?,
        until: a.until.as_deref().map(parse_time).transpose()?,
        meta,
        limit: a.limit,
        ..Query::default()
    };
    let mut all = Vec::new();
    for b in &banks {
        match b.list_datasets(query.clone()).await {
            Ok(list) => all.extend(list),
            Err(e) => eprintln!("labmesh: bank {}: {e}", b.info().bank_id),
        }
    }
    all.sort_by(|x, y| y.created.total_cmp(&x.created));
    if let Some(n) = a.limit {
        all.truncate(n as usize);
    }
    if a.json {
        println!("{}", serde_json::to_string(&all)?);
    } else {
        println!(
            "{:<34} {:<10} {:<12} {:>12}  {:<20} META",
            "DATASET", "BANK", "RELAY", "BYTES", "CREATED (UTC s)"
        );
        for d in &all {
            println!(
                "{:<34} {:<10} {:<12} {:>12}  {:<20.3} {}",
                d.dataset_id, d.bank_id, d.relay_id, d.size, d.created, d.meta
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
