//! Streams (issue 11): runtime control, rates, exact topics, receive modes,
//! late joiners, error samples, binary values, isolation between
//! instruments, and Python labmesh clients that must never see a stream.
//!
//! Rates are asserted as counts with generous bounds over a window, never
//! as timings.

use std::time::{Duration, Instant};

use anyhow::Context;
use labmesh_client::{Receive, RecvError, Sample, Subscription};
use labmesh_drivers::mock_psu::MockPsu;
use labmesh_drivers::{Args, Description, DriverError, Instrument, MethodSpec};
use labmesh_proto::stream::StreamSpec;
use labmesh_relay::Hosted;
use labmesh_tests::{last_json, python_labmesh, run_python, Mesh, WAIT};
use serde_json::{json, Value};

fn spec(name: &str, method: &str, hz: f64) -> StreamSpec {
    StreamSpec {
        name: name.into(),
        method: method.into(),
        params: Value::Null,
        hz,
        enabled: true,
    }
}

/// Receive `n` samples within the test deadline.
async fn take(sub: &Subscription<Sample>, n: usize) -> anyhow::Result<Vec<Sample>> {
    let mut out = Vec::new();
    let until = Instant::now() + WAIT;
    while out.len() < n {
        let left = until.saturating_duration_since(Instant::now());
        out.push(
            sub.recv_timeout(left)
                .await
                .with_context(|| format!("only {} of {n} samples", out.len()))?,
        );
    }
    Ok(out)
}

/// Count what arrives within `window` (the window is the measurement).
async fn count_for(sub: &Subscription<Sample>, window: Duration) -> Vec<Sample> {
    let until = Instant::now() + window;
    let mut out = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match sub.recv_timeout(left).await {
            Ok(s) => out.push(s),
            Err(_) => break,
        }
    }
    out
}

