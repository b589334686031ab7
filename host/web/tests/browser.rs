//! The dashboard in a real headless Chromium (Debian's `chromium` driven
//! over WebDriver by `chromedriver`, from the `chromium-driver` package),
//! against a real mesh: what a person sees. Screenshots go to
//! `target/web-screenshots/` (CI artefacts). Locally a missing chromium
//! skips with a printed reason; with `CI=true` it fails.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use labmesh_client::{Client, ClientOptions};
use labmesh_drivers::mock_psu::MockPsu;
use labmesh_relay::Hosted;
use labmesh_tests::{free_port, skip_or_fail, Mesh, WAIT};
use labmesh_web::WebOptions;
use serde_json::{json, Value};
use sha2::Digest;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn shots() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/web-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(b: &Browser, name: &str) -> Vec<u8> {
    let png = b.screenshot().await.unwrap();
    std::fs::write(shots().join(name), &png).unwrap();
    png
}

/// chromedriver on a free port, ready to take sessions.
async fn chromedriver() -> (tokio::process::Child, u16) {
    let port = free_port().unwrap();
    let child = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, port)
}

async fn browser(port: u16, profile: &Path) -> Browser {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1360,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap()
}

async fn text_of(b: &Browser, css: &str) -> Option<String> {
    match b.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.ok(),
        Err(_) => None,
    }
}

