//! `labmesh lock`, `labmesh unlock`, `labmesh who`: instrument leases from
//! the shell.
//!
//! `labmesh lock RELAY` takes the lease and prints it as JSON (it stays
//! held until its TTL runs out or `labmesh unlock`); `labmesh lock RELAY
//! -- CMD ...` holds and renews it while CMD runs, hands it to CMD in
//! `LABMESH_LEASE` (which `labmesh call` and `labmesh unlock` read),
//! releases it when CMD exits and exits with CMD's code.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use labmesh_client::{default_holder, ClientError, LockOptions};
use labmesh_proto::lease::{check_holder, MAX_TTL_S};

use crate::common::{connect, shutdown_signal, Global};

/// The environment variable carrying held leases to child commands:
/// `relay_id:token`, several separated by commas.
pub const LEASE_ENV: &str = "LABMESH_LEASE";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Relay id.
    relay: String,
    /// Lease length in seconds without renewal (0 < S <= 86400).
    #[arg(long, default_value_t = 30.0)]
    ttl: f64,
    /// Take the lease even if someone else holds it (they are fenced off).
    #[arg(long)]
    force: bool,
    /// The name others see (default: user@host).
    #[arg(long)]
    holder: Option<String>,
    /// Command to run while holding the lease (after `--`).
    #[arg(last = true)]
    cmd: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct UnlockArgs {
    /// Relay id.
    relay: String,
    /// The lease token (default: this relay's from `LABMESH_LEASE`).
    #[arg(long)]
    token: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct WhoArgs {
    /// Relay id (default: every relay the broker lists).
    relay: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The leases in `LABMESH_LEASE`, as `(relay_id, token)`.
fn env_leases() -> anyhow::Result<Vec<(String, u64)>> {
    let Ok(v) = std::env::var(LEASE_ENV) else {
        return Ok(Vec::new());
    };
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|one| {
            let (relay, token) = one
                .rsplit_once(':')
                .with_context(|| format!("{LEASE_ENV}: {one:?} is not relay_id:token"))?;
            let token = token
                .parse::<u64>()
                .with_context(|| format!("{LEASE_ENV}: {token:?} is not a lease token"))?;
            Ok((relay.to_string(), token))
        })
        .collect()
}

/// The token `LABMESH_LEASE` holds for `relay`, if any.
pub fn env_lease(relay: &str) -> anyhow::Result<Option<u64>> {
    Ok(env_leases()?
        .into_iter()
        .find(|(r, _)| r == relay)
        .map(|(_, t)| t))
}

fn remote_failure(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Remote { .. } | ClientError::Timeout { .. } | ClientError::NotFound(_)
    )
}

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    if !(a.ttl.is_finite() && a.ttl > 0.0 && a.ttl <= MAX_TTL_S) {
        bail!("--ttl {}: must be above 0 and at most {MAX_TTL_S} s", a.ttl);
    }
    let holder = match a.holder {
        Some(h) => {
            check_holder(&h).map_err(|why| anyhow::anyhow!("--holder: {why}"))?;
            h
        }
        None => default_holder(),
    };
    let client = connect(global, ctx).await?;
    let relay = match client.relay(&a.relay).await {
        Ok(r) => r,
        // Remote errors and timeouts: the exit-code table (crate::exit).
        Err(e) => return Err(e.into()),
    };
    let ttl = Duration::from_secs_f64(a.ttl);
    let lease = match relay
        .lock_with(LockOptions {
            ttl,
            holder,
            force: a.force,
            renew: !a.cmd.is_empty(),
        })
        .await
    {
        Ok(l) => l,
        // Remote errors and timeouts: the exit-code table (crate::exit).
        Err(e) => return Err(e.into()),
    };
    let Some((prog, args)) = a.cmd.split_first() else {
        // For scripts: the lease stays held; the token unlocks it.
        println!("{}", serde_json::to_string(&lease.keep())?);
        return Ok(ExitCode::SUCCESS);
    };
    let mut leases: Vec<String> = env_leases()?
        .into_iter()
        .filter(|(r, _)| r != &a.relay)
        .map(|(r, t)| format!("{r}:{t}"))
        .collect();
    leases.push(format!("{}:{}", a.relay, lease.token()));
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .env(LEASE_ENV, leases.join(","))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {prog:?}"))?;
    let status = tokio::select! {
        s = child.wait() => s?,
        _ = shutdown_signal() => {
            let _ = child.start_kill();
            child.wait().await?
        }
    };
    if let Some(why) = lease.lost() {
        eprintln!("labmesh: the lease was lost while {prog} ran: {why}");
    }
    if let Err(e) = lease.unlock().await {
        tracing::warn!(error = %e, "lease release failed (it expires after its TTL)");
    }
    Ok(exit_code(status))
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    if let Some(c) = status.code() {
        return ExitCode::from(u8::try_from(c).unwrap_or(1));
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return ExitCode::from(u8::try_from(128 + sig).unwrap_or(1));
        }
    }
    ExitCode::from(1)
}

pub async fn exec_unlock(
    a: UnlockArgs,
    global: &Global,
    ctx: &zmq::Context,
) -> anyhow::Result<ExitCode> {
    let token = match a.token {
        Some(t) => t,
        None => env_lease(&a.relay)?
            .with_context(|| format!("no --token and no lease for {} in {LEASE_ENV}", a.relay))?,
    };
    let client = connect(global, ctx).await?;
    let r = async { client.relay(&a.relay).await?.unlock_token(token).await }.await;
    match r {
        Ok(()) => {
            println!("{}", serde_json::json!({"ok": true}));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn exec_who(a: WhoArgs, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let client = connect(global, ctx).await?;
    let ids = match &a.relay {
        Some(r) => vec![r.clone()],
        None => client
            .list_relays()
            .await?
            .into_iter()
            .map(|r| r.relay_id)
            .collect(),
    };
    let mut failed = false;
    let mut all = serde_json::Map::new();
    for id in &ids {
        let v = match client.who(id).await {
            Ok(w) => serde_json::to_value(w)?,
            Err(e) if remote_failure(&e) => {
                failed = true;
                serde_json::json!({"error": e.to_string()})
            }
            Err(e) => return Err(e.into()),
        };
        all.insert(id.clone(), v);
    }
    let now = labmesh_proto::unix_now();
    if a.json {
        match (&a.relay, all.values().next()) {
            (Some(_), Some(v)) => println!("{v}"),
            _ => println!("{}", serde_json::Value::Object(all)),
        }
    } else {
        println!(
            "{:<20} {:<28} {:>10} {:>12}",
            "RELAY", "HOLDER", "HELD (s)", "EXPIRES IN"
        );
        for (id, v) in &all {
            match (v.get("holder").and_then(|h| h.as_str()), v.get("error")) {
                (Some(h), _) => {
                    let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(now);
                    println!(
                        "{id:<20} {h:<28} {:>10.0} {:>11.1}s",
                        now - f("since"),
                        f("expires") - now
                    );
                }
                (None, Some(e)) => println!("{id:<20} error: {}", e.as_str().unwrap_or("?")),
                (None, None) => println!("{id:<20} {:<28} {:>10} {:>12}", "-", "-", "-"),
            }
        }
    }
    Ok(if failed {
        ExitCode::from(crate::exit::REMOTE)
    } else {
        ExitCode::SUCCESS
    })
}