#[tokio::test]
async fn runtime_control_is_idempotent_and_observed_by_a_client() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["psu-1"], Duration::from_secs(1)).await?;
    let psu = mesh.client.relay("psu-1").await?;
    let added = psu.stream_add(&spec("st", "get_state", 50.0)).await?;
    assert!(added.changed && added.exists);
    assert!(
        !psu.stream_add(&spec("st", "get_state", 50.0))
            .await?
            .changed
    );

    let sub = mesh
        .client
        .subscribe_stream("psu-1", "st", Receive::Queue(1000))
        .await?;
    let got = take(&sub, 5).await?;
    for w in got.windows(2) {
        assert!(w[1].header.seq > w[0].header.seq, "seq increases");
        assert!(w[1].header.t_mono > w[0].header.t_mono);
    }
    let s = &got[0].header;
    assert_eq!(
        (s.relay_id.as_str(), s.stream.as_str(), s.ok),
        ("psu-1", "st", true)
    );
    assert_eq!(got[0].binary, None);
    assert_eq!(got[1].header.value.as_ref().unwrap()["relay_id"], "psu-1");
    let wall = labmesh_proto::unix_now();
    assert!(
        (wall - got[4].header.t_wall).abs() < 10.0,
        "t_wall is Unix time"
    );

    // Disabled: nothing more is published; twice is fine.
    let off = psu.stream_enable("st", false).await?;
    assert!(off.changed);
    assert!(!psu.stream_enable("st", false).await?.changed);
    while sub.try_recv().is_ok() {}
    assert_eq!(
        sub.recv_timeout(Duration::from_millis(300)).await.err(),
        Some(RecvError::Empty),
        "a disabled stream publishes nothing"
    );
    let listed = psu.streams().await?;
    assert!(!listed.streams[0].spec.enabled);

    // Removing after disabling, and removing again, are not errors.
    let gone = psu.stream_remove("st").await?;
    assert!(gone.changed && !gone.exists);
    let again = psu.stream_remove("st").await?;
    assert!(!again.changed && !again.exists);
    assert!(psu.streams().await?.streams.is_empty());
    let e = psu.stream_enable("st", true).await.unwrap_err();
    assert_eq!(e.code(), Some(404), "{e}");

    // Re-added at another rate: it publishes again, from seq 0.
    psu.stream_add(&spec("st", "get_state", 20.0)).await?;
    let back = take(&sub, 3).await?;
    assert!(
        back.iter().any(|s| s.header.seq <= 1),
        "a new stream starts its seq again"
    );
    // Rate change.
    assert!(psu.stream_set_rate("st", 200.0).await?.changed);
    assert!(!psu.stream_set_rate("st", 200.0).await?.changed);
    let e = psu.stream_set_rate("st", 0.0).await.unwrap_err();
    assert_eq!(e.code(), Some(400));
    while sub.try_recv().is_ok() {}
    // Generous bounds: this machine may be loaded; 20 Hz would give 40.
    let burst = count_for(&sub, Duration::from_secs(2)).await;
    assert!(
        (120..=600).contains(&burst.len()),
        "200 Hz for 2 s gave {} samples",
        burst.len()
    );
    let st = &psu.streams().await?.streams[0];
    assert!(
        (60.0..=300.0).contains(&st.actual_hz),
        "actual_hz {}",
        st.actual_hz
    );
    assert_eq!(st.spec.hz, 200.0);

    // Bad definitions are refused with the reason.
    let e = psu.stream_add(&spec("x", "nope", 1.0)).await.unwrap_err();
    assert_eq!(e.code(), Some(404), "{e}");
    let e = psu
        .stream_add(&spec("a.b", "get_state", 1.0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(400), "{e}");
    let e = psu
        .call("lm.stream_add", json!({"name": "x", "method": "get_state"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(400), "{e}");
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn configured_streams_start_enabled_or_not_and_describe_lists_them() -> anyhow::Result<()> {
    let off = StreamSpec {
        enabled: false,
        ..spec("quiet", "get_state", 100.0)
    };
    let hosted = vec![Hosted::new("psu-c", Box::new(MockPsu::new("psu-c")))
        .stream(spec("fast", "get_state", 100.0))
        .stream(off)];
    let mesh = Mesh::start_hosted(hosted).await?;
    let quiet = mesh
        .client
        .subscribe_stream("psu-c", "quiet", Receive::Queue(10))
        .await?;
    let fast = mesh
        .client
        .subscribe_stream("psu-c", "fast", Receive::Queue(10))
        .await?;
    take(&fast, 3).await?;
    assert_eq!(
        quiet.try_recv().err(),
        Some(RecvError::Empty),
        "a stream configured enabled = false never published"
    );
    let psu = mesh.client.relay("psu-c").await?;
    let d = psu.describe().await?;
    assert_eq!(d["streams"][0]["name"], "fast");
    assert_eq!(d["streams"][1]["enabled"], false);
    assert_eq!(d["driver"], "mock-psu");
    assert_eq!(d["driver_version"], labmesh_drivers::VERSION);
    assert!(d["identity"]
        .as_str()
        .is_some_and(|i| i.contains("MockPSU")));
    // A configured stream naming a method the driver lacks stops the relay.
    let bad = labmesh_relay::spawn(
        &mesh.ctx,
        labmesh_relay::RelayOptions::standalone(),
        vec![Hosted::new("psu-x", Box::new(MockPsu::new("psu-x"))).stream(spec("v", "nope", 1.0))],
    )
    .await
    .unwrap_err();
    assert!(bad.to_string().contains("nope"), "{bad}");
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_subscriber_of_v_never_receives_v2() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["psu-t"], Duration::from_secs(1)).await?;
    let psu = mesh.client.relay("psu-t").await?;
    psu.stream_add(&spec("v", "get_state", 50.0)).await?;
    psu.stream_add(&spec("v2", "get_state", 200.0)).await?;
    // Through the client library ...
    let v = mesh
        .client
        .subscribe_stream("psu-t", "v", Receive::Queue(1000))
        .await?;
    // ... and through a bare SUB socket with the documented topic.
    let raw = mesh.ctx.socket(zmq::SUB)?;
    raw.set_subscribe(&labmesh_proto::topic::stream("psu-t", "v"))?;
    raw.set_rcvtimeo(5000)?;
    raw.connect(mesh.broker.xpub_endpoint())?;
    let got = take(&v, 20).await?;
    assert!(got.iter().all(|s| s.header.stream == "v"));
    // (A blocking socket: off the runtime the relay runs on.)
    let raw_got = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Vec<Vec<u8>>>> {
        (0..20)
            .map(|_| raw.recv_multipart(0).context("raw SUB got nothing"))
            .collect()
    })
    .await??;
    for frames in raw_got {
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], b"stream.psu-t.v\0");
        let h: Value = serde_json::from_slice(&frames[1])?;
        assert_eq!(h["stream"], "v");
    }
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn cache_keeps_the_newest_and_queue_keeps_order_counting_drops() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["psu-q"], Duration::from_secs(1)).await?;
    let psu = mesh.client.relay("psu-q").await?;
    psu.stream_add(&spec("s", "get_state", 200.0)).await?;
    let cache = mesh
        .client
        .subscribe_stream("psu-q", "s", Receive::Cache)
        .await?;
    let queue = mesh
        .client
        .subscribe_stream("psu-q", "s", Receive::Queue(5))
        .await?;
    // Fill both without reading until the queue has overflowed.
    let until = Instant::now() + WAIT;
    while queue.stats().dropped < 20 {
        anyhow::ensure!(
            Instant::now() < until,
            "queue never overflowed: {:?}",
            queue.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = cache.try_recv()?;
    assert_eq!(
        cache.try_recv().err(),
        Some(RecvError::Empty),
        "cache holds one"
    );
    let cs = cache.stats();
    assert!(cs.replaced >= 20 && cs.dropped == 0, "{cs:?}");
    let qs = queue.stats();
    let items: Vec<_> = std::iter::from_fn(|| queue.try_recv().ok()).collect();
    assert!(
        items.len() <= 5 && items.len() >= 4,
        "{} queued",
        items.len()
    );
    for w in items.windows(2) {
        assert_eq!(
            w[1].header.seq,
            w[0].header.seq + 1,
            "FIFO, no holes inside"
        );
    }
    assert!(qs.received >= qs.dropped + 4, "{qs:?}");
    // The cache's value is at least as new as the queue's newest at the time.
    assert!(
        c.header.seq + 5 >= items[0].header.seq,
        "cache {} queue {:?}",
        c.header.seq,
        items[0].header.seq
    );
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_late_joiner_gets_the_last_sample_at_once() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["psu-l"], Duration::from_secs(1)).await?;
    let psu = mesh.client.relay("psu-l").await?;
    // One sample now, the next in 1000 s.
    psu.stream_add(&spec("slow", "get_state", 0.001)).await?;
    let until = Instant::now() + WAIT;
    while psu.last("slow").await?.is_none() {
        anyhow::ensure!(Instant::now() < until, "no first sample");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sub = mesh
        .client
        .subscribe_stream("psu-l", "slow", Receive::Cache)
        .await?;
    let s = sub
        .try_recv()
        .context("the last sample is there on subscribe")?;
    assert_eq!(s.header.seq, 0);
    let e = mesh
        .client
        .subscribe_stream("psu-l", "nosuch", Receive::Cache)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(404));
    mesh.stop().await;
    Ok(())
}

