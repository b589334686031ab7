//! `labmesh datasets`: the banks' catalogues, newest first.

use std::process::ExitCode;

use anyhow::{bail, Context};
use labmesh_transfer::Query;

use crate::common::{connect_with, load_with, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this bank.
    #[arg(long)]
    bank: Option<String>,
    /// Only datasets from this relay.
    #[arg(long)]
    relay: Option<String>,
    /// Created at or after: Unix seconds, or 30s / 10m / 2h / 7d ago.
    #[arg(long, value_parser = parse_time_arg)]
    since: Option<f64>,
    /// Created before: Unix seconds, or a duration ago.
    #[arg(long, value_parser = parse_time_arg)]
    until: Option<f64>,
    /// Metadata filter `key=value` (repeatable; all must match; the key not empty).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = crate::cli_args::key_value)]
    meta: Vec<String>,
    /// At most N datasets (1 or more).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
    /// Seconds to wait for each bank's answer (default `[client]
    /// timeout_seconds`; above 0, below 10^9). A bank that does not answer
    /// in time is named on stderr and the command exits 4 (3 for a bank
    /// that answered an error), after printing what the others returned.
    #[arg(long, value_name = "SECONDS", value_parser = crate::cli_args::seconds)]
    timeout: Option<labmesh_config::Seconds>,
    /// Print JSON (times stay Unix seconds).
    #[arg(long)]
    json: bool,
}

/// Unix seconds as local time, `2026-12-02 01:15:07` (the raw number when
/// it is not a representable time).
fn local_time(unix: f64) -> String {
    let secs = unix.floor();
    let nanos = ((unix - secs) * 1e9) as u32;
    if !secs.is_finite() || secs.abs() > 1e12 {
        return format!("{unix}");
    }
    match chrono::DateTime::from_timestamp(secs as i64, nanos) {
        Some(t) => t
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        None => format!("{unix}"),
    }
}

/// [`parse_time`] as a clap value parser.
fn parse_time_arg(s: &str) -> Result<f64, String> {
    match parse_time(s) {
        Ok(t) if t.is_finite() => Ok(t),
        Ok(_) => Err(format!("{s:?} is not a time")),
        Err(e) => Err(format!("{e:#}")),
    }
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
    let cfg = load_with(global, &[], |cfg| {
        if let Some(t) = a.timeout {
            cfg.client.timeout_seconds = t;
        }
        Ok(())
    })?;
    let wait = cfg.client.timeout_seconds.duration();
    let client = connect_with(&cfg, ctx).await?;
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
        since: a.since,
        until: a.until,
        meta,
        limit: a.limit,
        ..Query::default()
    };
    let mut all = Vec::new();
    let mut failed: Option<anyhow::Error> = None;
    for b in &banks {
        let where_ = format!(
            "bank {} ({})",
            b.info().bank_id,
            b.info().retrieve.as_deref().unwrap_or("-")
        );
        let e = match tokio::time::timeout(wait, b.list_datasets(query.clone())).await {
            Ok(Ok(list)) => {
                all.extend(list);
                continue;
            }
            Ok(Err(e)) => anyhow::Error::new(e).context(where_),
            Err(_) => crate::exit::unreachable(format!("{where_}: no answer within {wait:?}")),
        };
        eprintln!("labmesh: {}", crate::exit::render(&e));
        failed = Some(e);
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
            "DATASET", "BANK", "RELAY", "BYTES", "CREATED (local)"
        );
        for d in &all {
            println!(
                "{:<34} {:<10} {:<12} {:>12}  {:<20} {}",
                d.dataset_id,
                d.bank_id,
                d.relay_id,
                d.size,
                local_time(d.created),
                d.meta
            );
        }
    }
    match failed {
        // Printed above already; the exit code says how it failed.
        Some(e) => Ok(ExitCode::from(crate::exit::code_of(&e))),
        None => Ok(ExitCode::SUCCESS),
    }
}