async fn points(b: &Browser, css: &str) -> u64 {
    match b.find(Locator::Css(css)).await {
        Ok(e) => e
            .attr("data-points")
            .await
            .ok()
            .flatten()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

async fn voltage(mesh: &Mesh) -> f64 {
    mesh.client
        .call("psu-1", "get_state", Value::Null)
        .await
        .unwrap()["voltage"]
        .as_f64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        skip_or_fail(&format!(
            "{CHROMIUM} or {CHROMEDRIVER} missing (apt-get install chromium chromium-driver)"
        ));
        return;
    }
    let stream: labmesh_proto::stream::StreamSpec =
        serde_json::from_value(json!({"name": "v", "method": "get_state", "hz": 20})).unwrap();
    let mesh = Mesh::start_hosted(vec![
        Hosted::new("psu-1", Box::new(MockPsu::new("psu-1")))
            .poll_every(Duration::from_millis(100))
            .stream(stream),
        Hosted::new("psu-2", Box::new(MockPsu::new("psu-2")))
            .poll_every(Duration::from_millis(250)),
    ])
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bank = labmesh_bank::Bank::start(
        &mesh.ctx,
        labmesh_bank::BankOptions {
            broker_rpc: Some(mesh.broker.rpc_endpoint().to_string()),
            broker_xsub: Some(mesh.broker.xsub_endpoint().to_string()),
            retrieve_chunk: 64 * 1024,
            ..labmesh_bank::BankOptions::new("bank-1", dir.path().join("bank"))
        },
    )
    .await
    .unwrap();
    let client = Client::connect(
        &mesh.ctx,
        ClientOptions {
            timeout: Duration::from_secs(5),
            ..ClientOptions::new(mesh.broker.rpc_endpoint(), mesh.broker.xpub_endpoint())
        },
    )
    .await
    .unwrap();
    let web = labmesh_web::spawn(
        client,
        WebOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://127.0.0.1:{}", web.addr().port());
    let (_driver, port) = chromedriver().await;
    let profile = tempfile::tempdir().unwrap();
    let b = browser(port, profile.path()).await;

    tokio::time::timeout(Duration::from_secs(90), async {
        // Mesh page: both relays, online.
        b.goto(&format!("{base}/#/mesh")).await.unwrap();
        for id in ["psu-1", "psu-2"] {
            b.wait()
                .at_most(WAIT)
                .for_element(Locator::Css(&format!("tr[data-relay='{id}'] [data-status='online']")))
                .await
                .unwrap();
        }
        shot(&b, "mesh.png").await;

        // Instrument page: a call made elsewhere shows within a second.
        b.goto(&format!("{base}/#/relay/psu-1")).await.unwrap();
        b.wait()
            .at_most(WAIT)
            .for_element(Locator::Css("td[data-field='voltage']"))
            .await
            .unwrap();
        let t0 = Instant::now();
        mesh.client
            .call("psu-1", "set_voltage", json!({"value": 4.5}))
            .await
            .unwrap();
        loop {
            if text_of(&b, "td[data-field='voltage']").await.as_deref() == Some("4.5") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "the page did not show 4.5 V within a second of the call"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("state update visible after {:?}", t0.elapsed());

        // The stream's plot gains points while the stream runs.
        let plot = "canvas[data-plot='stream:v']";
        b.wait().at_most(WAIT).for_element(Locator::Css(plot)).await.unwrap();
        let p0 = points(&b, plot).await;
        let deadline = Instant::now() + WAIT;
        while points(&b, plot).await < p0 + 10 {
            assert!(Instant::now() < deadline, "stream plot stuck at {p0} points");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(points(&b, "canvas[data-plot='state:voltage']").await > 0);

        // A call from the form changes the supply (checked through the mesh).
        let form = b
            .find(Locator::Css("form[data-method='set_voltage']"))
            .await
            .unwrap();
        let input = form.find(Locator::Css("input[name='value']")).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys("6.25").await.unwrap();
        form.find(Locator::Css("button[type='submit']"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.wait()
            .at_most(WAIT)
            .for_element(Locator::Css("#call-result[data-method='set_voltage']"))
            .await
            .unwrap();
        assert_eq!(voltage(&mesh).await, 6.25);
        let deadline = Instant::now() + WAIT;
        while text_of(&b, "td[data-field='voltage']").await.as_deref() != Some("6.25") {
            assert!(Instant::now() < deadline, "state never showed 6.25");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Lease panel: works without leases on the relay.
        b.wait()
            .at_most(WAIT)
            .for_element(Locator::Css("#lease [data-lease]"))
            .await
            .unwrap();
        let png = shot(&b, "instrument.png").await;
        if std::env::var_os("LABMESH_UPDATE_DOCS_SCREENSHOT").is_some() {
            std::fs::write(
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/web-instrument.png"),
                png,
            )
            .unwrap();
        }

        // Datasets page: the link downloads the right bytes.
        let data: Vec<u8> = (0..1_500_007u32).map(|i| (i.wrapping_mul(40503) >> 7) as u8).collect();
        let sha = hex::encode(sha2::Sha256::digest(&data));
        let file = dir.path().join("scan.bin");
        std::fs::write(&file, &data).unwrap();
        let receipt = mesh
            .client
            .bank(Some("bank-1"))
            .await
            .unwrap()
            .upload_file(
                &file,
                labmesh_transfer::UploadOptions {
                    relay_id: "psu-1".into(),
                    meta: json!({"sample": "Si"}),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        b.goto(&format!("{base}/#/datasets")).await.unwrap();
        let link = b
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(&format!("a[data-download='{}']", receipt.dataset_id)))
            .await
            .unwrap();
        let href = link.attr("href").await.unwrap().unwrap();
        shot(&b, "datasets.png").await;
        let got = b
            .execute_async(
                r#"const [href, done] = arguments;
                   fetch(href).then(r => r.arrayBuffer()).then(buf => crypto.subtle.digest('SHA-256', buf))
                     .then(d => done([...new Uint8Array(d)].map(x => x.toString(16).padStart(2, '0')).join('')))
                     .catch(e => done('error: ' + e));"#,
                vec![json!(href)],
            )
            .await
            .unwrap();
        assert_eq!(got.as_str(), Some(sha.as_str()));
    })
    .await
    .expect("browser test bounded");
    let _ = b.close().await;
    web.shutdown().await;
    bank.shutdown().await;
    mesh.stop().await;
}
