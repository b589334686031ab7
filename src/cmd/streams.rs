//! `labmesh streams`, `labmesh stream ...`, `labmesh describe`, and the
//! stream half of `labmesh watch --stream`.

use std::process::ExitCode;

use anyhow::Context;
use labmesh_client::{Client, ClientError, Receive, RecvError, Sample};
use labmesh_proto::stream::{StreamChanged, StreamSpec};
use serde_json::Value;

use crate::common::{connect, parse_kv, shutdown_signal, Global};

/// What a remote error exits with (as `labmesh call`).
fn remote(e: ClientError) -> anyhow::Result<ExitCode> {
    match e {
        e @ (ClientError::Remote { .. }
        | ClientError::Timeout { .. }
        | ClientError::NotFound(_)) => {
            eprintln!("labmesh: {e}");
            Ok(ExitCode::from(2))
        }
        e => Err(e.into()),
    }
}

/// A rate flag: finite, within the stream limits.
fn hz_flag(s: &str) -> Result<f64, String> {
    let hz: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if labmesh_proto::stream::valid_hz(hz) {
        Ok(hz)
    } else {
        Err(format!(
            "{hz} Hz is outside {}..={}",
            labmesh_proto::stream::MIN_HZ,
            labmesh_proto::stream::MAX_HZ
        ))
    }
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Relay id.
    relay: String,
    /// Print the raw `lm.streams` result.
    #[arg(long)]
    json: bool,
}

