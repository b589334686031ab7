//! `labmesh up`: every node the configuration file describes, in one
//! process sharing one ZeroMQ context: the broker (always), a bank when the
//! file has a `[bank]` table, the relay when it has `[[relay.instruments]]`,
//! and the web dashboard when it has a `[web]` table. The relay, bank and
//! dashboard reach the broker at the endpoints it bound (its own advertised
//! ones), whatever `broker_rpc`/`broker_xsub` say.

use std::process::ExitCode;

use labmesh_client::{Client, ClientOptions};

use crate::common::{driver_registry, load_with, shutdown_signal, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Bank id of the `[bank]` node.
    #[arg(long, default_value = "bank-0")]
    bank_id: String,
}

/// Whether the file has a top-level `name` table (`[name]`, `[[name]]` or
/// dotted keys `name.key = ...`: the TOML document decides, not the text).
fn has_table(text: &str, name: &str) -> bool {
    text.parse::<toml::Table>()
        .map(|t| t.contains_key(name))
        .unwrap_or(false)
}

/// The nodes one process runs (`labmesh up`, and the demo).
pub(super) struct Nodes {
    pub broker: labmesh_broker::BrokerHandle,
    pub bank: Option<labmesh_bank::BankHandle>,
    pub relay: Option<labmesh_relay::RelayHandle>,
    pub web: Option<labmesh_web::WebHandle>,
}

/// Start the broker of `cfg`, then (when asked) the bank `bank_id`, the
/// relay of `[[relay.instruments]]` (when there are any) and the web
/// dashboard, all on `ctx`, the others pointed at the broker's bound
/// endpoints.
pub(super) async fn start(
    ctx: &zmq::Context,
    cfg: &labmesh_config::Config,
    bank_id: Option<&str>,
    web: bool,
) -> anyhow::Result<Nodes> {
    let broker =
        labmesh_broker::spawn(ctx, labmesh_broker::BrokerOptions::from_config(cfg)).await?;
    let bank = match bank_id {
        Some(id) => {
            let mut o = labmesh_bank::BankOptions::from_config(cfg, id);
            o.broker_rpc = Some(broker.rpc_endpoint().into());
            o.broker_xsub = Some(broker.xsub_endpoint().into());
            Some(labmesh_bank::Bank::start(ctx, o).await?)
        }
        None => None,
    };
    let relay = if cfg.relay.instruments.is_empty() {
        None
    } else {
        let registry = driver_registry(cfg)?;
        let hosted = labmesh_relay::hosted_from_config(cfg, &registry).await?;
        let mut o = labmesh_relay::RelayOptions::from_config(cfg);
        o.broker_rpc = Some(broker.rpc_endpoint().into());
        o.broker_xsub = Some(broker.xsub_endpoint().into());
        Some(labmesh_relay::spawn(ctx, o, hosted).await?)
    };
    let web = if web {
        let options = super::web::options_from_config(cfg)?;
        let client = Client::connect(
            ctx,
            ClientOptions {
                broker_rpc: broker.rpc_endpoint().into(),
                broker_xpub: broker.xpub_endpoint().into(),
                ..ClientOptions::from_config(cfg)
            },
        )
        .await?;
        Some(labmesh_web::spawn(client, options).await?)
    } else {
        None
    };
    Ok(Nodes {
        broker,
        bank,
        relay,
        web,
    })
}

impl Nodes {
    /// Stop them, the broker last.
    pub async fn shutdown(self) {
        if let Some(w) = self.web {
            w.shutdown().await;
        }
        if let Some(r) = self.relay {
            r.shutdown().await;
        }
        if let Some(b) = self.bank {
            b.shutdown().await;
        }
        self.broker.shutdown().await;
    }
}

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let cfg = load_with(global, &[], |_| Ok(()))?;
    let text = std::fs::read_to_string(&global.config).unwrap_or_default();
    let bank_id = has_table(&text, "bank").then_some(a.bank_id.as_str());
    let nodes = start(ctx, &cfg, bank_id, has_table(&text, "web")).await?;
    let b = &nodes.broker;
    println!(
        "broker: directory {}  xsub {}  xpub {}",
        b.rpc_endpoint(),
        b.xsub_endpoint(),
        b.xpub_endpoint()
    );
    if let Some(bank) = &nodes.bank {
        println!(
            "bank {}: ingest {}  retrieve {}",
            a.bank_id,
            bank.ingest_endpoint(),
            bank.retrieve_endpoint()
        );
    }
    if let Some(r) = &nodes.relay {
        for s in r.served() {
            println!("relay {}: {}", s.relay_id, s.rpc_endpoint);
        }
    }
    if let Some(w) = &nodes.web {
        println!("labmesh web: http://{}/", w.addr());
    }
    println!("up");
    shutdown_signal().await;
    nodes.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
