//! The web node against a real mesh on loopback: HTTP API, safety,
//! WebSocket fan-out, /metrics, dataset download.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use labmesh_client::{Client, ClientOptions};
use labmesh_tests::{Mesh, WAIT};
use labmesh_web::{WebHandle, WebOptions};
use serde_json::{json, Value};
use sha2::Digest;

async fn web_on(mesh: &Mesh, opts: WebOptions) -> WebHandle {
    let client = Client::connect(
        &mesh.ctx,
        ClientOptions {
            timeout: Duration::from_secs(5),
            ..ClientOptions::new(mesh.broker.rpc_endpoint(), mesh.broker.xpub_endpoint())
        },
    )
    .await
    .unwrap();
    labmesh_web::spawn(client, opts).await.unwrap()
}

fn local() -> WebOptions {
    WebOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Default::default()
    }
}

fn url(web: &WebHandle, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", web.addr().port())
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get_json(web: &WebHandle, path: &str) -> Value {
    let r = http().get(url(web, path)).send().await.unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().await.unwrap()
}

async fn voltage(mesh: &Mesh, id: &str) -> (f64, f64) {
    let s = mesh
        .client
        .call(id, "get_state", Value::Null)
        .await
        .unwrap();
    (
        s["voltage"].as_f64().unwrap(),
        s["last_updated"].as_f64().unwrap(),
    )
}

/// Strictly parse the text exposition (every line a comment or a sample)
/// and return the samples.
fn scrape(text: &str) -> prometheus_parse::Scrape {
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (name, value) = l
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("odd line {l:?}"));
        assert!(
            value.parse::<f64>().is_ok(),
            "sample value not a number: {l:?}"
        );
        let name = name.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name:?}"
        );
    }
    assert!(text.trim_end().ends_with("# EOF"), "no # EOF:\n{text}");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

