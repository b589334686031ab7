//! `labmesh relay`: host one instrument (flags) or the `[[relay.instruments]]`.

use std::process::ExitCode;

use anyhow::bail;
use labmesh_config::InstrumentSection;
use labmesh_relay::RelayError;

use crate::common::{driver_registry, load_with, parse_kv, serve, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Relay id of the single instrument (1..=128 of letters, digits, `.`, `_`, `-`).
    #[arg(long, value_parser = crate::cli_args::node_id, requires = "driver")]
    relay_id: Option<String>,
    /// Driver of the single instrument (see `labmesh drivers`).
    #[arg(long, requires = "relay_id")]
    driver: Option<String>,
    /// Resource string (`TCPIP::host::5025::SOCKET`, `tcp://host:5025`,
    /// `ASRL/dev/ttyUSB0::INSTR`, `serial:///dev/ttyUSB0?baud=9600`).
    #[arg(long)]
    resource: Option<String>,
    /// RPC bind, overriding `[relay] default_rpc_bind`: tcp://HOST:PORT with
    /// PORT 0..=65535, or `*` for any free port (`tcp://*:*`), advertised.
    #[arg(long, value_name = "ENDPOINT", value_parser = crate::cli_args::endpoint)]
    rpc: Option<String>,
    /// Seconds between state messages, overriding `[relay] state_interval`
    /// (at least 0.01, below 10^9).
    #[arg(long, value_name = "SECONDS", value_parser = crate::cli_args::interval)]
    state_interval: Option<labmesh_config::Seconds>,
    /// Driver option `key=value` (repeatable).
    #[arg(long = "option", value_name = "KEY=VALUE", value_parser = crate::cli_args::key_value)]
    options: Vec<String>,
}

/// Flags that set a key of the configuration, for messages.
const FLAGS: &[crate::common::Override] = &[
    ("--rpc", "relay.default_rpc_bind"),
    ("--rpc", "relay.instruments[0].rpc_bind"),
    ("--relay-id", "relay.instruments[0].id"),
];

/// A bind that failed because the port is taken says what to do.
pub fn bind_hint(e: anyhow::Error) -> anyhow::Error {
    let taken = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<RelayError>(),
            Some(RelayError::Wire(labmesh_wire::WireError::Bind {
                source: zmq::Error::EADDRINUSE,
                ..
            }))
        ) || matches!(
            c.downcast_ref::<labmesh_wire::WireError>(),
            Some(labmesh_wire::WireError::Bind {
                source: zmq::Error::EADDRINUSE,
                ..
            })
        )
    });
    if taken {
        e.context(
            "the RPC port is taken (another relay there? --rpc 'tcp://*:*' or \
             rpc_bind = \"tcp://*:*\" picks a free port)",
        )
    } else {
        e
    }
}

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    // The file's instruments (no --relay-id) are reloaded on SIGHUP, with
    // the same flag overrides.
    let from_file = a.relay_id.is_none() && a.driver.is_none();
    let (interval_flag, rpc_flag) = (a.state_interval, a.rpc.clone());
    let cfg = load_with(global, FLAGS, |cfg| {
        if let Some(s) = a.state_interval {
            cfg.relay.state_interval = s;
        }
        match (a.relay_id, a.driver) {
            // One instrument from the flags, in place of the file's
            // [[relay.instruments]]: hosted exactly as if the file said so.
            (Some(id), Some(driver)) => {
                cfg.relay.instruments = vec![InstrumentSection {
                    id,
                    driver,
                    resource: a.resource,
                    poll_interval: None,
                    rpc_bind: a.rpc,
                    call_timeout: None,
                    streams: Vec::new(),
                    lan: None,
                    options: parse_kv(&a.options)?,
                }];
            }
            (None, None) => {
                if let Some(r) = a.rpc {
                    cfg.relay.default_rpc_bind = r;
                }
            }
            _ => bail!("--relay-id and --driver go together"),
        }
        Ok(())
    })?;
    if cfg.relay.instruments.is_empty() {
        bail!(
            "nothing to host: pass --relay-id ID --driver DRIVER, or add [[relay.instruments]] to {}",
            global.config.display()
        );
    }
    let registry = driver_registry(&cfg)?;
    if from_file {
        let reload = move || {
            load_with(global, FLAGS, |cfg| {
                if let Some(s) = interval_flag {
                    cfg.relay.state_interval = s;
                }
                if let Some(r) = &rpc_flag {
                    cfg.relay.default_rpc_bind = r.clone();
                }
                Ok(())
            })
        };
        return super::relay_reload::serve_reloading(ctx, &cfg, &registry, reload).await;
    }
    let hosted = labmesh_relay::hosted_from_config(&cfg, &registry)
        .await
        .map_err(|e| match e {
            // Its Display already ends with the source, which `{:#}` would
            // print a second time.
            RelayError::Driver { id, source } => {
                anyhow::Error::new(source).context(format!("instrument {id}"))
            }
            e => e.into(),
        })?;
    let relay = labmesh_relay::spawn(ctx, labmesh_relay::RelayOptions::from_config(&cfg), hosted)
        .await
        .map_err(|e| bind_hint(e.into()))?;
    let banner = relay
        .served()
        .iter()
        .map(|s| {
            let mut line = format!("relay {}: {}", s.relay_id, s.rpc_endpoint);
            for l in &s.lan {
                line.push_str(&format!("\n  LAN {} {}: {}", l.protocol, l.addr, l.visa));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n");
    serve(relay, &banner, |r| r.shutdown()).await
}