/// Fails every other call; `slow` sleeps a while per call.
struct Flaky {
    n: u64,
    delay: Duration,
}

#[async_trait::async_trait]
impl Instrument for Flaky {
    fn describe(&self) -> Description {
        Description {
            state_fields: Vec::new(),
            driver: "flaky".into(),
            identity: None,
            methods: vec![MethodSpec::new(
                "read",
                "a number, or an error every other call",
            )],
        }
    }
    async fn call(&mut self, _method: &str, _args: Args) -> Result<Value, DriverError> {
        self.n += 1;
        tokio::time::sleep(self.delay).await;
        if self.n.is_multiple_of(2) {
            Err(DriverError::Instrument(format!("fault {}", self.n)))
        } else {
            Ok(json!(self.n))
        }
    }
    async fn poll(&mut self) -> Result<Value, DriverError> {
        Ok(json!({}))
    }
}

#[tokio::test]
async fn errors_are_samples_and_a_slow_instrument_delays_only_itself() -> anyhow::Result<()> {
    let hosted = vec![
        Hosted::new(
            "flaky",
            Box::new(Flaky {
                n: 0,
                delay: Duration::ZERO,
            }),
        )
        .stream(spec("r", "read", 50.0)),
        // 200 ms per call at 50 Hz: it can do 5 Hz and misses the rest.
        Hosted::new(
            "slow",
            Box::new(Flaky {
                n: 0,
                delay: Duration::from_millis(200),
            }),
        )
        .stream(spec("r", "read", 50.0)),
    ];
    let mesh = Mesh::start_hosted(hosted).await?;
    let sub = mesh
        .client
        .subscribe_stream("flaky", "r", Receive::Queue(1000))
        .await?;
    let got = take(&sub, 6).await?;
    let errors: Vec<_> = got.iter().filter(|s| !s.header.ok).collect();
    assert!(
        !errors.is_empty() && errors.len() < got.len(),
        "errors and values alternate"
    );
    let e = errors[0].header.error.as_ref().unwrap();
    assert_eq!(e.code, 500);
    assert!(e.message.contains("fault"), "{e:?}");
    assert!(errors[0].header.value.is_none());

    // Measure the fast one while the slow one struggles.
    while sub.try_recv().is_ok() {}
    let fast = count_for(&sub, Duration::from_secs(1)).await;
    assert!(
        fast.len() >= 30,
        "the fast instrument kept its rate: {}",
        fast.len()
    );
    let slow = mesh.client.relay("slow").await?;
    // An RPC call to the slow one still gets through between samples (its
    // driver fails every other call: an answer either way).
    let t = Instant::now();
    let r = slow.call("read", Value::Null).await;
    assert!(
        r.is_ok() || r.as_ref().err().and_then(|e| e.code()) == Some(500),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    let st = &slow.streams().await?.streams[0];
    assert!(st.missed > 10, "missed deadlines are counted: {st:?}");
    assert!(st.actual_hz < 10.0, "never bunched to catch up: {st:?}");
    let fl = &mesh.client.relay("flaky").await?.streams().await?.streams[0];
    assert!(fl.errors > 0 && fl.last_error.is_some(), "{fl:?}");
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn rpc_calls_are_not_starved_by_a_1khz_stream() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["psu-r"], Duration::from_millis(100)).await?;
    let psu = mesh.client.relay("psu-r").await?;
    psu.stream_add(&spec("fast", "get_state", 1000.0)).await?;
    let sub = mesh
        .client
        .subscribe_stream("psu-r", "fast", Receive::Cache)
        .await?;
    take(&sub, 1).await?;
    for i in 0..200 {
        let v = 0.01 * f64::from(i);
        let r = psu.call("set_voltage", json!({ "value": v })).await?;
        assert_eq!(r["voltage"], json!(v));
    }
    // The state poll keeps going too.
    let s = mesh
        .client
        .wait_state("psu-r", WAIT, |s| s.state["voltage"] == json!(1.99))
        .await?;
    assert_eq!(s.relay_id, "psu-r");
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn binary_values_travel_as_a_raw_frame() -> anyhow::Result<()> {
    let sim = crate::instruments::tcp_sim(labmesh_drivers::sim::Dialect::KeysightE36xx).await?;
    let resource = format!("tcp://{}", sim.addr);
    let inst = labmesh_drivers::DriverRegistry::with_builtins()
        .create(labmesh_drivers::InstrumentConfig {
            id: "scope".into(),
            driver: "scpi".into(),
            resource: Some(resource),
            options: Default::default(),
        })
        .await?;
    let mesh = Mesh::start_hosted(vec![Hosted::new("scope", inst).stream(StreamSpec {
        params: json!({"cmd": "HCOP:SDUM:DATA?"}),
        ..spec("shot", "query_binary", 20.0)
    })])
    .await?;
    let sub = mesh
        .client
        .subscribe_stream("scope", "shot", Receive::Queue(10))
        .await?;
    let got = take(&sub, 3).await?;
    for s in &got {
        assert!(s.header.ok, "{:?}", s.header);
        let n = s.header.binary.context("binary length in the header")?;
        let bytes = s.binary.as_ref().context("bytes in the third frame")?;
        assert_eq!(bytes.len() as u64, n);
        assert!(n > 0);
        assert!(s.header.value.is_none(), "not base64 in the header");
    }
    // lm.last carries it as base64 and the client decodes it.
    let last = mesh
        .client
        .relay("scope")
        .await?
        .last("shot")
        .await?
        .unwrap();
    assert_eq!(
        last.binary.as_ref().map(Vec::len),
        got[0].binary.as_ref().map(Vec::len)
    );
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn python_labmesh_keeps_receiving_state_while_streams_run_at_1khz() -> anyhow::Result<()> {
    let Some(py) = python_labmesh() else {
        return Ok(());
    };
    let mesh = Mesh::start(&["psu-p"], Duration::from_millis(100)).await?;
    let psu = mesh.client.relay("psu-p").await?;
    psu.stream_add(&spec("a", "get_state", 1000.0)).await?;
    psu.stream_add(&spec("b", "get_state", 500.0)).await?;
    // A Rust subscriber proves the streams flow during the window.
    let sub = mesh
        .client
        .subscribe_stream("psu-p", "a", Receive::Queue(100_000))
        .await?;
    let out = run_python(
        &py,
        "state_during_streams.py",
        &[
            mesh.broker.rpc_endpoint(),
            mesh.broker.xpub_endpoint(),
            "psu-p",
            "2",
        ],
        &[],
        WAIT,
    )
    .await?;
    let v = last_json(&out)?;
    let streamed = sub.stats().received;
    assert!(
        streamed >= 1000,
        "the 1 kHz stream ran during the window: {streamed}"
    );
    let states = v["states"].as_u64().unwrap_or(0);
    assert!(
        states >= 8,
        "Python received {states} states in 2 s at 10 Hz: {v}"
    );
    assert_eq!(
        v["other"],
        json!([]),
        "Python saw only its relay's state: {v}"
    );
    assert!(v["keys"].as_array().unwrap().contains(&json!("voltage")));
    assert_eq!(v["get_state"]["relay_id"], "psu-p");
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_firmware_drivers_telemetry_is_a_push_stream() -> anyhow::Result<()> {
    use labmesh_drivers::firmware::{serve_firmware_pty, DRIVER};
    let pty = serve_firmware_pty(Some(Duration::from_millis(20)))?;
    let inst = labmesh_drivers::DriverRegistry::with_builtins()
        .create(labmesh_drivers::InstrumentConfig {
            id: "fw".into(),
            driver: DRIVER.into(),
            resource: Some(format!("serial://{}", pty.path().display())),
            options: Default::default(),
        })
        .await?;
    let mesh = Mesh::start_hosted(vec![
        Hosted::new("fw", inst).poll_every(Duration::from_millis(200))
    ])
    .await?;
    let psu = mesh.client.relay("fw").await?;
    let listed = psu.streams().await?;
    assert_eq!(listed.streams.len(), 1);
    let t = &listed.streams[0];
    assert!(t.push && t.spec.name == "telemetry", "{t:?}");
    let e = psu.stream_set_rate("telemetry", 5.0).await.unwrap_err();
    assert_eq!(e.code(), Some(409), "a push stream has no rate: {e}");
    let sub = mesh
        .client
        .subscribe_stream("fw", "telemetry", Receive::Queue(1000))
        .await?;
    psu.call("set_voltage", json!({"value": 3.0})).await?;
    psu.call("set_output", json!({"on": true})).await?;
    let until = Instant::now() + WAIT;
    loop {
        let s = sub
            .recv_timeout(until.saturating_duration_since(Instant::now()))
            .await?;
        assert!(s.header.ok);
        let v = s.header.value.clone().unwrap_or_default();
        assert!(v["uptime_ms"].is_u64(), "{v}");
        if v["voltage"]
            .as_f64()
            .is_some_and(|x| (x - 3.0).abs() < 1e-9)
        {
            assert_eq!(v["mode"], "cv", "{v}");
            break;
        }
    }
    // Disabled: no more events; enabled again: they flow.
    psu.stream_enable("telemetry", false).await?;
    while sub.try_recv().is_ok() {}
    assert_eq!(
        sub.recv_timeout(Duration::from_millis(200)).await.err(),
        Some(RecvError::Empty)
    );
    psu.stream_enable("telemetry", true).await?;
    take(&sub, 2).await?;
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn state_subscriptions_have_receive_modes_too() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["psu-s", "psu-s2"], Duration::from_millis(10)).await?;
    // The newest state so far is there at once.
    mesh.client.wait_state("psu-s", WAIT, |_| true).await?;
    let cache = mesh.client.subscribe_state("psu-s", Receive::Cache)?;
    assert!(cache.try_recv().is_ok(), "seeded with the newest state");
    let queue = mesh.client.subscribe_state("psu-s", Receive::Queue(3))?;
    let until = Instant::now() + WAIT;
    while queue.stats().dropped < 5 {
        anyhow::ensure!(Instant::now() < until, "{:?}", queue.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let items: Vec<_> = std::iter::from_fn(|| queue.try_recv().ok()).collect();
    assert!((2..=3).contains(&items.len()));
    assert!(
        items.iter().all(|s| s.relay_id == "psu-s"),
        "exactly that relay, not psu-s2"
    );
    for w in items.windows(2) {
        assert!(w[1].seq > w[0].seq);
    }
    let c = cache.try_recv()?;
    assert_eq!(c.relay_id, "psu-s");
    assert!(cache.stats().replaced > 0);
    mesh.stop().await;
    Ok(())
}