/// `labmesh streams RELAY`: each stream with its rate and health.
pub async fn list(a: ListArgs, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let client = connect(global, ctx).await?;
    let r = match client.relay(&a.relay).await {
        Ok(r) => r,
        Err(e) => return remote(e),
    };
    let s = match r.streams().await {
        Ok(s) => s,
        Err(e) => return remote(e),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    if s.streams.is_empty() {
        println!("{}: no streams", s.relay_id);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<20} {:>9} {:>9} {:>7} {:>12} {:>8} {:>8}  LAST ERROR",
        "NAME", "METHOD", "HZ", "ACTUAL", "ON", "JITTER p99", "MISSED", "ERRORS"
    );
    for st in &s.streams {
        let method = if st.push {
            format!("{} (push)", st.spec.method)
        } else {
            st.spec.method.clone()
        };
        let hz = if st.push {
            "-".to_string()
        } else {
            format!("{}", st.spec.hz)
        };
        println!(
            "{:<16} {:<20} {:>9} {:>9.2} {:>7} {:>10.3}ms {:>8} {:>8}  {}",
            st.spec.name,
            method,
            hz,
            st.actual_hz,
            if st.spec.enabled { "yes" } else { "no" },
            st.jitter_p99_s * 1e3,
            st.missed,
            st.errors,
            st.last_error
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Subcommand)]
pub enum Control {
    /// Start publishing a stream.
    Enable {
        /// Relay id.
        relay: String,
        /// Stream name.
        name: String,
    },
    /// Stop publishing a stream (it keeps its definition).
    Disable {
        /// Relay id.
        relay: String,
        /// Stream name.
        name: String,
    },
    /// Add a stream (or replace the one of that name): NAME calls METHOD
    /// with `key=value` params at --hz.
    Add {
        /// Relay id.
        relay: String,
        /// Stream name (letters, digits, '_', '-').
        name: String,
        /// The instrument method to call.
        method: String,
        /// Named parameters `key=value`; values are JSON when they parse.
        params: Vec<String>,
        /// Samples per second (0.001..=20000).
        #[arg(long, value_parser = hz_flag)]
        hz: f64,
        /// Add it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Remove a stream (removing a missing one is not an error).
    Remove {
        /// Relay id.
        relay: String,
        /// Stream name.
        name: String,
    },
    /// Change a stream's rate.
    Rate {
        /// Relay id.
        relay: String,
        /// Stream name.
        name: String,
        /// Samples per second (0.001..=20000).
        #[arg(value_parser = hz_flag)]
        hz: f64,
    },
}

/// `labmesh stream enable|disable|add|remove|rate`.
pub async fn control(c: Control, global: &Global, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let client = connect(global, ctx).await?;
    let relay_id = match &c {
        Control::Enable { relay, .. }
        | Control::Disable { relay, .. }
        | Control::Add { relay, .. }
        | Control::Remove { relay, .. }
        | Control::Rate { relay, .. } => relay.clone(),
    };
    let r = match client.relay(&relay_id).await {
        Ok(r) => r,
        Err(e) => return remote(e),
    };
    let done: Result<StreamChanged, ClientError> = match c {
        Control::Enable { name, .. } => r.stream_enable(&name, true).await,
        Control::Disable { name, .. } => r.stream_enable(&name, false).await,
        Control::Remove { name, .. } => r.stream_remove(&name).await,
        Control::Rate { name, hz, .. } => r.stream_set_rate(&name, hz).await,
        Control::Add {
            name,
            method,
            params,
            hz,
            disabled,
            ..
        } => {
            let params = parse_kv(&params)?;
            let spec = StreamSpec {
                name,
                method,
                params: if params.is_empty() {
                    Value::Null
                } else {
                    Value::Object(params)
                },
                hz,
                enabled: !disabled,
            };
            r.stream_add(&spec).await
        }
    };
    match done {
        Ok(d) => {
            println!("{}", serde_json::to_string(&d)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => remote(e),
    }
}

/// `labmesh watch RELAY --stream NAME [--cache | --queue N]`.
pub async fn watch(
    client: &Client,
    relay: &str,
    stream: &str,
    mode: Receive,
    count: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let sub = match client.subscribe_stream(relay, stream, mode).await {
        Ok(s) => s,
        Err(e) => return remote(e),
    };
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut seen = 0u64;
    let mut reported = Default::default();
    loop {
        let s = tokio::select! {
            _ = &mut stop => break,
            s = sub.recv() => s,
        };
        let s: Sample = match s {
            Ok(s) => s,
            Err(RecvError::Closed) => break,
            Err(RecvError::Empty) => continue,
        };
        print_sample(&s, json)?;
        let st = sub.stats();
        if st != reported && (st.dropped, st.gaps) != (reported.dropped, reported.gaps) {
            eprintln!(
                "labmesh: {} dropped (queue full), {} lost on the way (seq gaps)",
                st.dropped, st.gaps
            );
        }
        reported = st;
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_sample(s: &Sample, json: bool) -> anyhow::Result<()> {
    let h = &s.header;
    if json {
        println!("{}", serde_json::to_string(h)?);
        return Ok(());
    }
    let what = match (&h.value, &h.error, h.binary) {
        (_, Some(e), _) => format!("error {e}"),
        (_, _, Some(n)) => format!("<{n} bytes>"),
        (Some(v), _, _) => v.to_string(),
        _ => "null".to_string(),
    };
    println!(
        "[{}.{} #{} t={:.6}] {what}",
        h.relay_id, h.stream, h.seq, h.t_wall
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct DescribeArgs {
    /// Relay id.
    relay: String,
    /// Print the raw `lm.describe` result.
    #[arg(long)]
    json: bool,
}

/// `labmesh describe RELAY`: methods (params, units, ranges, read-only),
/// streams, driver and identity.
pub async fn describe(
    a: DescribeArgs,
    global: &Global,
    ctx: &zmq::Context,
) -> anyhow::Result<ExitCode> {
    let client = connect(global, ctx).await?;
    let d = match client.call(&a.relay, "lm.describe", Value::Null).await {
        Ok(d) => d,
        Err(e) => return remote(e),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(ExitCode::SUCCESS);
    }
    let d: labmesh_proto::lm::DescribeResult =
        serde_json::from_value(d).context("lm.describe answered an unexpected shape")?;
    print!("{}", render_description(&d));
    Ok(ExitCode::SUCCESS)
}

/// The readable form of a description.
pub fn render_description(d: &labmesh_proto::lm::DescribeResult) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let desc = &d.description;
    let _ = writeln!(o, "relay     {}", d.relay_id);
    let _ = writeln!(
        o,
        "driver    {}{}",
        desc.driver,
        d.driver_version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "identity  {}",
        desc.identity.as_deref().unwrap_or("(not known yet)")
    );
    let _ = writeln!(o, "methods");
    for m in &desc.methods {
        let params: Vec<String> = m
            .params
            .iter()
            .map(|p| {
                let mut s = format!(
                    "{}: {}",
                    p.name,
                    serde_json::to_value(p.ty)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                );
                if let Some(u) = &p.unit {
                    let _ = write!(s, " [{u}]");
                }
                match (p.min, p.max) {
                    (Some(lo), Some(hi)) => {
                        let _ = write!(s, " {lo}..={hi}");
                    }
                    (Some(lo), None) => {
                        let _ = write!(s, " >= {lo}");
                    }
                    (None, Some(hi)) => {
                        let _ = write!(s, " <= {hi}");
                    }
                    (None, None) => {}
                }
                if let Some(def) = &p.default {
                    let _ = write!(s, " = {def}");
                }
                s
            })
            .collect();
        let _ = writeln!(
            o,
            "  {}({}){}{}",
            m.name,
            params.join(", "),
            if m.read_only { "  read-only" } else { "" },
            if m.doc.is_empty() {
                String::new()
            } else {
                format!("  -- {}", m.doc)
            }
        );
    }
    if !d.streams.is_empty() {
        let _ = writeln!(o, "streams");
        for s in &d.streams {
            let _ = writeln!(
                o,
                "  {} = {}({}) at {} Hz{}",
                s.name,
                s.method,
                if s.params.is_null() {
                    String::new()
                } else {
                    s.params.to_string()
                },
                s.hz,
                if s.enabled { "" } else { " (disabled)" }
            );
        }
    }
    o
}
