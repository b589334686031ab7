//! `labmesh relay`: host one instrument (flags) or the `[[relay.instruments]]`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use labmesh_drivers::InstrumentConfig;

use crate::common::{driver_registry, load_with, parse_kv, seconds_flag, serve, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Relay id of the single instrument.
    #[arg(long)]
    relay_id: Option<String>,
    /// Driver of the single instrument (see `labmesh drivers`).
    #[arg(long)]
    driver: Option<String>,
    /// Resource string (`TCPIP::host::5025::SOCKET`, `tcp://host:5025`,
    /// `ASRL/dev/ttyUSB0::INSTR`, `serial:///dev/ttyUSB0?baud=9600`).
    #[arg(long)]
    resource: Option<String>,
    /// RPC bind, overriding `[relay] default_rpc_bind` (`tcp://*:*` for any port).
    #[arg(long)]
    rpc: Option<String>,
    /// Seconds between state messages, overriding `[relay] state_interval`.
    #[arg(long)]
    state_interval: Option<f64>,
    /// Driver option `key=value` (repeatable).
    #[arg(long = "option", value_name = "KEY=VALUE")]
    options: Vec<String>,
}

const FLAGS: &[crate::common::Override] = &[("--rpc", "relay.default_rpc_bind")];

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let single = a.relay_id.is_some() || a.driver.is_some();
    let cfg = load_with(global, FLAGS, |cfg| {
        if let Some(s) = a.state_interval {
            cfg.relay.state_interval = seconds_flag("--state-interval", s)?;
        }
        if let (false, Some(r)) = (single, &a.rpc) {
            cfg.relay.default_rpc_bind = r.clone();
        }
        Ok(())
    })?;
    let registry = driver_registry(&cfg)?;
    let hosted = match (a.relay_id, a.driver) {
        (Some(id), Some(driver)) => {
            let instrument = registry
                .create(InstrumentConfig {
                    id: id.clone(),
                    driver,
                    resource: a.resource,
                    options: parse_kv(&a.options)?,
                })
                .await
                .with_context(|| format!("instrument {id}"))?;
            vec![labmesh_relay::Hosted {
                relay_id: id,
                rpc_bind: a.rpc.unwrap_or_else(|| cfg.relay.default_rpc_bind.clone()),
                poll_interval: cfg.relay.state_interval.duration(),
                call_timeout: Duration::from_secs(10),
                instrument,
            }]
        }
        (None, None) => {
            let hosted = labmesh_relay::hosted_from_config(&cfg, &registry).await?;
            if hosted.is_empty() {
                bail!(
                    "nothing to host: pass --relay-id ID --driver DRIVER, or add [[relay.instruments]] to {}",
                    global.config.display()
                );
            }
            hosted
        }
        _ => bail!("--relay-id and --driver go together"),
    };
    let relay =
        labmesh_relay::spawn(ctx, labmesh_relay::RelayOptions::from_config(&cfg), hosted).await?;
    let banner = relay
        .served()
        .iter()
        .map(|s| format!("relay {}: {}", s.relay_id, s.rpc_endpoint))
        .collect::<Vec<_>>()
        .join("\n");
    serve(relay, &banner, |r| r.shutdown()).await
}
