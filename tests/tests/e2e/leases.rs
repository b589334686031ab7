//! Instrument leases (issue 11): contention, expiry, forced takeover and
//! fencing, renewal, the Python labmesh client against a leased relay, and
//! the `lease` request field against a Python relay.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use labmesh_client::{Client, ClientOptions, Event, LockEvent, LockEventKind, LockOptions};
use labmesh_tests::{python_labmesh, script, Mesh, WAIT};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

const ID: &str = "psu-1";

async fn second_client(mesh: &Mesh) -> anyhow::Result<Client> {
    Ok(Client::connect(
        &mesh.ctx,
        ClientOptions {
            timeout: Duration::from_secs(5),
            ..ClientOptions::new(mesh.broker.rpc_endpoint(), mesh.broker.xpub_endpoint())
        }
        .without_bus(),
    )
    .await?)
}

fn opts(holder: &str, ttl: Duration) -> LockOptions {
    LockOptions {
        holder: holder.into(),
        ..LockOptions::new(ttl)
    }
}

/// The next `lock.<ID>` event matching `pred`, within `limit`.
async fn lock_event(
    events: &mut broadcast::Receiver<Event>,
    limit: Duration,
    mut pred: impl FnMut(&LockEvent) -> bool,
) -> anyhow::Result<LockEvent> {
    tokio::time::timeout(limit, async {
        loop {
            match events.recv().await {
                Ok(Event::Lock(e)) if e.relay_id == ID && pred(&e) => return Ok(e),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => return Err(anyhow::anyhow!("events ended: {e}")),
            }
        }
    })
    .await
    .context("no such lock event in time")?
}

/// A mesh whose client's bus subscription is live (a state arrived).
async fn mesh() -> anyhow::Result<Mesh> {
    let mesh = Mesh::start(&[ID], Duration::from_millis(50)).await?;
    mesh.client.wait_state(ID, WAIT, |_| true).await?;
    Ok(mesh)
}

