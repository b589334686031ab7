//! The README's CLI tour, run as written, in order (issue 17).
//!
//! The first ```sh block after `## CLI tour` in README.md is read line by
//! line and each command runs through `sh -c` with the `labmesh` under test
//! first on PATH, in a fresh directory, so quoting, globbing and relative
//! paths behave as they do for a reader. New lines are picked up by
//! themselves. What the test adapts, and nothing else (README says so):
//!
//! * the directory's `labmesh.toml` moves the default ports (broker, relay
//!   `default_rpc_bind`, bank) to free ones and lists the instruments the
//!   bare `labmesh relay` line hosts;
//! * the simulators' fixed ports (`:5025`, and the default ports of
//!   `--vxi11` / `--hislip` / `--prologix`) become free ports, the same
//!   one for every line that names it;
//! * `<dataset_id>` is the id the previous `labmesh upload` printed, and
//!   `run42.h5` exists before the tour starts.
//!
//! How a line runs follows from its subcommand: `broker`, `relay`, `bank`,
//! `sim` and `web` are nodes (started, ready once they print their banner, and
//! for relays and banks once the broker lists them; stopped with SIGTERM at
//! the end, which must exit 0); `watch` without `--count` streams (its
//! first line is awaited, then Ctrl-C, exit 0); everything else runs to
//! completion and must exit 0 with some output.
//!
//! A line can say what it needs with a trailing `# needs: NAME[, NAME]`:
//! `minutes` (too long for a test: always skipped, named in the output);
//! any other NAME is a service the runner provides by listing it in
//! `LABMESH_TOUR_PROVIDES` (comma-separated, e.g. exported by `.ci/run`
//! after starting it). A line whose need is not provided is skipped with a
//! printed reason, and fails the test when `CI=true`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use labmesh_client::{Client, ClientOptions};
use labmesh_tests::free_port;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use crate::BIN;

/// One line of the tour.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TourLine {
    /// The command as written (comment removed).
    pub(crate) command: String,
    /// Its `# needs:` names.
    pub(crate) needs: Vec<String>,
}