async fn metrics(web: &WebHandle) -> prometheus_parse::Scrape {
    let r = http().get(url(web, "/metrics")).send().await.unwrap();
    assert!(r.status().is_success());
    scrape(&r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_lists_describes_and_calls_through_the_mesh() {
    let mesh = Mesh::start(&["psu-1", "psu-2"], Duration::from_millis(50))
        .await
        .unwrap();
    let web = web_on(&mesh, local()).await;
    tokio::time::timeout(WAIT, async {
        // The page itself is served.
        let page = http()
            .get(url(&web, "/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("/app.js"), "{page}");
        let m = get_json(&web, "/api/mesh").await;
        let ids: Vec<&str> = m["relays"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["psu-1", "psu-2"]);
        assert_eq!(m["relays"][0]["status"], "online");
        assert_eq!(m["web"]["local"], true);

        let d = get_json(&web, "/api/relays/psu-1").await;
        let sv = d["methods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "set_voltage")
            .unwrap();
        assert_eq!(sv["params"][0]["name"], "value");
        assert_eq!(sv["params"][0]["unit"], "V");

        let before = metrics(&web).await;
        let r = http()
            .post(url(&web, "/api/relays/psu-1/call"))
            .json(&json!({"method": "set_voltage", "params": {"value": 3.25}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["result"]["voltage"], 3.25);
        // Verified through the mesh, not through the web node.
        assert_eq!(voltage(&mesh, "psu-1").await.0, 3.25);
        assert_eq!(voltage(&mesh, "psu-2").await.0, 0.0);

        // Not declared by the description: refused, whatever it is.
        for m in ["self_destruct", "lm.stream_remove", "lm.lock"] {
            let r = http()
                .post(url(&web, "/api/relays/psu-1/call"))
                .json(&json!({"method": m, "params": {"name": "x"}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "{m}");
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["error"]["code"], 404);
        }
        // A wrong parameter is refused before the relay.
        let r = http()
            .post(url(&web, "/api/relays/psu-1/call"))
            .json(&json!({"method": "set_voltage", "params": {"value": "lots"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        // An unknown relay is a 404.
        let r = http()
            .get(url(&web, "/api/relays/nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        // A relay without leases says so (works before and after leases land).
        let l = get_json(&web, "/api/relays/psu-1/lease").await;
        assert!(l["supported"].is_boolean(), "{l}");

        // Counters moved with the traffic.
        mesh.client
            .wait_state("psu-1", WAIT, |s| s.state["voltage"] == 3.25)
            .await
            .unwrap();
        let after = metrics(&web).await;
        let calls = |s: &prometheus_parse::Scrape| {
            value(s, "labmesh_web_relay_calls_total", &[("relay", "psu-1")])
        };
        // Refused calls never went out: only set_voltage counts.
        assert!(
            calls(&after) >= calls(&before) + 1.0,
            "{} -> {}",
            calls(&before),
            calls(&after)
        );
        assert!(
            value(
                &after,
                "labmesh_web_relay_call_errors_total",
                &[("relay", "psu-1"), ("code", "404")]
            ) >= 3.0
        );
        assert!(
            value(
                &after,
                "labmesh_web_relay_call_errors_total",
                &[("relay", "psu-1"), ("code", "400")]
            ) >= 1.0
        );
        let states = |s: &prometheus_parse::Scrape| {
            value(
                s,
                "labmesh_web_relay_state_messages_total",
                &[("relay", "psu-1")],
            )
        };
        assert!(states(&after) > states(&before), "state messages counted");
        assert!(
            value(
                &after,
                "labmesh_web_relay_call_latency_seconds_count",
                &[("relay", "psu-1")]
            ) >= 1.0
        );
    })
    .await
    .expect("test bounded");
    web.shutdown().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_local_address_needs_the_token_and_nothing_reaches_the_relay() {
    let mesh = Mesh::start(&["psu-1"], Duration::from_millis(50))
        .await
        .unwrap();
    let web = web_on(
        &mesh,
        WebOptions {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            token: Some("s3cret-operator".into()),
            ..Default::default()
        },
    )
    .await;
    tokio::time::timeout(WAIT, async {
        let (v0, t0) = voltage(&mesh, "psu-1").await;
        let call = |auth: Option<&str>| {
            let mut r = http()
                .post(url(&web, "/api/relays/psu-1/call"))
                .json(&json!({"method": "set_voltage", "params": {"value": 7.5}}));
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r.send()
        };
        assert_eq!(call(None).await.unwrap().status(), 403);
        assert_eq!(call(Some("Bearer wrong")).await.unwrap().status(), 403);
        assert_eq!(
            call(Some("s3cret-operator")).await.unwrap().status(),
            403,
            "not a bearer header"
        );
        for (path, body) in [
            (
                "/api/relays/psu-1/lease",
                json!({"action": "lock", "params": {"ttl_s": 10}}),
            ),
            ("/api/relays/psu-1/streams/x", json!({"enabled": true})),
        ] {
            let r = http()
                .post(url(&web, path))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{path}");
        }
        // Nothing reached the relay: the supply was not touched, and the
        // web node made no call.
        assert_eq!(voltage(&mesh, "psu-1").await, (v0, t0));
        let m = metrics(&web).await;
        assert_eq!(
            value(&m, "labmesh_web_relay_calls_total", &[("relay", "psu-1")]),
            0.0
        );
        assert!(value(&m, "labmesh_web_http_refused_total", &[]) >= 5.0);
        // Reading is open.
        get_json(&web, "/api/relays/psu-1").await;
        // With the token it goes through.
        let r = call(Some("Bearer s3cret-operator")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(voltage(&mesh, "psu-1").await.0, 7.5);
    })
    .await
    .expect("test bounded");
    web.shutdown().await;
    mesh.stop().await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_browsers_keep_receiving_while_one_never_reads() {
    let mesh = Mesh::start(&["psu-1"], Duration::from_millis(2))
        .await
        .unwrap();
    let budget = 16 * 1024;
    let web = web_on(
        &mesh,
        WebOptions {
            ws_queue_bytes: budget,
            socket_send_buffer: Some(4096),
            ..local()
        },
    )
    .await;
    let ws_url = format!("ws://127.0.0.1:{}/ws", web.addr().port());
    tokio::time::timeout(Duration::from_secs(60), async {
        // The slow one: a tiny receive buffer, and never read.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let stream = sock.connect(web.addr()).await.unwrap();
        let slow_port = stream.local_addr().unwrap().port();
        let (_slow, _) = tokio_tungstenite::client_async(ws_url.as_str(), stream)
            .await
            .unwrap();

        let counts: Vec<Arc<AtomicU64>> = (0..50).map(|_| Arc::new(AtomicU64::new(0))).collect();
        for c in &counts {
            let (ws, _): (Ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
                .await
                .unwrap();
            let c = c.clone();
            tokio::spawn(async move {
                let (_tx, mut rx) = ws.split();
                while let Some(Ok(m)) = rx.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                        if t.as_str().contains("\"type\":\"state\"") {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        // The slow browser starts losing messages...
        let slow = loop {
            let s = web
                .connections()
                .into_iter()
                .find(|c| c.peer.ends_with(&format!(":{slow_port}")))
                .expect("slow connection registered");
            if s.dropped > 0 {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(slow.queued_bytes <= budget, "{slow:?}");
        // ...while every other one keeps receiving.
        let base: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        for (i, c) in counts.iter().enumerate() {
            while c.load(Ordering::Relaxed) < base[i] + 50 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let conns = web.connections();
        assert_eq!(conns.len(), 51);
        let slow = conns
            .iter()
            .find(|c| c.peer.ends_with(&format!(":{slow_port}")))
            .unwrap();
        assert!(slow.dropped > 0 && slow.queued_bytes <= budget, "{slow:?}");
        // Memory is bounded: no queue above its budget.
        assert!(conns.iter().all(|c| c.queued_bytes <= budget), "{conns:?}");
        // The total catches up with the slow connection's own count (it is
        // added right after each push, so a scrape can sit between them).
        loop {
            let m = web.metrics_text();
            let s = scrape(&m);
            assert_eq!(value(&s, "labmesh_web_ws_connections", &[]), 51.0);
            if value(&s, "labmesh_web_ws_dropped_total", &[]) >= slow.dropped as f64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("test bounded");
    web.shutdown().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataset_catalogue_and_streamed_download() {
    let mesh = Mesh::start(&["psu-1"], Duration::from_millis(100))
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
    let web = web_on(&mesh, local()).await;
    tokio::time::timeout(WAIT, async {
        let data: Vec<u8> = (0..3_000_017u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let sha = hex::encode(sha2::Sha256::digest(&data));
        let file = dir.path().join("run.bin");
        std::fs::write(&file, &data).unwrap();
        let bankc = loop {
            if let Ok(b) = mesh.client.bank(Some("bank-1")).await {
                break b;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let receipt = bankc
            .upload_file(
                &file,
                labmesh_transfer::UploadOptions {
                    relay_id: "psu-1".into(),
                    meta: json!({"run": 7, "sample": "Si"}),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let id = receipt.dataset_id.clone();

        let list = |q: &'static str| {
            let web = &web;
            async move {
                get_json(web, &format!("/api/datasets{q}")).await["datasets"]
                    .as_array()
                    .unwrap()
                    .len()
            }
        };
        assert_eq!(list("").await, 1);
        assert_eq!(list("?relay_id=psu-1").await, 1);
        assert_eq!(list("?relay_id=psu-9").await, 0);
        assert_eq!(list("?meta.run=7").await, 1);
        assert_eq!(list("?meta.run=8").await, 0);
        assert_eq!(list("?since=1e12").await, 0);
        let r = http()
            .get(url(&web, "/api/datasets?since=soon"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);

        let r = http()
            .get(url(&web, &format!("/api/datasets/bank-1/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-sha256"], sha.as_str());
        assert_eq!(
            r.headers()["content-length"],
            data.len().to_string().as_str()
        );
        let mut h = sha2::Sha256::new();
        let mut n = 0usize;
        let mut body = r.bytes_stream();
        while let Some(c) = body.next().await {
            let c = c.unwrap();
            n += c.len();
            h.update(&c);
        }
        assert_eq!(n, data.len());
        assert_eq!(hex::encode(h.finalize()), sha);

        let r = http()
            .get(url(
                &web,
                "/api/datasets/bank-1/0123456789abcdef0123456789abcdef",
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let m = metrics(&web).await;
        assert!(
            value(
                &m,
                "labmesh_web_bank_datasets_announced_total",
                &[("bank", "bank-1")]
            ) >= 1.0
        );
    })
    .await
    .expect("test bounded");
    web.shutdown().await;
    bank.shutdown().await;
    mesh.stop().await;
}

/// An instrument that records every call that reaches it. Its `call`
/// would serve `hidden` too, but the description does not declare it.
struct Spy(Arc<std::sync::Mutex<Vec<String>>>);

#[async_trait::async_trait]
impl labmesh_drivers::Instrument for Spy {
    fn describe(&self) -> labmesh_drivers::Description {
        use labmesh_drivers::{MethodSpec, ParamSpec, ParamType};
        labmesh_drivers::Description {
            driver: "spy".into(),
            identity: None,
            methods: vec![
                MethodSpec::new("read", "").read_only(),
                MethodSpec::new("set", "").param(ParamSpec::required("value", ParamType::Float)),
            ],
            state_fields: Vec::new(),
        }
    }
    async fn call(
        &mut self,
        method: &str,
        _args: labmesh_drivers::Args,
    ) -> Result<Value, labmesh_drivers::DriverError> {
        self.0.lock().unwrap().push(method.to_string());
        Ok(json!(1.0))
    }
    async fn poll(&mut self) -> Result<Value, labmesh_drivers::DriverError> {
        Ok(json!({"x": 1.0}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_makes_the_web_node_call_an_undeclared_method() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stream: labmesh_proto::stream::StreamSpec =
        serde_json::from_value(json!({"name": "r", "method": "read", "hz": 2})).unwrap();
    let mesh = Mesh::start_hosted(vec![labmesh_relay::Hosted::new(
        "spy-1",
        Box::new(Spy(seen.clone())),
    )
    .poll_every(Duration::from_millis(200))
    .stream(stream)])
    .await
    .unwrap();
    let web = web_on(&mesh, local()).await;
    tokio::time::timeout(WAIT, async {
        let post = |path: &str, body: Value| http().post(url(&web, path)).json(&body).send();
        let calls = |s: &prometheus_parse::Scrape| {
            value(s, "labmesh_web_relay_calls_total", &[("relay", "spy-1")])
        };
        let before = calls(&metrics(&web).await);
        // Undeclared names, reserved names, near misses: 404 each.
        for m in [
            "hidden",
            "lm.stream_remove",
            "lm.stream_add",
            "lm.lock",
            "lm.force_unlock",
            "lm.describe",
            "Read",
            "read ",
            " set",
            "set\u{0}",
            "",
            "../read",
        ] {
            let r = post(
                "/api/relays/spy-1/call",
                json!({"method": m, "params": {"name": "r", "value": 1.0}}),
            )
            .await
            .unwrap();
            assert_eq!(r.status(), 404, "{m:?}");
        }
        // Odd bodies: refused before anything is looked up.
        for body in [
            json!({"method": ["read"]}),
            json!({"method": 7}),
            json!({"params": {}}),
            json!("read"),
        ] {
            let r = post("/api/relays/spy-1/call", body.clone()).await.unwrap();
            assert!(r.status().is_client_error(), "{body}: {}", r.status());
        }
        // Lease actions other than lock/unlock.
        for action in ["force", "lm.stream_remove", "read", "hidden"] {
            let r = post("/api/relays/spy-1/lease", json!({"action": action}))
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{action}");
        }
        // A path that tries to reach another route or relay.
        let r = post("/api/relays/spy-1%2F..%2Fx/call", json!({"method": "read"}))
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
        // The WebSocket takes only watch/unwatch.
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", web.addr().port()))
                .await
                .unwrap();
        use futures::SinkExt;
        for m in [
            json!({"type": "call", "relay_id": "spy-1", "method": "hidden"}),
            json!({"type": "watch", "relay_id": "spy-1", "method": "hidden"}),
        ] {
            ws.send(tokio_tungstenite::tungstenite::Message::Text(
                m.to_string().into(),
            ))
            .await
            .unwrap();
        }
        // One declared call, so the spy is shown to see what arrives.
        let r = post(
            "/api/relays/spy-1/call",
            json!({"method": "set", "params": {"value": 2.0}}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        // The stream runs `read` on its own; nothing else reached the spy.
        let got: Vec<String> = seen.lock().unwrap().clone();
        assert!(got.iter().all(|m| m == "read" || m == "set"), "{got:?}");
        assert_eq!(got.iter().filter(|m| *m == "set").count(), 1, "{got:?}");
        // The relay's reserved state is untouched: stream still there, no lease.
        let s = mesh
            .client
            .call("spy-1", "lm.streams", Value::Null)
            .await
            .unwrap();
        assert_eq!(s["streams"][0]["name"], "r", "{s}");
        assert_eq!(
            mesh.client
                .call("spy-1", "lm.who", Value::Null)
                .await
                .unwrap(),
            Value::Null
        );
        // And the web node made exactly one call to the relay for all that.
        let after = calls(&metrics(&web).await);
        assert_eq!(after - before, 1.0, "{before} -> {after}");
        drop(ws);
    })
    .await
    .expect("test bounded");
    web.shutdown().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_fields_as_gauges_only_when_asked() {
    let mesh = Mesh::start(&["psu-1", "psu-2"], Duration::from_millis(50))
        .await
        .unwrap();
    let plain = web_on(&mesh, local()).await;
    let gauged = web_on(
        &mesh,
        WebOptions {
            gauges: labmesh_web::Gauges::Fields(vec!["voltage".into(), "psu-2.output".into()]),
            ..local()
        },
    )
    .await;
    tokio::time::timeout(WAIT, async {
        mesh.client
            .call("psu-1", "set_voltage", json!({"value": 4.75}))
            .await
            .unwrap();
        mesh.client
            .call("psu-2", "set_output", json!({"on": true}))
            .await
            .unwrap();
        let g = |s: &prometheus_parse::Scrape, relay: &str, field: &str| {
            s.samples
                .iter()
                .find(|x| {
                    x.metric == "labmesh_web_state_value"
                        && x.labels.get("relay") == Some(relay)
                        && x.labels.get("field") == Some(field)
                })
                .map(|x| match x.value {
                    prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
        };
        // The gauges follow the bus: wait for the new values to land.
        loop {
            let s = metrics(&gauged).await;
            if g(&s, "psu-1", "voltage") == Some(4.75) && g(&s, "psu-2", "output") == Some(1.0) {
                assert_eq!(g(&s, "psu-2", "voltage"), Some(0.0));
                assert_eq!(g(&s, "psu-1", "current"), None, "not selected");
                assert_eq!(g(&s, "psu-1", "output"), None, "output only for psu-2");
                break;
            }
            // (A scrape per state interval: waiting on the bus itself.)
            mesh.client
                .wait_state("psu-1", WAIT, |_| true)
                .await
                .unwrap();
        }
        let s = metrics(&plain).await;
        assert!(
            !s.samples
                .iter()
                .any(|x| x.metric == "labmesh_web_state_value"),
            "gauges are opt-in"
        );
    })
    .await
    .expect("test bounded");
    plain.shutdown().await;
    gauged.shutdown().await;
    mesh.stop().await;
}
