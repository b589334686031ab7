//! Instruments started and stopped one by one, for reloading
//! `[[relay.instruments]]` while the others keep running (`labmesh relay`
//! on SIGHUP).
//!
//! A [`RelaySet`] runs each instrument as its own single-instrument relay
//! ([`spawn`]: its ROUTER, its state PUB, its registration with the
//! broker), so one can stop (saying `bye`, so the broker lists it offline
//! at once) or start without touching the others. [`RelaySet::reload`]
//! compares a new configuration with the running one: instruments that
//! disappeared stop, new ones start, and ones whose table changed (driver,
//! resource, options, bind, poll interval, call timeout) restart; the rest
//! are not touched: their sockets, their state sequence and the calls they
//! are serving go on.
//!
//! Only `[[relay.instruments]]` (and `[relay] state_interval`, as the
//! default poll interval) are reloaded. The other `[relay]` and `[broker]`
//! keys (broker endpoints, heartbeat, advertised host) are read at start;
//! a change to them is reported by [`ReloadReport::ignored`].

use std::collections::BTreeMap;
use std::time::Duration;

use labmesh_config::{Config, InstrumentSection};
use labmesh_drivers::DriverRegistry;

use crate::{hosted_from_config, spawn, RelayError, RelayHandle, RelayOptions, Served};

/// How long a restarted instrument retries binding a fixed port that its
/// previous incarnation is still releasing.
const REBIND_FOR: Duration = Duration::from_secs(3);

/// What [`RelaySet::reload`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Started (new ids), with their endpoints.
    pub added: Vec<Served>,
    /// Stopped (ids no longer in the file).
    pub removed: Vec<String>,
    /// Restarted with their new table.
    pub restarted: Vec<Served>,
    /// Running as before.
    pub unchanged: Vec<String>,
    /// Instruments that could not start (id, why); the others run.
    pub failed: Vec<(String, String)>,
    /// Changed keys that only a restart of the process applies.
    pub ignored: Vec<String>,
}

/// One running instrument and the table it was started from.
#[derive(Debug)]
struct Member {
    wanted: Wanted,
    handle: RelayHandle,
}

/// What an instrument is started from: its table with the bind and poll
/// interval resolved (so a change of `default_rpc_bind` or
/// `state_interval` that affects it counts as a change).
#[derive(Debug, Clone, PartialEq)]
struct Wanted {
    section: InstrumentSection,
}

/// Instruments run one by one (see the module docs).
pub struct RelaySet {
    ctx: zmq::Context,
    opts: RelayOptions,
    members: BTreeMap<String, Member>,
    /// The process-level keys at start, to report changes to them.
    fixed: Vec<(String, String)>,
}

impl std::fmt::Debug for RelaySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelaySet")
            .field("members", &self.members)
            .finish()
    }
}

/// The keys a reload does not apply, with their values.
fn fixed_keys(cfg: &Config) -> Vec<(String, String)> {
    vec![
        ("broker.address".into(), cfg.broker.address.clone()),
        ("relay.broker_rpc".into(), cfg.relay.broker_rpc.clone()),
        ("relay.broker_xsub".into(), cfg.relay.broker_xsub.clone()),
        (
            "relay.default_address".into(),
            cfg.relay.default_address.clone(),
        ),
        (
            "relay.heartbeat_seconds".into(),
            cfg.relay.heartbeat_seconds.to_string(),
        ),
    ]
}

/// Every instrument of `cfg` with its bind and poll interval resolved as
/// [`hosted_from_config`] would resolve them.
fn wanted(cfg: &Config) -> Vec<Wanted> {
    let mut default_taken = false;
    cfg.relay
        .instruments
        .iter()
        .map(|inst| {
            let mut section = inst.clone();
            if section.rpc_bind.is_none() {
                section.rpc_bind = Some(if default_taken {
                    crate::ephemeral_like(&cfg.relay.default_rpc_bind)
                } else {
                    default_taken = true;
                    cfg.relay.default_rpc_bind.clone()
                });
            }
            if section.poll_interval.is_none() {
                section.poll_interval = Some(cfg.relay.state_interval);
            }
            Wanted { section }
        })
        .collect()
}