/// The commands of the first ```sh block after `## CLI tour`.
pub(crate) fn tour_lines(readme: &str) -> anyhow::Result<Vec<TourLine>> {
    let after = readme
        .split_once("\n## CLI tour")
        .map(|(_, rest)| rest)
        .context("README has no `## CLI tour` section")?;
    let block = after
        .split_once("```sh\n")
        .map(|(_, rest)| rest)
        .context("no ```sh block in the CLI tour")?;
    let block = block
        .split_once("\n```")
        .map(|(b, _)| b)
        .context("unterminated ```sh block")?;
    let mut out = Vec::new();
    for raw in block.lines() {
        let (command, comment) = split_comment(raw);
        let command = command.trim();
        if command.is_empty() {
            continue;
        }
        let needs = comment
            .and_then(|c| c.split_once("needs:"))
            .map(|(_, n)| {
                n.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        out.push(TourLine {
            command: command.to_string(),
            needs,
        });
    }
    Ok(out)
}

/// A shell line's command and its `#` comment (a `#` after whitespace,
/// outside quotes).
fn split_comment(line: &str) -> (&str, Option<&str>) {
    let (mut single, mut double) = (false, false);
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev_space => {
                return (&line[..i], Some(&line[i + 1..]));
            }
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    (line, None)
}

/// How a line runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Node,
    Stream,
    OneShot,
}

fn kind(command: &str) -> Kind {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.get(1).copied() {
        Some("broker" | "relay" | "bank" | "sim" | "web") => Kind::Node,
        Some("watch") if !words.contains(&"--count") => Kind::Stream,
        _ => Kind::OneShot,
    }
}

/// The simulators' fixed ports in the tour, each moved to a free port.
struct Ports(HashMap<&'static str, u16>);

impl Ports {
    fn new() -> anyhow::Result<Ports> {
        let mut m = HashMap::new();
        for k in ["5025", "vxi11", "hislip", "prologix"] {
            m.insert(k, free_port()?);
        }
        Ok(Ports(m))
    }

    /// `line` with the simulators' ports replaced.
    fn adapt(&self, line: &str) -> String {
        let mut out = line.replace(":5025", &format!(":{}", self.0["5025"]));
        for (flag, key) in [
            ("--vxi11", "vxi11"),
            ("--hislip", "hislip"),
            ("--prologix", "prologix"),
        ] {
            // `--vxi11 HOST` (default port) becomes `--vxi11 HOST:PORT`.
            let words: Vec<String> = out.split(' ').map(str::to_string).collect();
            let mut w2 = Vec::with_capacity(words.len());
            let mut next_is_host = false;
            for w in words {
                if next_is_host && !w.is_empty() {
                    next_is_host = false;
                    if !w.contains(':') {
                        w2.push(format!("{w}:{}", self.0[key]));
                        continue;
                    }
                }
                if w == flag {
                    next_is_host = true;
                }
                w2.push(w);
            }
            out = w2.join(" ");
        }
        out
    }
}

/// A started node.
struct Running {
    command: String,
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
}

fn shell(dir: &Path, command: &str) -> tokio::process::Command {
    let bin_dir = Path::new(BIN).parent().unwrap_or(Path::new("."));
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = tokio::process::Command::new("sh");
    // `exec`, so the signal at the end reaches labmesh itself.
    c.arg("-c")
        .arg(format!("exec {command}"))
        .current_dir(dir)
        .env("PATH", path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Start `command` and wait (bounded) for its first stdout line.
async fn start(dir: &Path, command: &str, limit: Duration) -> anyhow::Result<(Running, String)> {
    let mut child = shell(dir, command)
        .spawn()
        .with_context(|| format!("spawn {command}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, mut lines) = mpsc::unbounded_channel();
    let tag = command.to_string();
    tokio::spawn(async move {
        let mut rd = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(l)) = rd.next_line().await {
            eprintln!("[{tag}] {l}");
            let _ = tx.send(l);
        }
    });
    let tag = command.to_string();
    tokio::spawn(async move {
        let mut rd = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(l)) = rd.next_line().await {
            eprintln!("[{tag} !] {l}");
        }
    });
    let first = tokio::time::timeout(limit, lines.recv())
        .await
        .with_context(|| format!("`{command}` printed nothing within {limit:?}"))?;
    let Some(first) = first else {
        let status = child.wait().await?;
        bail!("`{command}` exited ({status}) before printing anything");
    };
    Ok((
        Running {
            command: command.to_string(),
            child,
            lines,
        },
        first,
    ))
}

fn signal(pid: Option<u32>, sig: &str) -> anyhow::Result<()> {
    let pid = pid.context("no pid")?;
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    anyhow::ensure!(st.success(), "kill {sig} {pid} failed");
    Ok(())
}

/// Wait (bounded) until the broker lists every id in `relays` and `banks`.
async fn listed(c: &Client, relays: &[String], banks: &[String]) -> anyhow::Result<()> {
    let limit = Duration::from_secs(20);
    tokio::time::timeout(limit, async {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            let (Ok(r), Ok(b)) = (c.list_relays().await, c.list_banks().await) else {
                continue;
            };
            let ok = relays.iter().all(|id| r.iter().any(|x| &x.relay_id == id))
                && banks.iter().all(|id| b.iter().any(|x| &x.bank_id == id));
            if ok {
                return;
            }
        }
    })
    .await
    .with_context(|| format!("broker did not list {relays:?} {banks:?} within {limit:?}"))
}

fn flag_value(command: &str, flag: &str) -> Option<String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    words
        .iter()
        .position(|w| *w == flag)
        .and_then(|i| words.get(i + 1))
        .map(|s| s.trim_matches('\'').to_string())
}

/// The ids of the `[[relay.instruments]]` the tour's file lists.
const FILE_INSTRUMENTS: [&str; 2] = ["lab-psu-a", "lab-psu-b"];

fn write_tour_config(dir: &Path) -> anyhow::Result<(String, String)> {
    let (p1, p2, p3) = (free_port()?, free_port()?, free_port()?);
    let (relay, ingest, retrieve) = (free_port()?, free_port()?, free_port()?);
    let web = free_port()?;
    let instruments: String = FILE_INSTRUMENTS
        .iter()
        .map(|id| format!("\n[[relay.instruments]]\nid = \"{id}\"\ndriver = \"mock-psu\"\nrpc_bind = \"tcp://127.0.0.1:*\"\n"))
        .collect();
    let text = format!(
        r#"# The labmesh defaults with free ports (written by the README tour test).
[broker]
rpc_bind = "tcp://127.0.0.1:{p1}"
xsub_bind = "tcp://127.0.0.1:{p2}"
xpub_bind = "tcp://127.0.0.1:{p3}"
address = "127.0.0.1"

[relay]
default_rpc_bind = "tcp://127.0.0.1:{relay}"
broker_rpc = "tcp://BROKER:{p1}"
broker_xsub = "tcp://BROKER:{p2}"
default_address = "127.0.0.1"

[bank]
ingest_bind = "tcp://127.0.0.1:{ingest}"
retrieve_bind = "tcp://127.0.0.1:{retrieve}"
broker_rpc = "tcp://BROKER:{p1}"
broker_xsub = "tcp://BROKER:{p2}"
default_address = "127.0.0.1"

[client]
broker_rpc = "tcp://BROKER:{p1}"
broker_xpub = "tcp://BROKER:{p3}"

[web]
listen = "127.0.0.1:{web}"
{instruments}"#
    );
    std::fs::write(dir.join("labmesh.toml"), text)?;
    Ok((
        format!("tcp://127.0.0.1:{p1}"),
        format!("tcp://127.0.0.1:{p3}"),
    ))
}

fn readme() -> anyhow::Result<String> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&p).with_context(|| p.display().to_string())
}

