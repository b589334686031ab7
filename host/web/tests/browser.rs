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
use labmesh_drivers::{
    Args, Description, DriverError, Instrument, MethodSpec, ParamSpec, ParamType, StateField,
};
use labmesh_relay::Hosted;
use labmesh_tests::{free_port, skip_or_fail, Mesh, WAIT};
use labmesh_web::WebOptions;
use serde_json::{json, Value};
use sha2::Digest;

/// The browser tests take turns: two Chromiums and two meshes at once on a
/// loaded 2-core machine made the one-second bound on a state update miss
/// (seen locally, before the timeline work too).
static ONE_BROWSER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
            // Downloads (the plots' CSV) land in <profile>/downloads.
            "prefs": {
                "download.default_directory": profile.join("downloads").display().to_string(),
                "download.prompt_for_download": false,
                // A second download from the same page is not a prompt.
                "profile.default_content_setting_values.automatic_downloads": 1,
            },
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap()
}

/// chromedriver's CDP pass-through (`POST /session/{id}/goog/cdp/execute`).
#[derive(Debug)]
struct Cdp(Value);

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.unwrap_or("")
        ))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.0.to_string()))
    }
}

/// Let headless Chromium save downloads into `dir` (it refuses otherwise).
async fn allow_downloads(b: &Browser, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    b.issue_cmd(Cdp(json!({
        "cmd": "Browser.setDownloadBehavior",
        "params": {"behavior": "allow", "downloadPath": dir.display().to_string()},
    })))
    .await
    .unwrap();
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

/// The presence timeline's lanes: `{id: {status, segs: [{status, from, to, title}]}}`.
async fn lanes(b: &Browser) -> Value {
    b.execute(
        r#"const out = {};
           for (const g of document.querySelectorAll('#presence-timeline g[data-lane]')) {
             out[g.dataset.lane] = { status: g.dataset.status, segs: [...g.querySelectorAll('rect')].map((r) => (
               { status: r.dataset.status, from: r.dataset.from, to: r.dataset.to, title: r.querySelector('title')?.textContent })) };
           }
           return out;"#,
        vec![],
    )
    .await
    .unwrap()
}

/// [`lanes`] once `ok` holds, within `bound` (`what` names the wait).
async fn lanes_until(
    b: &Browser,
    what: &str,
    bound: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + bound;
    loop {
        let l = lanes(b).await;
        if ok(&l) {
            return l;
        }
        assert!(Instant::now() < deadline, "timeline never {what}: {l}");
        tokio::time::sleep(Duration::from_millis(50)).await;
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
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
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

        // Presence timeline: a third relay comes and goes. Its lane gains
        // an offline segment (within the broker's TTL even were the
        // shutdown not announced); the others' lanes stay online.
        let extra = labmesh_relay::spawn(
            &mesh.ctx,
            labmesh_relay::RelayOptions::with_broker(
                mesh.broker.rpc_endpoint(),
                mesh.broker.xsub_endpoint(),
            ),
            vec![Hosted::new("psu-3", Box::new(MockPsu::new("psu-3")))
                .poll_every(Duration::from_millis(250))],
        )
        .await
        .unwrap();
        mesh.client.wait_for_relay("psu-3", WAIT).await.unwrap();
        // (The lanes are redrawn every second: read them in one go.)
        let l = lanes_until(&b, "showed psu-3", WAIT, |l| l["psu-3"]["status"] == "online").await;
        assert!(
            l["psu-3"]["segs"].as_array().unwrap().iter().all(|s| s["status"] == "online"),
            "psu-3 offline before it stopped: {l}"
        );
        let t_stop = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        extra.shutdown().await;
        let l = lanes_until(
            &b,
            "showed psu-3 offline",
            labmesh_proto::limits::DEFAULT_TTL + WAIT,
            |l| l["psu-3"]["status"] == "offline",
        )
        .await;
        let segs = l["psu-3"]["segs"].as_array().unwrap();
        assert_eq!(segs.len(), 2, "psu-3: online, then offline: {l}");
        assert_eq!(segs[0]["status"], "online");
        let off = &segs[1];
        assert_eq!(off["status"], "offline");
        let from: f64 = off["from"].as_str().unwrap().parse().unwrap();
        assert!(from >= t_stop - 1.0, "offline from {from}, stopped at {t_stop}");
        assert_eq!(off["to"], "now");
        assert_eq!(segs[0]["to"], off["from"], "segments meet");
        let title = off["title"].as_str().unwrap();
        assert!(
            title.starts_with("psu-3: offline from") && title.contains("to now"),
            "{title}"
        );
        // The others stay online (a relay may show stale for a moment under
        // load; never offline).
        for id in ["psu-1", "psu-2", "bank-1"] {
            let st = l[id]["status"].as_str().unwrap_or("");
            assert!(matches!(st, "online" | "stale"), "{id}: {l}");
            let segs = l[id]["segs"].as_array().unwrap();
            assert_eq!(segs[0]["status"], "online", "{id}: {l}");
            assert!(segs.iter().all(|s| s["status"] != "offline"), "{id}: {l}");
        }
        // The window is adjustable.
        b.find(Locator::Css("#timeline-window"))
            .await
            .unwrap()
            .select_by_value("60")
            .await
            .unwrap();
        until_attr(&b, "#presence-timeline", "data-window", "60").await;
        shot(&b, "mesh-timeline.png").await;

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
        // The stream's value is the supply's state object: one series per
        // numeric field (not the timestamps), each in the legend and in
        // its own CSV column, with the state fields' units.
        let mut series: Vec<String> = attr(&b, plot, "data-series")
            .await
            .unwrap_or_default()
            .split(',')
            .map(String::from)
            .collect();
        series.sort();
        assert_eq!(series, ["current", "voltage"]);
        for s in ["current", "voltage"] {
            b.find(Locator::Css(&format!(
                "[data-legend='stream:v'] [data-series-name='{s}']"
            )))
            .await
            .unwrap();
        }
        let downloads = profile.path().join("downloads");
        allow_downloads(&b, &downloads).await;
        click(&b, "[data-plot-box='stream:v'] button[data-act='csv']").await;
        let csv = downloaded_csv(&downloads).await;
        let mut lines = csv.lines();
        let head: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(head.len(), 3, "{head:?}");
        assert_eq!(head[0], "time_unix_s");
        let vcol = head.iter().position(|h| *h == "v.voltage_V").expect("v.voltage_V column");
        assert!(head.contains(&"v.current_A"), "{head:?}");
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert!(rows.len() >= 10, "{} rows", rows.len());
        assert!(rows.iter().all(|r| r.len() == 3 && r.iter().all(|c| c.parse::<f64>().is_ok())));
        assert_eq!(rows.last().unwrap()[vcol], "4.5", "the newest voltage sample");
        // The streams table lists it, with its controls.
        b.wait()
            .at_most(WAIT)
            .for_element(Locator::Css("tr[data-stream='v'] button[data-action='disable']"))
            .await
            .unwrap();

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

        // The mesh page again, freshly loaded: psu-3's lane is rebuilt from
        // the web node's presence events (online, then offline).
        b.goto(&format!("{base}/#/mesh")).await.unwrap();
        let l = lanes_until(&b, "rebuilt psu-3 offline", WAIT, |l| l["psu-3"]["status"] == "offline").await;
        let segs = l["psu-3"]["segs"].as_array().unwrap();
        assert_eq!(segs.len(), 2, "{l}");
        assert_eq!(segs[0]["status"], "online");
        b.find(Locator::Css("#timeline-window"))
            .await
            .unwrap()
            .select_by_value("60")
            .await
            .unwrap();
        until_attr(&b, "#presence-timeline", "data-window", "60").await;
        let png = shot(&b, "mesh-timeline-reloaded.png").await;
        if std::env::var_os("LABMESH_UPDATE_DOCS_SCREENSHOT").is_some() {
            std::fs::write(
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/web-mesh.png"),
                png,
            )
            .unwrap();
        }
    })
    .await
    .expect("browser test bounded");
    let _ = b.close().await;
    web.shutdown().await;
    bank.shutdown().await;
    mesh.stop().await;
}

