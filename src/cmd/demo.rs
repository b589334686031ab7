//! `labmesh demo`: a whole mesh in one process on free loopback ports.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use labmesh_client::{Client, ClientOptions, Event};
use labmesh_drivers::sim::{Dialect, SimConfig, SimPsu};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// After the script, keep the mesh and the dashboard running (open
    /// the printed URL, call Inst-0 from another terminal) until Ctrl-C.
    #[arg(long)]
    keep: bool,
}

pub async fn exec(a: Args, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    run(ctx, a.keep).await.map(|_| ExitCode::SUCCESS)
}

async fn run(ctx: &zmq::Context, keep: bool) -> anyhow::Result<()> {
    println!("== labmesh demo: a simulated Keysight PSU over SCPI/TCP, a broker, relay Inst-0 and a client, on loopback ==");
    let sim = SimPsu::new(SimConfig::new(Dialect::KeysightE36xx))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_addr = listener.local_addr()?;
    let (sim_stop, sim_stopped) = tokio::sync::oneshot::channel::<()>();
    let sim_task = tokio::spawn({
        let sim = sim.clone();
        async move {
            sim.serve_tcp(listener, async {
                let _ = sim_stopped.await;
            })
            .await
        }
    });
    println!("instrument {} at tcp://{sim_addr} (10 ohm load)", sim.idn());
    // The rest is `labmesh up` with this file: broker, bank, relay and web
    // dashboard in this process, on free loopback ports.
    let work = std::env::temp_dir().join(format!("labmesh-demo-{}", std::process::id()));
    let text = demo_config(&sim_addr, &work.join("bank_data"));
    let (cfg, _) = labmesh_config::Config::parse(&text, std::path::Path::new("demo.toml"))?;
    let nodes = super::up::start(ctx, &cfg, Some("bank-0"), true).await?;
    let broker = &nodes.broker;
    println!(
        "broker     directory {}  bus {} -> {}",
        broker.rpc_endpoint(),
        broker.xsub_endpoint(),
        broker.xpub_endpoint()
    );
    let bank = nodes.bank.as_ref().context("the demo's bank")?;
    println!(
        "bank       bank-0 ingest {}  retrieve {}",
        bank.ingest_endpoint(),
        bank.retrieve_endpoint()
    );
    for s in nodes.relay.iter().flat_map(|r| r.served()) {
        println!("relay      {} at {}", s.relay_id, s.rpc_endpoint);
    }

    let client = Client::connect(
        ctx,
        ClientOptions::new(broker.rpc_endpoint(), broker.xpub_endpoint()),
    )
    .await?;
    client
        .wait_for_relay("Inst-0", WAIT)
        .await
        .context("relay did not register")?;
    if let Some(web) = &nodes.web {
        println!("web        dashboard at http://{}/", web.addr());
    }
    println!(
        "client     relays: {}",
        serde_json::to_string(&client.list_relays().await?)?
    );
    println!(
        "client     banks:  {}",
        serde_json::to_string(&client.list_banks().await?)?
    );

    let mut events = client.events();
    let psu = client.relay("Inst-0").await?;
    println!(
        "call       set_voltage(value=2.5) -> {}",
        psu.call("set_voltage", json!({"value": 2.5})).await?
    );
    println!(
        "call       set_output(on=true)    -> {}",
        psu.call("set_output", json!({"on": true})).await?
    );

    let mut shown = 0;
    let got = tokio::time::timeout(WAIT, async {
        while shown < 3 {
            match events.recv().await {
                Ok(Event::State(s))
                    if s.relay_id == "Inst-0" && s.state["voltage"] == json!(2.5) =>
                {
                    println!(
                        "[state]    {}: voltage={} current={} output={} (seq {})",
                        s.relay_id,
                        s.state["voltage"],
                        s.state["current"],
                        s.state["output"],
                        s.seq.unwrap_or_default()
                    );
                    shown += 1;
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => return Err(anyhow::anyhow!("state bus closed: {e}")),
            }
        }
        Ok(())
    })
    .await;
    match got {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("no state update showing 2.5 V within {WAIT:?}"),
    }
    match psu.call("no_such_method", json!({})).await {
        Err(e) => println!("call       no_such_method -> {e}"),
        Ok(v) => anyhow::bail!("unknown method answered {v}"),
    }

    dataset_round_trip(&client, bank, &work).await?;
    drop(client);
    if keep {
        println!(
            "== demo done; the mesh keeps running (directory {}, dashboard {}): Ctrl-C to stop ==",
            nodes.broker.rpc_endpoint(),
            nodes
                .web
                .as_ref()
                .map(|w| format!("http://{}/", w.addr()))
                .unwrap_or_else(|| "-".into())
        );
        crate::common::shutdown_signal().await;
    }
    nodes.shutdown().await;
    let _ = std::fs::remove_dir_all(&work);
    let _ = sim_stop.send(());
    sim_task.await??;
    println!("== demo finished ==");
    Ok(())
}

/// The relay uploads a few MB; the client downloads it when the bank
/// announces it and checks the SHA-256.
/// The demo's mesh as a configuration file (what `labmesh up` would read):
/// every node on loopback with kernel-chosen ports, the relay hosting the
/// simulated supply at `sim`, polled every 250 ms.
fn demo_config(sim: &std::net::SocketAddr, bank_data: &std::path::Path) -> String {
    let data = toml::Value::String(bank_data.display().to_string());
    format!(
        r#"[broker]
rpc_bind = "tcp://127.0.0.1:*"
xsub_bind = "tcp://127.0.0.1:*"
xpub_bind = "tcp://127.0.0.1:*"
address = "127.0.0.1"

[bank]
ingest_bind = "tcp://127.0.0.1:*"
retrieve_bind = "tcp://127.0.0.1:*"
default_data_dir = {data}

[relay]
default_address = "127.0.0.1"

[[relay.instruments]]
id = "Inst-0"
driver = "keysight-e36xx"
resource = "TCPIP::{ip}::{port}::SOCKET"
rpc_bind = "tcp://127.0.0.1:*"
poll_interval = 0.25

[web]
listen = "127.0.0.1:0"
"#,
        ip = sim.ip(),
        port = sim.port(),
    )
}

async fn dataset_round_trip(
    client: &Client,
    bank: &labmesh_bank::BankHandle,
    work: &std::path::Path,
) -> anyhow::Result<()> {
    let src = work.join("result-0.bin");
    let payload: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("Result {i} from Inst-0\n").into_bytes())
        .collect();
    std::fs::write(&src, &payload)?;
    let local_sha = crate::common::sha256_file(&src)?;
    let mut events = client.events();
    let opts = labmesh_relay::UploadOptions {
        relay_id: "Inst-0".into(),
        meta: json!({"note": "demo"}),
        ..labmesh_relay::UploadOptions::default()
    };
    let ctx = zmq::Context::new();
    let receipt = labmesh_relay::upload_file(&ctx, bank.ingest_endpoint(), &src, opts).await?;
    println!(
        "relay      uploaded {} ({} bytes) to bank-0",
        receipt.dataset_id, receipt.size
    );
    let announced = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(Event::Dataset(d)) if d.dataset_id == receipt.dataset_id => return Ok(d),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => return Err(anyhow::anyhow!("bus closed: {e}")),
            }
        }
    })
    .await
    .context("no dataset announcement")??;
    println!(
        "[dataset]  {} on {}: {} bytes sha256 {}",
        announced.dataset_id, announced.bank_id, announced.size, announced.sha256
    );
    let dest = work.join("download.bin");
    let got = client
        .bank(Some(&announced.bank_id))
        .await?
        .download(&announced.dataset_id, &dest)
        .await?;
    let ok = got.sha256 == local_sha && crate::common::sha256_file(&dest)? == local_sha;
    println!(
        "client     downloaded {} bytes, sha256 {}",
        got.size,
        if ok { "matches" } else { "DIFFERS" }
    );
    anyhow::ensure!(ok, "downloaded dataset differs from the upload");
    Ok(())
}