/// `cfg` hosting only `w`.
fn only(cfg: &Config, w: &Wanted) -> Config {
    Config {
        relay: labmesh_config::RelaySection {
            instruments: vec![w.section.clone()],
            ..cfg.relay.clone()
        },
        ..cfg.clone()
    }
}

impl RelaySet {
    /// Start every instrument of `cfg`. Fails (stopping what started) if
    /// one cannot start: at start, a broken file stops the relay.
    pub async fn start(
        ctx: &zmq::Context,
        opts: RelayOptions,
        cfg: &Config,
        registry: &DriverRegistry,
    ) -> Result<RelaySet, RelayError> {
        let mut set = RelaySet {
            ctx: ctx.clone(),
            opts,
            members: BTreeMap::new(),
            fixed: fixed_keys(cfg),
        };
        for w in wanted(cfg) {
            match set.start_one(cfg, registry, w, false).await {
                Ok(_) => {}
                Err(e) => {
                    set.shutdown().await;
                    return Err(e);
                }
            }
        }
        Ok(set)
    }

    /// The running instruments and their endpoints, by id.
    pub fn served(&self) -> Vec<Served> {
        self.members
            .values()
            .flat_map(|m| m.handle.served().iter().cloned())
            .collect()
    }

    async fn start_one(
        &mut self,
        cfg: &Config,
        registry: &DriverRegistry,
        w: Wanted,
        retry_bind: bool,
    ) -> Result<Served, RelayError> {
        let one = only(cfg, &w);
        let deadline = tokio::time::Instant::now() + REBIND_FOR;
        let handle = loop {
            let hosted = hosted_from_config(&one, registry).await?;
            match spawn(&self.ctx, self.opts.clone(), hosted).await {
                Err(RelayError::Wire(labmesh_wire::WireError::Bind { .. }))
                    if retry_bind && tokio::time::Instant::now() < deadline =>
                {
                    // The previous incarnation's port is still being
                    // released by libzmq's I/O thread.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other?,
            }
        };
        let served = handle.served().first().cloned().unwrap_or_else(|| Served {
            relay_id: w.section.id.clone(),
            rpc_endpoint: String::new(),
            lan: Vec::new(),
        });
        self.members
            .insert(w.section.id.clone(), Member { wanted: w, handle });
        Ok(served)
    }

    /// Apply `cfg`'s `[[relay.instruments]]`: stop the removed, start the
    /// new, restart the changed, leave the rest running. Never fails as a
    /// whole: an instrument that cannot start is in
    /// [`ReloadReport::failed`] and the others run.
    pub async fn reload(&mut self, cfg: &Config, registry: &DriverRegistry) -> ReloadReport {
        let mut report = ReloadReport::default();
        let now = fixed_keys(cfg);
        for ((k, before), (_, after)) in self.fixed.iter().zip(&now) {
            if before != after {
                report.ignored.push(k.clone());
            }
        }
        let wanted = wanted(cfg);
        // Stop what is gone or changed first (frees ports and ids).
        let mut restart = Vec::new();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let keep = wanted.iter().find(|w| w.section.id == id);
            let same = keep.is_some_and(|w| self.members.get(&id).is_some_and(|m| &m.wanted == w));
            if same {
                report.unchanged.push(id);
                continue;
            }
            if let Some(w) = keep {
                // A new table the driver refuses leaves the old one running.
                if let Err(e) = hosted_from_config(&only(cfg, w), registry).await {
                    report.failed.push((id, e.to_string()));
                    continue;
                }
            }
            if let Some(m) = self.members.remove(&id) {
                m.handle.shutdown().await;
            }
            match keep {
                Some(_) => restart.push(id),
                None => report.removed.push(id),
            }
        }
        for w in wanted {
            let id = w.section.id.clone();
            if self.members.contains_key(&id) || report.failed.iter().any(|(f, _)| f == &id) {
                continue;
            }
            let again = restart.contains(&id);
            match self.start_one(cfg, registry, w, again).await {
                Ok(s) if again => report.restarted.push(s),
                Ok(s) => report.added.push(s),
                Err(e) => report.failed.push((id, e.to_string())),
            }
        }
        report
    }

    /// Stop every instrument (each says goodbye to the broker).
    pub async fn shutdown(self) {
        for (_, m) in self.members {
            m.handle.shutdown().await;
        }
    }
}
