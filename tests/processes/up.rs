//! `labmesh up`: broker, bank, relay and web dashboard from one file, in one
//! process; a client lists, calls and watches, the dashboard answers.

use std::time::Duration;

use labmesh_client::{Client, ClientOptions};
use labmesh_tests::{init_logging, WAIT};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Node;

#[tokio::test]
async fn up_runs_every_node_of_the_file_in_one_process() -> anyhow::Result<()> {
    init_logging();
    let dir = std::env::temp_dir().join(format!("labmesh-up-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("up.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[broker]
rpc_bind = "tcp://127.0.0.1:*"
xsub_bind = "tcp://127.0.0.1:*"
xpub_bind = "tcp://127.0.0.1:*"
address = "127.0.0.1"
[bank]
ingest_bind = "tcp://127.0.0.1:*"
retrieve_bind = "tcp://127.0.0.1:*"
default_data_dir = "{}"
[relay]
default_address = "127.0.0.1"
state_interval = 0.1
[[relay.instruments]]
id = "psu-up"
driver = "mock-psu"
rpc_bind = "tcp://127.0.0.1:*"
[web]
listen = "127.0.0.1:0"
gauges = ["voltage"]
"#,
            dir.join("data").display()
        ),
    )?;
    let node = Node::start(&cfg, &["up"], "broker:").await?;
    let words: Vec<&str> = node.ready_line.split_whitespace().collect();
    let at = |k: &str| {
        words
            .iter()
            .position(|w| *w == k)
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string())
            .unwrap_or_default()
    };
    let client = Client::connect(
        &zmq::Context::new(),
        ClientOptions {
            timeout: Duration::from_secs(5),
            ..ClientOptions::new(&at("directory"), &at("xpub"))
        },
    )
    .await?;
    client.wait_for_relay("psu-up", WAIT).await?;
    let psu = client.relay("psu-up").await?;
    assert_eq!(
        psu.call("set_voltage", json!({"value": 4.0})).await?["voltage"],
        json!(4.0)
    );
    client
        .wait_state("psu-up", WAIT, |s| s.state["voltage"] == json!(4.0))
        .await?;
    let banks = tokio::time::timeout(WAIT, async {
        loop {
            let b = client.list_banks().await?;
            if !b.is_empty() {
                return anyhow::Ok(b);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    assert_eq!(banks[0].bank_id, "bank-0");
    // The dashboard of the same process answers at the URL it printed, and
    // its mesh view lists the relay of the same file.
    let mut node = node;
    let url = tokio::time::timeout(WAIT, async {
        while let Some(l) = node.lines.recv().await {
            if let Some(u) = l.strip_prefix("labmesh web: http://") {
                return Some(u.trim_end_matches('/').to_string());
            }
        }
        None
    })
    .await?
    .ok_or_else(|| anyhow::anyhow!("no dashboard URL printed"))?;
    let get = |path: &'static str| {
        let url = url.clone();
        async move {
            let mut tcp =
                tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(&url)).await??;
            tcp.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {url}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
            let mut resp = Vec::new();
            tokio::time::timeout(WAIT, tcp.read_to_end(&mut resp)).await??;
            anyhow::Ok(String::from_utf8_lossy(&resp).into_owned())
        }
    };
    let page = get("/").await?;
    assert!(
        page.starts_with("HTTP/1.1 200"),
        "{}",
        &page[..page.len().min(200)]
    );
    let mesh = get("/api/mesh").await?;
    assert!(
        mesh.starts_with("HTTP/1.1 200") && mesh.contains("\"psu-up\""),
        "{}",
        &mesh[..mesh.len().min(400)]
    );
    // `up` reads the same [web] options as `labmesh web`: the gauge asked
    // for in the file is exported (up once ignored `gauges`).
    let gauge = "labmesh_web_state_value{relay=\"psu-up\",field=\"voltage\"} 4";
    tokio::time::timeout(WAIT, async {
        loop {
            if get("/metrics").await?.contains(gauge) {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no {gauge} in /metrics"))??;
    node.kill().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn up_refuses_an_empty_web_token_file() -> anyhow::Result<()> {
    // An empty token file once started `up`'s dashboard with the empty
    // string as the operator token; `labmesh web` refused it.
    let dir = std::env::temp_dir().join(format!("labmesh-up-token-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let token = dir.join("token");
    std::fs::write(&token, "\n")?;
    let cfg = dir.join("up.toml");
    std::fs::write(
        &cfg,
        format!(
            "[broker]\nrpc_bind = \"tcp://127.0.0.1:*\"\nxsub_bind = \"tcp://127.0.0.1:*\"\n\
             xpub_bind = \"tcp://127.0.0.1:*\"\n[web]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    )?;
    let out = crate::run_cli_within(Some(&cfg), &["up"], WAIT).await?;
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("is empty"), "{}", out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
