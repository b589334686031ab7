//! `labmesh call`: one method on a relay, the result printed as JSON.

use std::process::ExitCode;

use serde_json::Value;

use crate::common::{connect_with, load_with, parse_kv, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Relay id.
    relay: String,
    /// Method name (`lm.describe` lists them).
    method: String,
    /// Named parameters `key=value`; values are JSON when they parse as JSON.
    #[arg(value_parser = crate::cli_args::key_value)]
    params: Vec<String>,
    /// All parameters as one JSON value (object, array or scalar).
    #[arg(long, conflicts_with = "params", value_parser = crate::cli_args::json)]
    json: Option<Value>,
    /// Seconds to wait for the reply (overrides `[client] timeout_seconds`;
    /// above 0, below 10^9).
    #[arg(long, value_name = "SECONDS", value_parser = crate::cli_args::seconds)]
    timeout: Option<labmesh_config::Seconds>,
}

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let cfg = load_with(global, &[], |cfg| {
        if let Some(t) = a.timeout {
            cfg.client.timeout_seconds = t;
        }
        Ok(())
    })?;
    let params = match a.json {
        Some(j) => j,
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
        // Exit 3 for an error answer, 4 for no answer (crate::exit).
        Err(e) => Err(e.into()),
    }
}
