//! Shared helpers for the end-to-end tests: a whole mesh on loopback, the
//! Python labmesh package, bounded waits.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use labmesh_broker::{BrokerHandle, BrokerOptions};
use labmesh_client::{Client, ClientOptions};
use labmesh_drivers::mock_psu::MockPsu;
use labmesh_relay::{Hosted, RelayHandle, RelayOptions};
use labmesh_wire::auth::Password;

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(15);

/// Log to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A broker, a relay hosting mock PSUs, and a client, all on loopback.
pub struct Mesh {
    pub ctx: zmq::Context,
    pub broker: BrokerHandle,
    pub relay: RelayHandle,
    pub client: Client,
}

impl Mesh {
    /// Start a mesh with mock PSUs named `ids`, state every `interval`.
    pub async fn start(ids: &[&str], interval: Duration) -> anyhow::Result<Mesh> {
        Mesh::start_with_password(ids, interval, Password::none()).await
    }

    /// As [`Mesh::start`], every node requiring `password`.
    pub async fn start_with_password(
        ids: &[&str],
        interval: Duration,
        password: Password,
    ) -> anyhow::Result<Mesh> {
        init_logging();
        let ctx = zmq::Context::new();
        let broker = labmesh_broker::spawn(
            &ctx,
            BrokerOptions {
                password: password.clone(),
                ..BrokerOptions::loopback()
            },
        )
        .await?;
        let hosted = ids
            .iter()
            .map(|id| Hosted::new(id, Box::new(MockPsu::new(id))).poll_every(interval))
            .collect();
        Mesh::start_hosted_with_password(&ctx, broker, hosted, password).await
    }

    /// A mesh hosting `hosted` (any drivers, streams) on a new broker.
    pub async fn start_hosted(hosted: Vec<Hosted>) -> anyhow::Result<Mesh> {
        init_logging();
        let ctx = zmq::Context::new();
        let broker = labmesh_broker::spawn(&ctx, BrokerOptions::loopback()).await?;
        Mesh::start_hosted_with_password(&ctx, broker, hosted, Password::none()).await
    }

    async fn start_hosted_with_password(
        ctx: &zmq::Context,
        broker: BrokerHandle,
        hosted: Vec<Hosted>,
        password: Password,
    ) -> anyhow::Result<Mesh> {
        let ctx = ctx.clone();
        let ids: Vec<String> = hosted.iter().map(|h| h.relay_id.clone()).collect();
        let relay = labmesh_relay::spawn(
            &ctx,
            RelayOptions {
                password: password.clone(),
                ..RelayOptions::with_broker(broker.rpc_endpoint(), broker.xsub_endpoint())
            },
            hosted,
        )
        .await?;
        let client = Client::connect(
            &ctx,
            ClientOptions {
                password,
                timeout: Duration::from_secs(5),
                ..ClientOptions::new(broker.rpc_endpoint(), broker.xpub_endpoint())
            },
        )
        .await?;
        for id in &ids {
            client.wait_for_relay(id, WAIT).await?;
        }
        Ok(Mesh {
            ctx,
            broker,
            relay,
            client,
        })
    }

    /// Stop everything gracefully.
    pub async fn stop(self) {
        self.relay.shutdown().await;
        self.broker.shutdown().await;
    }
}

/// Start Python labmesh's relay (`tests/python/relay_node.py`) as `id`
/// on a free port, registered with `broker`; returns the process (killed
/// on drop) and the port, once it printed `ready`.
pub async fn spawn_python_relay(
    py: &PathBuf,
    broker: &BrokerHandle,
    id: &str,
) -> anyhow::Result<(tokio::process::Child, u16)> {
    let port = free_port()?;
    let child = spawn_python(
        py,
        "relay_node.py",
        &[
            broker.rpc_endpoint(),
            broker.xsub_endpoint(),
            id,
            &port.to_string(),
        ],
    )
    .await?;
    Ok((child, port))
}

/// Whether the Python labmesh package is importable. Locally a missing
/// package skips (with a printed reason); with `CI=true` it fails.
pub fn python_labmesh() -> Option<PathBuf> {
    python_importing("labmesh, zmq", "labmesh pyzmq")
}

/// Whether pyvisa with the pyvisa-py backend is importable (VXI-11 and
/// HiSLIP interop). Locally a missing package skips (with a printed
/// reason); with `CI=true` it fails.
pub fn python_pyvisa() -> Option<PathBuf> {
    python_importing("pyvisa, pyvisa_py", "pyvisa pyvisa-py")
}

/// `$PYTHON` (default `python3`) if it can `import MODULES` (a Python
/// import list), or `None`: skipped with the reason and the `pip install
/// PIP` that would help; a failure under `CI=true`.
pub fn python_importing(modules: &str, pip: &str) -> Option<PathBuf> {
    let py = std::env::var_os("PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let ok = std::process::Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return Some(py);
    }
    skip_or_fail(&format!(
        "{} cannot import {modules} (pip install {pip})",
        py.display()
    ));
    None
}

/// Skip a test (or part of one) for `why`, printing the reason; with
/// `CI=true` nothing may be skipped, so it panics instead.
pub fn skip_or_fail(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// Path of a script in tests/python.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// Run a Python script to completion within `limit`; returns stdout.
pub async fn run_python(
    py: &PathBuf,
    name: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    limit: Duration,
) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new(py);
    cmd.arg(script(name))
        .args(args)
        .env_remove("LMH_NETWORK_PASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd.spawn().with_context(|| format!("spawn {name}"))?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("{name} did not finish within {limit:?}"))??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// Start a long-running Python script (killed when the child is dropped)
/// and wait until it prints a line containing `ready`. Its output keeps
/// being drained (and echoed to stderr) so it never blocks on a full pipe.
pub async fn spawn_python(
    py: &PathBuf,
    name: &str,
    args: &[&str],
) -> anyhow::Result<tokio::process::Child> {
    spawn_python_until(py, name, args, "ready").await
}

/// [`spawn_python`] waiting for a line containing `ready`.
pub async fn spawn_python_until(
    py: &PathBuf,
    name: &str,
    args: &[&str],
    ready: &str,
) -> anyhow::Result<tokio::process::Child> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(py)
        .arg(script(name))
        .args(args)
        .env_remove("LMH_NETWORK_PASSWORD")
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {name}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let ready = ready.to_string();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let tag = name.to_string();
    tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{tag}] {line}");
            if line.contains(&ready) {
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    tokio::time::timeout(WAIT, ready_rx)
        .await
        .with_context(|| format!("{name} not ready within {WAIT:?}"))?
        .with_context(|| format!("{name} exited before it was ready"))?;
    Ok(child)
}

/// A TCP port that was free a moment ago (for peers that cannot bind port 0
/// and report it, like Python labmesh's relay).
///
/// Ports come from 20000..32000, below the kernel's ephemeral range
/// (32768..60999 here): a port taken from port 0 was handed back to that
/// range, and under load an outgoing connection's source port or another
/// `bind :*` got it before the node bound it (a broker in CI exited with
/// "address in use"). One counter per process, started at an offset from
/// the pid, so tests of one binary never get the same port twice and
/// binaries rarely overlap.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LO: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LO + n % SPAN)?;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port in {LO}..{}", LO + SPAN)
}

/// The last line of `out` parsed as JSON.
pub fn last_json(out: &str) -> anyhow::Result<serde_json::Value> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("no JSON line in output:\n{out}"))?;
    Ok(serde_json::from_str(line)?)
}