/// A supply whose measured voltage ramps towards the setting (0.25 V per
/// poll) while the output is on, can be made to stop following it
/// (`set_fault`), and can be kept busy (`busy`, no polls meanwhile).
struct Ramp {
    set: f64,
    measured: f64,
    output: bool,
    fault: bool,
}

#[async_trait::async_trait]
impl Instrument for Ramp {
    fn describe(&self) -> Description {
        Description {
            driver: "ramp".into(),
            identity: None,
            methods: vec![
                MethodSpec::new("set_voltage", "").param(
                    ParamSpec::required("value", ParamType::Float)
                        .unit("V")
                        .range(0.0, 20.0),
                ),
                MethodSpec::new("set_output", "").param(ParamSpec::required("on", ParamType::Bool)),
                MethodSpec::new("set_fault", "").param(ParamSpec::required("on", ParamType::Bool)),
                MethodSpec::new("busy", "").param(ParamSpec::required("s", ParamType::Float)),
            ],
            state_fields: vec![
                StateField::setpoint("voltage_set", "set_voltage").unit("V"),
                StateField::measurement("voltage", "voltage_set", 0.01)
                    .unit("V")
                    .active_when("output"),
                StateField::setpoint("output", "set_output"),
            ],
        }
    }
    async fn call(&mut self, method: &str, args: Args) -> Result<Value, DriverError> {
        match method {
            "set_voltage" => self.set = args.f64("value")?,
            "set_output" => self.output = args.bool("on")?,
            "set_fault" => self.fault = args.bool("on")?,
            "busy" => tokio::time::sleep(Duration::from_secs_f64(args.f64("s")?)).await,
            _ => return Err(DriverError::UnknownMethod(method.into())),
        }
        Ok(json!({"ok": true}))
    }
    async fn poll(&mut self) -> Result<Value, DriverError> {
        let target = if self.output { self.set } else { 0.0 };
        if !self.fault {
            let step = (target - self.measured).clamp(-0.25, 0.25);
            self.measured = ((self.measured + step) * 1000.0).round() / 1000.0;
        }
        Ok(json!({"voltage_set": self.set, "voltage": self.measured, "output": self.output}))
    }
}

