//! `labmesh up`: every node the configuration file describes, in one
//! process sharing one ZeroMQ context: the broker (always), a bank when the
//! file has a `[bank]` table, the relay when it has `[[relay.instruments]]`,
//! and the web dashboard when it has a `[web]` table. The relay, bank and
//! dashboard reach the broker at the endpoints it bound (its own advertised
//! ones), whatever `broker_rpc`/`broker_xsub` say.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use labmesh_client::{Client, ClientOptions};

use crate::common::{driver_registry, load_with, shutdown_signal, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Bank id of the `[bank]` node.
    #[arg(long, default_value = "bank-0")]
    bank_id: String,
}

/// Whether the file has a `[name]` (or `[[name]]`) table header.
fn has_table(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        let l = l.split('#').next().unwrap_or_default().trim();
        l == format!("[{name}]") || l == format!("[[{name}]]")
    })
}

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let cfg = load_with(global, &[], |_| Ok(()))?;
    let text = std::fs::read_to_string(&global.config).unwrap_or_default();
    let broker =
        labmesh_broker::spawn(ctx, labmesh_broker::BrokerOptions::from_config(&cfg)).await?;
    println!(
        "broker: directory {}  xsub {}  xpub {}",
        broker.rpc_endpoint(),
        broker.xsub_endpoint(),
        broker.xpub_endpoint()
    );
    let bank = if has_table(&text, "bank") {
        let mut o = labmesh_bank::BankOptions::from_config(&cfg, &a.bank_id);
        o.broker_rpc = Some(broker.rpc_endpoint().into());
        o.broker_xsub = Some(broker.xsub_endpoint().into());
        let b = labmesh_bank::Bank::start(ctx, o).await?;
        println!(
            "bank {}: ingest {}  retrieve {}",
            a.bank_id,
            b.ingest_endpoint(),
            b.retrieve_endpoint()
        );
        Some(b)
    } else {
        None
    };
    let relay = if cfg.relay.instruments.is_empty() {
        None
    } else {
        let registry = driver_registry(&cfg)?;
        let hosted = labmesh_relay::hosted_from_config(&cfg, &registry).await?;
        let mut o = labmesh_relay::RelayOptions::from_config(&cfg);
        o.broker_rpc = Some(broker.rpc_endpoint().into());
        o.broker_xsub = Some(broker.xsub_endpoint().into());
        let r = labmesh_relay::spawn(ctx, o, hosted).await?;
        for s in r.served() {
            println!("relay {}: {}", s.relay_id, s.rpc_endpoint);
        }
        Some(r)
    };
    let web = if has_table(&text, "web") {
        let listen: SocketAddr = cfg
            .web
            .listen
            .parse()
            .with_context(|| format!("web.listen {:?}", cfg.web.listen))?;
        let token = match &cfg.web.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("token file {}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            None => cfg.web.token.clone(),
        };
        let client = Client::connect(
            ctx,
            ClientOptions {
                broker_rpc: broker.rpc_endpoint().into(),
                broker_xpub: broker.xpub_endpoint().into(),
                ..ClientOptions::from_config(&cfg)
            },
        )
        .await?;
        let w = labmesh_web::spawn(
            client,
            labmesh_web::WebOptions {
                listen,
                token,
                ws_queue_bytes: cfg.web.ws_queue_bytes,
                max_ws: cfg.web.max_clients,
                ..Default::default()
            },
        )
        .await?;
        println!("labmesh web: http://{}/", w.addr());
        Some(w)
    } else {
        None
    };
    println!("up");
    shutdown_signal().await;
    if let Some(w) = web {
        w.shutdown().await;
    }
    if let Some(r) = relay {
        r.shutdown().await;
    }
    if let Some(b) = bank {
        b.shutdown().await;
    }
    broker.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
