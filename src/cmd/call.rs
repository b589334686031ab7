//! `labmesh call`: one method on a relay, the result printed as JSON.

use std::process::ExitCode;

use anyhow::Context;
use labmesh_client::ClientError;
use serde_json::Value;

use crate::common::{connect_with, load_with, parse_kv, seconds_flag, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Relay id.
    relay: String,
    /// Method name (`lm.describe` lists them).
    method: String,
    /// Named parameters `key=value`; values are JSON when they parse as JSON.
    params: Vec<String>,
    /// All parameters as one JSON value (object, array or scalar).
    #[arg(long, conflicts_with = "params")]
    json: Option<String>,
    /// Seconds to wait for the reply (overrides `[client] timeout_seconds`).
    #[arg(long)]
    timeout: Option<f64>,
}

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let cfg = load_with(global, &[], |cfg| {
        if let Some(t) = a.timeout {
            cfg.client.timeout_seconds = seconds_flag("--timeout", t)?;
        }
        Ok(())
    })?;
    let params = match a.json {
        Some(j) => serde_json::from_str(&j).context("--json is not valid JSON")?,
        None => Value::Object(parse_kv(&a.params)?),
    };
    let lease = super::lock::env_lease(&a.relay)?;
    let client = connect_with(&cfg, ctx).await?;
    if lease.is_some() {
        // Held by `labmesh lock RELAY -- ...` around this command.
        if let Ok(r) = client.relay(&a.relay).await {
            r.use_lease(lease);
        }
    }
    match client.call(&a.relay, &a.method, params).await {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ ClientError::Remote { .. })
        | Err(e @ ClientError::Timeout { .. })
        | Err(e @ ClientError::NotFound(_)) => {
            eprintln!("labmesh: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}