#[tokio::test]
async fn second_client_gets_409_naming_holder_and_expiry_and_read_only_still_works(
) -> anyhow::Result<()> {
    let mesh = mesh().await?;
    let alice = mesh.client.relay(ID).await?;
    let lease = alice
        .lock_with(opts("alice@bench-3", Duration::from_secs(30)))
        .await?;
    assert_eq!(lease.granted().holder, "alice@bench-3");
    let now = labmesh_proto::unix_now();
    assert!((lease.granted().expires - (now + 30.0)).abs() < 2.0);
    // The holder's calls carry the token, through the handle and Client::call.
    alice.call("set_voltage", json!({"value": 2.0})).await?;
    mesh.client
        .call(ID, "set_output", json!({"on": true}))
        .await?;

    let bob = second_client(&mesh).await?;
    let e = bob
        .call(ID, "set_voltage", json!({"value": 9.0}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(409), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("leased by alice@bench-3 until"), "{msg}");
    let who = bob.who(ID).await?.context("leased")?;
    assert_eq!(who.holder, "alice@bench-3");
    assert!(
        msg.contains(&format!("{:.0}", who.expires.floor())),
        "{msg} names the expiry {}",
        who.expires
    );
    // Read-only methods and the reserved ones work for everyone.
    let st = bob.call(ID, "get_state", json!({})).await?;
    assert_eq!(
        (st["voltage"].clone(), st["output"].clone()),
        (json!(2.0), json!(true))
    );
    bob.call(ID, "lm.ping", json!({})).await?;
    bob.call(ID, "lm.describe", json!({})).await?;
    // Stream control changes what the instrument runs: holder only.
    let add = json!({"name": "v", "method": "get_state", "hz": 1.0});
    let e = bob
        .call(ID, "lm.stream_add", add.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(409), "{e}");
    bob.call(ID, "lm.streams", json!({})).await?;
    alice.call("lm.stream_add", add).await?;
    alice.call("lm.stream_remove", json!({"name": "v"})).await?;
    // Bob cannot take it without force, nor release it.
    let e = bob
        .relay(ID)
        .await?
        .lock(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(409), "{e}");
    let e = bob
        .relay(ID)
        .await?
        .unlock_token(lease.token() + 1)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(409), "{e}");
    // Bad lock params are 400, not a lease.
    let e = bob
        .call(ID, "lm.lock", json!({"ttl_s": 0}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(400), "{e}");
    // Released: Bob's call goes through.
    lease.unlock().await?;
    assert!(bob.who(ID).await?.is_none());
    bob.call(ID, "set_voltage", json!({"value": 3.0})).await?;
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn orphaned_lease_expires_after_its_ttl_and_the_expiry_is_published() -> anyhow::Result<()> {
    let mesh = mesh().await?;
    let mut events = mesh.client.events();
    let bob = second_client(&mesh).await?;
    let started = Instant::now();
    // Taken and abandoned: no renewal, no release (a crashed holder).
    let granted = bob
        .relay(ID)
        .await?
        .lock_with(LockOptions {
            renew: false,
            ..opts("crashed@host", Duration::from_secs(1))
        })
        .await?
        .keep();
    let g = lock_event(&mut events, WAIT, |_| true).await?;
    assert_eq!(
        (g.event.clone(), g.holder.as_str()),
        (LockEventKind::Granted, "crashed@host")
    );
    assert!(g.held());
    assert_eq!(g.expires, granted.expires);
    // Nobody calls: the relay's own timer publishes the expiry.
    let e = lock_event(&mut events, Duration::from_secs(10), |e| {
        e.event == LockEventKind::Expired
    })
    .await?;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "expired early: {:?}",
        started.elapsed()
    );
    assert_eq!(e.holder, "crashed@host");
    assert!(!e.held());
    assert!(mesh.client.who(ID).await?.is_none());
    mesh.client
        .call(ID, "set_voltage", json!({"value": 1.0}))
        .await?;
    // The expired token is fenced off, and cannot renew.
    let stale = bob.relay(ID).await?;
    stale.use_lease(Some(granted.token));
    let e = stale
        .call("set_voltage", json!({"value": 2.0}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(409), "{e}");
    assert!(e.to_string().contains("no longer valid"), "{e}");
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn forced_takeover_bumps_the_token_and_fences_the_previous_holder() -> anyhow::Result<()> {
    let mesh = mesh().await?;
    let mut events = mesh.client.events();
    let alice = mesh.client.relay(ID).await?;
    let a = alice
        .lock_with(opts("alice", Duration::from_secs(30)))
        .await?;
    let bob_client = second_client(&mesh).await?;
    let bob = bob_client.relay(ID).await?;
    let b = bob
        .lock_with(LockOptions {
            force: true,
            ..opts("bob", Duration::from_secs(30))
        })
        .await?;
    assert!(b.token() > a.token(), "{} > {}", b.token(), a.token());
    let ev = lock_event(&mut events, WAIT, |e| e.event == LockEventKind::Forced).await?;
    assert_eq!(
        (ev.holder.as_str(), ev.previous.as_deref()),
        ("bob", Some("alice"))
    );
    // Alice's next call fails; Bob's works.
    let e = alice
        .call("set_voltage", json!({"value": 5.0}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(409), "{e}");
    assert!(e.to_string().contains("leased by bob"), "{e}");
    bob.call("set_voltage", json!({"value": 4.0})).await?;
    // Her renewal is refused too, and the lease says it is lost.
    let e = a.renew(Duration::from_secs(30)).await.unwrap_err();
    assert_eq!(e.code(), Some(409), "{e}");
    assert!(a.lost().is_some());
    assert_eq!(
        mesh.client.call(ID, "get_state", json!({})).await?["voltage"],
        json!(4.0)
    );
    // Dropping Alice's stale lease does not release Bob's.
    drop(a);
    assert_eq!(bob.who().await?.map(|w| w.holder).as_deref(), Some("bob"));
    b.unlock().await?;
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn renewal_keeps_the_lease_past_its_ttl_and_drop_releases_it() -> anyhow::Result<()> {
    let mesh = mesh().await?;
    let mut events = mesh.client.events();
    let bob = second_client(&mesh).await?;
    let started = Instant::now();
    let lease = bob
        .relay(ID)
        .await?
        .lock_with(opts("bob", Duration::from_millis(900)))
        .await?;
    // Renewed every ttl/3: seven renewals take more than two TTLs, and the
    // lease never expires meanwhile.
    let mut renewals = 0;
    while renewals < 7 {
        let e = lock_event(&mut events, Duration::from_secs(10), |_| true).await?;
        assert_ne!(e.event, LockEventKind::Expired, "expired while renewed");
        if e.event == LockEventKind::Renewed {
            renewals += 1;
        }
    }
    assert!(started.elapsed() > Duration::from_millis(1800));
    assert_eq!(
        mesh.client.who(ID).await?.map(|w| w.holder).as_deref(),
        Some("bob")
    );
    let e = mesh
        .client
        .call(ID, "set_voltage", json!({"value": 1.0}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(409), "{e}");
    assert!(lease.lost().is_none());
    drop(lease);
    lock_event(&mut events, WAIT, |e| e.event == LockEventKind::Released).await?;
    assert!(mesh.client.who(ID).await?.is_none());
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn python_labmesh_client_gets_409_on_a_leased_instrument_and_reads_still_work(
) -> anyhow::Result<()> {
    let Some(py) = python_labmesh() else {
        return Ok(());
    };
    let mesh = mesh().await?;
    let alice = mesh.client.relay(ID).await?;
    alice.call("set_voltage", json!({"value": 1.5})).await?;
    let lease = alice
        .lock_with(opts("alice@bench-3", Duration::from_secs(30)))
        .await?;
    let mut child = tokio::process::Command::new(&py)
        .arg(script("lease_client.py"))
        .args([mesh.broker.rpc_endpoint(), mesh.broker.xpub_endpoint(), ID])
        .env_remove("LMH_NETWORK_PASSWORD")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("spawn lease_client.py")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut next_line = async || -> anyhow::Result<String> {
        tokio::time::timeout(WAIT, lines.next_line())
            .await
            .context("lease_client.py said nothing in time")??
            .context("lease_client.py ended early")
    };
    assert_eq!(next_line().await?, "ready");
    // Lease traffic on the bus while the Python client is subscribed.
    let bob = second_client(&mesh).await?.relay(ID).await?;
    let forced = bob
        .lock_with(LockOptions {
            force: true,
            ..opts("bob", Duration::from_secs(30))
        })
        .await?;
    forced.unlock().await?;
    drop(lease);
    let again = bob.lock(Duration::from_secs(5)).await?;
    stdin.write_all(b"go\n").await?;
    let v: serde_json::Value = serde_json::from_str(&next_line().await?)?;
    let set_v = v["set_voltage"].as_str().unwrap_or_default();
    assert!(
        set_v.starts_with("RPC error 409: psu-1 is leased by alice@bench-3 until"),
        "{v}"
    );
    assert_eq!(v["state"]["voltage"], json!(1.5), "{v}");
    // States kept coming, and nothing but states reached on_state.
    assert!(v["states"].as_u64().unwrap_or(0) >= 3, "{v}");
    assert_eq!(v["other"], json!([]), "{v}");
    // The refused call changed nothing.
    assert_eq!(
        mesh.client.call(ID, "get_state", json!({})).await?["voltage"],
        json!(1.5)
    );
    let status = tokio::time::timeout(WAIT, child.wait()).await??;
    assert!(status.success());
    again.unlock().await?;
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn python_labmesh_relay_ignores_the_lease_field() -> anyhow::Result<()> {
    let Some(py) = python_labmesh() else {
        return Ok(());
    };
    let mesh = Mesh::start(&["rust-psu"], Duration::from_millis(100)).await?;
    let (mut child, _) = labmesh_tests::spawn_python_relay(&py, &mesh.broker, "py-psu").await?;
    mesh.client.wait_for_relay("py-psu", WAIT).await?;
    let psu = mesh.client.relay("py-psu").await?;
    psu.use_lease(Some(1_764_633_600_001));
    assert_eq!(
        psu.call("set_voltage", json!({"value": 4.5})).await?,
        json!({"ok": true, "voltage": 4.5})
    );
    let _ = child.kill().await;
    mesh.stop().await;
    Ok(())
}
