//! `labmesh ls`: the relays and banks the broker lists.

use std::process::ExitCode;

use crate::common::{connect, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn exec(a: Args, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let client = connect(global, ctx).await?;
    let relays = client.list_relays().await?;
    let banks = client.list_banks().await?;
    if a.json {
        println!("{}", serde_json::json!({"relays": relays, "banks": banks}));
    } else {
        println!("RELAY                ENDPOINT");
        for r in &relays {
            println!("{:<20} {}", r.relay_id, r.rpc_endpoint);
        }
        println!("BANK                 INGEST / RETRIEVE");
        for b in &banks {
            println!(
                "{:<20} {} / {}",
                b.bank_id,
                b.ingest.as_deref().unwrap_or("-"),
                b.retrieve.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