async fn attr(b: &Browser, css: &str, name: &str) -> Option<String> {
    match b.find(Locator::Css(css)).await {
        Ok(e) => e.attr(name).await.ok().flatten(),
        Err(_) => None,
    }
}

/// Wait until `css`'s attribute `name` is `want`.
async fn until_attr(b: &Browser, css: &str, name: &str, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = attr(b, css, name).await;
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{css} [{name}] is {got:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn submit(b: &Browser, method: &str, fields: &[(&str, &str)]) {
    let form = b
        .find(Locator::Css(&format!("form[data-method='{method}']")))
        .await
        .unwrap();
    for (name, v) in fields {
        let sel = format!("[name='{name}']");
        let el = form.find(Locator::Css(&sel)).await.unwrap();
        if el.tag_name().await.unwrap() == "select" {
            el.select_by_value(v).await.unwrap();
        } else {
            el.clear().await.unwrap();
            el.send_keys(v).await.unwrap();
        }
    }
    form.find(Locator::Css("button[type='submit']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Click `css`, finding it again if the page re-rendered it between the
/// find and the click (the lease panel is redrawn on every `lock.` event
/// and every 5 s).
async fn click(b: &Browser, css: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = match b.find(Locator::Css(css)).await {
            Ok(e) => e.click().await,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => return,
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::StaleElementReference
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("click {css}: {e}"),
        }
    }
}

async fn num_attr(b: &Browser, css: &str, name: &str) -> u64 {
    attr(b, css, name)
        .await
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The `*.csv` Chromium saved in `dir`, once it finished writing it (no
/// `.crdownload` left, the text complete), removed so that the next
/// export can be told apart.
async fn downloaded_csv(dir: &Path) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let files = csv_files(dir);
        let busy = files
            .iter()
            .any(|p| p.extension().is_some_and(|x| x == "crdownload"));
        if !busy {
            if let Some(p) = files
                .iter()
                .find(|p| p.extension().is_some_and(|x| x == "csv"))
            {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                if text.ends_with('\n') {
                    std::fs::remove_file(p).unwrap();
                    return text;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no complete CSV in {} (it holds {files:?})",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn csv_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setpoints_leases_and_plots_in_two_browsers() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        skip_or_fail(&format!(
            "{CHROMIUM} or {CHROMEDRIVER} missing (apt-get install chromium chromium-driver)"
        ));
        return;
    }
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let ramp = Ramp {
        set: 0.0,
        measured: 0.0,
        output: true,
        fault: false,
    };
    let mesh = Mesh::start_hosted(vec![
        Hosted::new("ramp-1", Box::new(ramp)).poll_every(Duration::from_millis(100))
    ])
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
    let (pa, pb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = browser(port, pa.path()).await;
    let b = browser(port, pb.path()).await;
    allow_downloads(&a, &pa.path().join("downloads")).await;
    let page = format!("{base}/#/relay/ramp-1");
    let ind = "tr[data-setpoint='voltage_set'] [data-indicator]";

    tokio::time::timeout(Duration::from_secs(120), async {
        a.goto(&page).await.unwrap();
        b.goto(&page).await.unwrap();
        // At rest, measured = set = 0 with the output on: confirmed.
        until_attr(&a, ind, "data-indicator", "confirmed").await;
        until_attr(&b, ind, "data-indicator", "confirmed").await;

        // A setting made elsewhere (a Rust client, not a page), ramping
        // for 4.8 s, longer than the 2 s settle time: both tabs show
        // pending while the measurement follows, never mismatch, then
        // confirmed; B, reloaded mid-ramp, shows pending too.
        mesh.client
            .call("ramp-1", "set_voltage", json!({"value": 12.0}))
            .await
            .unwrap();
        let t_set = Instant::now();
        let (mut seen_a, mut seen_b) = (Vec::<String>::new(), Vec::<String>::new());
        let mut reloaded = false;
        loop {
            for (br, seen) in [(&a, &mut seen_a), (&b, &mut seen_b)] {
                if let Some(i) = attr(br, ind, "data-indicator").await {
                    if seen.last() != Some(&i) {
                        seen.push(i);
                    }
                }
            }
            if !reloaded && t_set.elapsed() > Duration::from_millis(2500) {
                b.refresh().await.unwrap();
                until_attr(&b, ind, "data-indicator", "pending").await;
                seen_b.push("reloaded".into());
                reloaded = true;
            }
            let done = |s: &Vec<String>| s.last().map(String::as_str) == Some("confirmed");
            if reloaded && done(&seen_a) && done(&seen_b) {
                break;
            }
            assert!(t_set.elapsed() < WAIT, "a: {seen_a:?}, b: {seen_b:?}");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert!(
            t_set.elapsed() > Duration::from_secs(4),
            "the ramp was quicker than 4 s"
        );
        for seen in [&seen_a, &seen_b] {
            assert!(!seen.iter().any(|s| s == "mismatch"), "{seen:?}");
            assert!(seen.iter().any(|s| s == "pending"), "{seen:?}");
        }
        assert_eq!(
            text_of(&b, "td[data-measured='voltage_set']")
                .await
                .as_deref(),
            Some("12 V")
        );

        // A setting from the form ramps in: pending while the measurement
        // follows (20 polls), confirmed once it is within tolerance.
        submit(&a, "set_voltage", &[("value", "5")]).await;
        until_attr(&a, ind, "data-indicator", "pending").await;
        until_attr(&a, ind, "data-indicator", "confirmed").await;
        assert_eq!(
            text_of(&a, "td[data-measured='voltage_set']")
                .await
                .as_deref(),
            Some("5 V")
        );
        // Output off: the measurement is not compared.
        submit(&a, "set_output", &[("on", "false")]).await;
        until_attr(&a, ind, "data-indicator", "off").await;
        submit(&a, "set_output", &[("on", "true")]).await;
        until_attr(&a, ind, "data-indicator", "confirmed").await;
        // The measurement stops following: pending, then (2 s on) mismatch.
        submit(&a, "set_fault", &[("on", "true")]).await;
        let t_fault = Instant::now();
        submit(&a, "set_voltage", &[("value", "7")]).await;
        until_attr(&a, ind, "data-indicator", "pending").await;
        until_attr(&a, ind, "data-indicator", "mismatch").await;
        assert!(
            t_fault.elapsed() >= Duration::from_millis(1900),
            "mismatch before the settle time"
        );
        shot(&a, "setpoints.png").await;
        submit(&a, "set_fault", &[("on", "false")]).await;
        until_attr(&a, ind, "data-indicator", "confirmed").await;
        // A busy instrument publishes nothing: stale, then fresh again.
        let busy = {
            let c = mesh.client.clone();
            tokio::spawn(async move { c.call("ramp-1", "busy", json!({"s": 3.0})).await })
        };
        until_attr(&a, ind, "data-indicator", "stale").await;
        busy.await.unwrap().unwrap();
        until_attr(&a, ind, "data-indicator", "confirmed").await;

        // Lease: A takes it; B sees the holder and its call is refused
        // (409); A's calls carry its token and work; A releases; B is free.
        until_attr(&a, "#lease [data-lease]", "data-lease", "free").await;
        click(&a, "#lease button[data-act='take']").await;
        until_attr(&a, "#lease [data-lease]", "data-mine", "true").await;
        until_attr(&b, "#lease [data-lease]", "data-lease", "held").await;
        let holder = attr(&b, "#lease [data-lease]", "data-holder")
            .await
            .unwrap();
        let who = mesh
            .client
            .call("ramp-1", "lm.who", Value::Null)
            .await
            .unwrap();
        assert_eq!(who["holder"].as_str(), Some(holder.as_str()), "{who}");
        assert!(holder.starts_with("anonymous@127.0.0.1:"), "{holder}");
        assert_eq!(
            attr(&b, "#lease [data-lease]", "data-mine")
                .await
                .as_deref(),
            Some("false")
        );
        shot(&b, "lease-other-browser.png").await;
        submit(&b, "set_voltage", &[("value", "9")]).await;
        until_attr(&b, "#call-result", "data-code", "409").await;
        assert!(
            text_of(&b, "#call-result").await.unwrap().contains("lease"),
            "{:?}",
            text_of(&b, "#call-result").await
        );
        submit(&a, "set_voltage", &[("value", "3")]).await;
        until_attr(&a, "#call-result", "data-method", "set_voltage").await;
        let st = mesh
            .client
            .call("ramp-1", "lm.who", Value::Null)
            .await
            .unwrap();
        assert_eq!(st["holder"].as_str(), Some(holder.as_str()));
        until_attr(&b, "td[data-field='voltage_set']", "class", "num").await;
        let deadline = Instant::now() + WAIT;
        while text_of(&b, "td[data-field='voltage_set']").await.as_deref() != Some("3") {
            assert!(Instant::now() < deadline, "B never saw A's setting");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        click(&a, "#lease button[data-act='release']").await;
        until_attr(&a, "#lease [data-lease]", "data-lease", "free").await;
        until_attr(&b, "#lease [data-lease]", "data-lease", "free").await;
        assert_eq!(
            mesh.client
                .call("ramp-1", "lm.who", Value::Null)
                .await
                .unwrap(),
            Value::Null
        );
        submit(&b, "set_voltage", &[("value", "4")]).await;
        until_attr(&b, "#call-result", "data-method", "set_voltage").await;
        // (The measurement ramps to the new setting first.)
        until_attr(&a, ind, "data-indicator", "confirmed").await;
        until_attr(&a, "td[data-set='voltage_set']", "data-set", "voltage_set").await;
        let deadline = Instant::now() + WAIT;
        while text_of(&a, "td[data-measured='voltage_set']")
            .await
            .as_deref()
            != Some("4 V")
        {
            assert!(
                Instant::now() < deadline,
                "the measurement never reached 4 V"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Plot: pause freezes the points shown while samples keep coming;
        // zoom shows the newest part; CSV exports exactly what is shown.
        let plot = "canvas[data-plot='state:voltage']";
        while num_attr(&a, plot, "data-points").await < 40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        click(
            &a,
            "[data-plot-box='state:voltage'] button[data-act='pause']",
        )
        .await;
        until_attr(&a, plot, "data-paused", "true").await;
        let frozen = num_attr(&a, plot, "data-points").await;
        let total = num_attr(&a, plot, "data-total").await;
        while num_attr(&a, plot, "data-total").await < total + 10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            num_attr(&a, plot, "data-points").await,
            frozen,
            "paused plot kept growing"
        );
        let downloads = pa.path().join("downloads");
        click(&a, "[data-plot-box='state:voltage'] button[data-act='csv']").await;
        let full = downloaded_csv(&downloads).await;
        let rows: Vec<(f64, f64)> = full
            .lines()
            .skip(1)
            .map(|l| {
                let (t, v) = l.split_once(',').unwrap();
                (t.parse().unwrap(), v.parse().unwrap())
            })
            .collect();
        assert_eq!(full.lines().next(), Some("time_unix_s,voltage_V"));
        assert_eq!(rows.len() as u64, frozen, "CSV rows = points shown");
        assert!(
            rows.windows(2).all(|w| w[0].0 <= w[1].0),
            "time not ascending"
        );
        assert!(rows.iter().all(|r| (0.0..=20.0).contains(&r.1)));
        assert_eq!(
            rows.last().unwrap().1,
            4.0,
            "the newest voltage is the last setting"
        );
        // Zoom in twice: a quarter of the time span, fewer points.
        click(
            &a,
            "[data-plot-box='state:voltage'] button[data-act='zoom-in']",
        )
        .await;
        click(
            &a,
            "[data-plot-box='state:voltage'] button[data-act='zoom-in']",
        )
        .await;
        let span: f64 = attr(&a, plot, "data-span").await.unwrap().parse().unwrap();
        let full_span = rows.last().unwrap().0 - rows[0].0;
        assert!(
            (span - full_span / 4.0).abs() < 0.01,
            "span {span} of {full_span}"
        );
        let visible = num_attr(&a, plot, "data-visible").await;
        assert!(visible < frozen && visible > 0, "{visible} of {frozen}");
        shot(&a, "plot-zoomed.png").await;
        assert!(
            csv_files(&downloads).is_empty(),
            "{:?}",
            csv_files(&downloads)
        );
        click(&a, "[data-plot-box='state:voltage'] button[data-act='csv']").await;
        let zoomed = downloaded_csv(&downloads).await;
        let zrows: Vec<&str> = zoomed.lines().skip(1).collect();
        assert_eq!(zrows.len() as u64, visible);
        let t_last = rows.last().unwrap().0;
        for l in &zrows {
            let t: f64 = l.split_once(',').unwrap().0.parse().unwrap();
            assert!(t >= t_last - span - 1e-6, "{t} outside the zoomed window");
        }
        assert!(
            full.ends_with(&zoomed[zoomed.find('\n').unwrap() + 1..]),
            "zoomed CSV is not the newest rows"
        );
        // Resume: points come in again.
        click(
            &a,
            "[data-plot-box='state:voltage'] button[data-act='pause']",
        )
        .await;
        until_attr(&a, plot, "data-paused", "false").await;
        let deadline = Instant::now() + WAIT;
        while num_attr(&a, plot, "data-points").await == frozen {
            assert!(Instant::now() < deadline, "resumed plot stuck");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("browser test bounded");
    let _ = a.close().await;
    let _ = b.close().await;
    web.shutdown().await;
    mesh.stop().await;
}
