//! `labmesh broker`: the directory and the state bus.

use std::process::ExitCode;

use crate::common::{load_with, serve, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory bind, overriding `[broker] rpc_bind` (tcp://HOST:PORT, PORT
    /// 0..=65535 or `*`).
    #[arg(long, value_name = "ENDPOINT", value_parser = crate::cli_args::endpoint)]
    rpc_bind: Option<String>,
    /// XSUB bind, overriding `[broker] xsub_bind`.
    #[arg(long, value_name = "ENDPOINT", value_parser = crate::cli_args::endpoint)]
    xsub_bind: Option<String>,
    /// XPUB bind, overriding `[broker] xpub_bind`.
    #[arg(long, value_name = "ENDPOINT", value_parser = crate::cli_args::endpoint)]
    xpub_bind: Option<String>,
    /// Join a parent broker: its directory (`[broker] parent_rpc`).
    #[arg(long, requires_all = ["parent_xsub", "parent_xpub"])]
    parent_rpc: Option<String>,
    /// The parent's bus XSUB (`[broker] parent_xsub`).
    #[arg(long, requires = "parent_rpc")]
    parent_xsub: Option<String>,
    /// The parent's bus XPUB (`[broker] parent_xpub`).
    #[arg(long, requires = "parent_rpc")]
    parent_xpub: Option<String>,
    /// How this broker's relays and banks are listed in the parent
    /// (`[broker] advertise`): `direct` (their own endpoints) or `gateway`
    /// (endpoints of this broker, which forwards to them).
    #[arg(long, value_name = "MODE", value_parser = ["direct", "gateway"])]
    advertise: Option<String>,
    /// Where gateway endpoints are bound, port `*` (`[broker] gateway_bind`).
    #[arg(long, value_name = "ENDPOINT", value_parser = crate::cli_args::endpoint)]
    gateway_bind: Option<String>,
}

const FLAGS: &[crate::common::Override] = &[
    ("--rpc-bind", "broker.rpc_bind"),
    ("--xsub-bind", "broker.xsub_bind"),
    ("--xpub-bind", "broker.xpub_bind"),
    ("--parent-rpc", "broker.parent_rpc"),
    ("--parent-xsub", "broker.parent_xsub"),
    ("--parent-xpub", "broker.parent_xpub"),
    ("--advertise", "broker.advertise"),
    ("--gateway-bind", "broker.gateway_bind"),
];

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let cfg = load_with(global, FLAGS, |cfg| {
        let b = &mut cfg.broker;
        for (flag, key) in [
            (a.rpc_bind, &mut b.rpc_bind),
            (a.xsub_bind, &mut b.xsub_bind),
            (a.xpub_bind, &mut b.xpub_bind),
        ] {
            if let Some(v) = flag {
                *key = v;
            }
        }
        for (flag, key) in [
            (a.parent_rpc, &mut b.parent_rpc),
            (a.parent_xsub, &mut b.parent_xsub),
            (a.parent_xpub, &mut b.parent_xpub),
        ] {
            if flag.is_some() {
                *key = flag;
            }
        }
        match a.advertise.as_deref() {
            Some("gateway") => b.advertise = labmesh_config::Advertise::Gateway,
            Some(_) => b.advertise = labmesh_config::Advertise::Direct,
            None => {}
        }
        if let Some(v) = a.gateway_bind {
            b.gateway_bind = v;
        }
        Ok(())
    })?;
    let broker =
        labmesh_broker::spawn(ctx, labmesh_broker::BrokerOptions::from_config(&cfg)).await?;
    let banner = format!(
        "broker: directory {}  xsub {}  xpub {}",
        broker.rpc_endpoint(),
        broker.xsub_endpoint(),
        broker.xpub_endpoint()
    );
    serve(broker, &banner, |b| b.shutdown()).await
}