#[test]
fn tour_lines_are_read_with_their_needs() -> anyhow::Result<()> {
    let md = "x\n## CLI tour\ntext\n```sh\nlabmesh broker   # a\n\nlabmesh relay --rpc 'tcp://*:*'   # b # needs: s3, minutes\n```\n```sh\nnot this\n```\n";
    let lines = tour_lines(md)?;
    assert_eq!(
        lines,
        vec![
            TourLine {
                command: "labmesh broker".into(),
                needs: vec![]
            },
            TourLine {
                command: "labmesh relay --rpc 'tcp://*:*'".into(),
                needs: vec!["s3".into(), "minutes".into()]
            },
        ]
    );
    assert!(!tour_lines(&readme()?)?.is_empty());
    let p = Ports::new()?;
    let v = p.0["vxi11"];
    assert_eq!(
        p.adapt("labmesh sim psu --vxi11 127.0.0.1   "),
        format!("labmesh sim psu --vxi11 127.0.0.1:{v}   ")
    );
    assert_eq!(kind("labmesh watch --all"), Kind::Stream);
    assert_eq!(kind("labmesh watch psu-1 --count 5"), Kind::OneShot);
    Ok(())
}

/// Every command of the README's CLI tour runs as written, in order,
/// against the real nodes the earlier lines started.
#[tokio::test]
async fn readme_cli_tour_runs_as_written() -> anyhow::Result<()> {
    let lines = tour_lines(&readme()?)?;
    let dir = std::env::temp_dir().join(format!(
        "labmesh-tour-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    let result = run_tour(&dir, &lines).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_tour(dir: &Path, lines: &[TourLine]) -> anyhow::Result<()> {
    let (rpc, xpub) = write_tour_config(dir)?;
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("run42.h5"), &payload)?;
    let ports = Ports::new()?;
    let provided: Vec<String> = std::env::var("LABMESH_TOUR_PROVIDES")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let ctx = zmq::Context::new();
    let mut client: Option<Client> = None;
    let mut nodes: Vec<Running> = Vec::new();
    let mut dataset_id: Option<String> = None;
    let mut ran = 0usize;
    let mut missing = Vec::new();
    for line in lines {
        let unmet: Vec<&String> = line
            .needs
            .iter()
            .filter(|n| !provided.contains(n))
            .collect();
        if !unmet.is_empty() {
            eprintln!(
                "README tour: skipping `{}`: needs {unmet:?} (not in LABMESH_TOUR_PROVIDES)",
                line.command
            );
            if ci && unmet.iter().any(|n| n.as_str() != "minutes") {
                missing.push(format!("{} (needs {unmet:?})", line.command));
            }
            continue;
        }
        let mut command = ports.adapt(&line.command);
        if command.contains("<dataset_id>") {
            let id = dataset_id
                .as_deref()
                .context("a `<dataset_id>` line before any upload")?;
            command = command.replace("<dataset_id>", id);
        }
        eprintln!("README tour $ {command}");
        match kind(&command) {
            Kind::Node => {
                let (node, first) = start(dir, &command, Duration::from_secs(30)).await?;
                let sub = command.split_whitespace().nth(1).unwrap_or_default();
                if sub == "broker" && client.is_none() {
                    let opts = ClientOptions {
                        timeout: Duration::from_secs(3),
                        ..ClientOptions::new(&rpc, &xpub)
                    };
                    client = Some(Client::connect(&ctx, opts).await?);
                }
                let (relays, banks): (Vec<String>, Vec<String>) = match sub {
                    "relay" => match flag_value(&command, "--relay-id") {
                        Some(id) => (vec![id], vec![]),
                        None => (FILE_INSTRUMENTS.map(String::from).to_vec(), vec![]),
                    },
                    "bank" => (
                        vec![],
                        vec![flag_value(&command, "--bank-id").unwrap_or_else(|| "bank-0".into())],
                    ),
                    _ => (vec![], vec![]),
                };
                if !(relays.is_empty() && banks.is_empty()) {
                    let c = client.as_ref().context("a node line before the broker's")?;
                    listed(c, &relays, &banks)
                        .await
                        .with_context(|| format!("`{command}` (printed {first:?})"))?;
                }
                nodes.push(node);
            }
            Kind::Stream => {
                let (mut s, first) = start(dir, &command, Duration::from_secs(30)).await?;
                anyhow::ensure!(!first.trim().is_empty(), "`{command}`: empty first line");
                signal(s.child.id(), "-INT")?;
                let status = tokio::time::timeout(Duration::from_secs(10), s.child.wait())
                    .await
                    .with_context(|| format!("`{command}` ignored Ctrl-C"))??;
                anyhow::ensure!(status.success(), "`{command}` after Ctrl-C: {status}");
            }
            Kind::OneShot => {
                let limit = Duration::from_secs(120);
                let out = tokio::time::timeout(limit, shell(dir, &command).output())
                    .await
                    .with_context(|| format!("`{command}` still running after {limit:?}"))??;
                let stdout = String::from_utf8_lossy(&out.stdout);
                let stderr = String::from_utf8_lossy(&out.stderr);
                eprintln!("{stdout}{stderr}");
                anyhow::ensure!(
                    out.status.success(),
                    "`{command}` exited {}: {stderr}",
                    out.status
                );
                anyhow::ensure!(!stdout.trim().is_empty(), "`{command}` printed nothing");
                if command.split_whitespace().nth(1) == Some("upload") {
                    let v: serde_json::Value =
                        serde_json::from_str(stdout.lines().last().unwrap_or_default())
                            .with_context(|| format!("upload printed {stdout:?}"))?;
                    dataset_id = v["dataset_id"].as_str().map(str::to_string);
                }
                if command.split_whitespace().nth(1) == Some("get") {
                    if let Some(o) = flag_value(&command, "-o") {
                        let got = std::fs::read(dir.join(&o))?;
                        anyhow::ensure!(got == payload, "`{command}`: {o} differs from run42.h5");
                    }
                }
            }
        }
        ran += 1;
    }
    anyhow::ensure!(
        missing.is_empty(),
        "CI=true and README tour lines need what the runner does not provide: {missing:?}"
    );
    // Every node stops cleanly on SIGTERM.
    let mut bad = Vec::new();
    for mut n in nodes.into_iter().rev() {
        signal(n.child.id(), "-TERM")?;
        match tokio::time::timeout(Duration::from_secs(15), n.child.wait()).await {
            Ok(Ok(st)) if st.success() => {}
            other => bad.push(format!("{}: {other:?}", n.command)),
        }
        while n.lines.try_recv().is_ok() {}
    }
    anyhow::ensure!(bad.is_empty(), "nodes that did not stop cleanly: {bad:?}");
    eprintln!("README tour: {ran} of {} lines ran", lines.len());
    anyhow::ensure!(ran >= 10, "only {ran} tour lines ran");
    Ok(())
}
