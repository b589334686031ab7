//! `labmesh relay` hosting the file's `[[relay.instruments]]`: SIGHUP
//! re-reads the file and adds, removes and restarts instruments without
//! touching the others (`labmesh_relay::reload::RelaySet`).

use std::process::ExitCode;

use labmesh_config::Config;
use labmesh_drivers::DriverRegistry;
use labmesh_relay::reload::RelaySet;
use labmesh_relay::{RelayError, RelayOptions};

use crate::common::{driver_registry, shutdown_signal};

/// Start the instruments of `cfg`, print the banner, and serve until Ctrl-C
/// / SIGTERM, reloading on SIGHUP with `reload` (the file with the flags'
/// overrides). A reload that fails (an invalid file, a driver that refuses
/// its table) is logged and changes nothing it cannot apply: the running
/// instruments stay.
pub async fn serve_reloading(
    ctx: &zmq::Context,
    cfg: &Config,
    registry: &DriverRegistry,
    reload: impl Fn() -> anyhow::Result<Config>,
) -> anyhow::Result<ExitCode> {
    let mut set = RelaySet::start(ctx, RelayOptions::from_config(cfg), cfg, registry)
        .await
        .map_err(|e| match e {
            // Its Display already ends with the source.
            RelayError::Driver { id, source } => {
                anyhow::Error::new(source).context(format!("instrument {id}"))
            }
            e => super::relay::bind_hint(e.into()),
        })?;
    crate::memory::keep_trimmed();
    for s in set.served() {
        println!("relay {}: {}", s.relay_id, s.rpc_endpoint);
        for l in &s.lan {
            println!("  LAN {} {}: {}", l.protocol, l.addr, l.visa);
        }
    }
    let mut hup = hangups()?;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = hup.recv() => {}
        }
        tracing::info!("SIGHUP: reloading [[relay.instruments]]");
        let new = match reload().and_then(|c| Ok((driver_registry(&c)?, c))) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(
                    "reload refused, instruments unchanged: {}",
                    crate::exit::render(&e)
                );
                continue;
            }
        };
        let (registry, new) = new;
        let r = set.reload(&new, &registry).await;
        for s in r.added.iter().chain(&r.restarted) {
            println!("relay {}: {}", s.relay_id, s.rpc_endpoint);
        }
        for (id, why) in &r.failed {
            tracing::error!(relay_id = %id, "instrument not (re)started: {why}");
        }
        if !r.ignored.is_empty() {
            tracing::warn!(
                keys = %r.ignored.join(", "),
                "changed keys apply only after a restart of the relay"
            );
        }
        tracing::info!(
            added = %ids(r.added.iter().map(|s| &s.relay_id)),
            removed = %ids(r.removed.iter()),
            restarted = %ids(r.restarted.iter().map(|s| &s.relay_id)),
            unchanged = %ids(r.unchanged.iter()),
            "reloaded"
        );
    }
    tracing::info!("shutting down");
    set.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn ids<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(String::as_str).collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// SIGHUP as a stream (never fires off Unix).
struct Hangups {
    #[cfg(unix)]
    sig: tokio::signal::unix::Signal,
}

impl Hangups {
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            if self.sig.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await
    }
}

fn hangups() -> anyhow::Result<Hangups> {
    Ok(Hangups {
        #[cfg(unix)]
        sig: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
    })
}
