//! Cascading: a broker that joins a parent broker.
//!
//! * **Directory**: every relay and bank registered here is registered in
//!   the parent too, at the endpoint it registered here (`advertise =
//!   "direct"`: the parent's clients must be able to reach it), with its own
//!   registration token and heartbeats, and said goodbye to when it leaves.
//!   A clash with an id registered elsewhere in the tree is the parent's
//!   409, logged here naming both.
//! * **Bus**: with a parent, this broker's bus is not `zmq::proxy` but the
//!   loop below, which knows where each message and subscription came from:
//!
//!   | from | to |
//!   | --- | --- |
//!   | a local publisher (our XSUB) | local subscribers; the parent (except `presence.`: the parent makes its own) |
//!   | the parent (`down`, an XSUB connected to its XPUB) | local subscribers, unless the topic's id is registered here (our own message coming back) |
//!   | a local subscription (our XPUB) | local publishers; the parent |
//!   | a parent subscription (`up`, an XPUB connected to its XSUB) | local publishers only |
//!
//!   So only topics someone subscribed to cross a link, a message crosses
//!   each link at most once, and chains of brokers have no loops.
//!
//!   With CURVE on, a local publisher's message passes the same check as
//!   in the broker without a parent ([`crate::bus`]) before it goes
//!   anywhere. Messages from the parent are not checked again here: the
//!   parent checked them against its own registrations.
//! * **Keys**: with CURVE on, this broker registers our nodes in the parent
//!   with its own key, so in the parent those ids belong to this broker's
//!   key, and this broker's `up` socket (the same key) is what publishes
//!   their topics there. The parent trusts this broker for every id it
//!   registered `via` it; this broker checks its own publishers.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use labmesh_proto::mesh::{BankInfo, RelayInfo};
use labmesh_proto::topic;
use labmesh_wire::auth::Password;
use labmesh_wire::register::{keep_registered, Registrant};
use labmesh_wire::{DealerConn, SocketOptions};
use tokio::sync::watch;

use crate::gateway::Gateway;
pub use labmesh_config::Advertise;

pub(crate) use crate::bus::LocalIds;

/// The parent broker's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentOptions {
    /// The parent's directory (`tcp://gateway:5750`).
    pub rpc: String,
    /// The parent's bus XSUB (its publishers' side).
    pub xsub: String,
    /// The parent's bus XPUB (its subscribers' side).
    pub xpub: String,
    /// How our nodes are listed in the parent (`[broker] advertise`).
    pub advertise: Advertise,
    /// With [`Advertise::Gateway`]: where each proxied endpoint is bound
    /// (port `*`; `[broker] gateway_bind`).
    pub gateway_bind: String,
}

/// The id a topic belongs to: `state.<id>`, `dataset.<id>`,
/// `presence.<id>`, `lock.<id>`, `stream.<id>.<name>\0`.
fn owner(t: &[u8]) -> Option<&[u8]> {
    if let Some(rest) = t.strip_prefix(topic::STREAM_PREFIX.as_bytes()) {
        return topic::split_stream(rest).map(|(id, _)| id.as_bytes());
    }
    let dot = t.iter().position(|b| *b == b'.')?;
    Some(&t[dot + 1..])
}

fn is_local(local: &LocalIds, t: &[u8]) -> bool {
    let Some(id) = owner(t).and_then(|id| std::str::from_utf8(id).ok()) else {
        return false;
    };
    local.read().map(|s| s.contains(id)).unwrap_or(false)
}

/// The 409 for an id that a live node holds elsewhere, naming both owners:
/// `kind` (`relay`, `bank`), the id, and each side's endpoint with the
/// child broker that registered it (`via`), if any.
pub(crate) fn clash_message(
    kind: &str,
    id: &str,
    held: (&str, Option<&str>),
    refused: (&str, Option<&str>),
) -> String {
    let side = |(ep, via): (&str, Option<&str>)| match via {
        Some(b) => format!("{ep} (via broker {b})"),
        None => ep.to_string(),
    };
    format!(
        "{kind}_id '{id}' is already registered by a live {kind} at {}; refused for the {kind} at {}",
        side(held),
        side(refused)
    )
}

/// Sockets of the cascading bus loop.
pub(crate) struct BusSockets {
    pub(crate) xsub: zmq::Socket,
    pub(crate) xpub: zmq::Socket,
    pub(crate) up: zmq::Socket,
    pub(crate) down: zmq::Socket,
    pub(crate) ctl: zmq::Socket,
}

/// Open the two parent-facing sockets.
pub(crate) fn parent_sockets(
    ctx: &zmq::Context,
    parent: &ParentOptions,
    hwm: i32,
    max_msg: i64,
) -> Result<(zmq::Socket, zmq::Socket), zmq::Error> {
    let up = ctx.socket(zmq::XPUB)?;
    up.set_sndhwm(hwm)?;
    up.set_rcvhwm(hwm)?;
    up.set_linger(0)?;
    labmesh_wire::curve::prepare_connect(ctx, &up)?;
    up.connect(&parent.xsub)?;
    let down = ctx.socket(zmq::XSUB)?;
    down.set_sndhwm(hwm)?;
    down.set_rcvhwm(hwm)?;
    down.set_linger(0)?;
    down.set_maxmsgsize(max_msg)?;
    labmesh_wire::curve::prepare_connect(ctx, &down)?;
    down.connect(&parent.xpub)?;
    Ok((up, down))
}

fn forward(from: &zmq::Socket, to: &[&zmq::Socket], keep: impl Fn(&[u8]) -> Vec<bool>) {
    let Ok(frames) = from.recv_multipart(zmq::DONTWAIT) else {
        return;
    };
    let Some(first) = frames.first() else { return };
    let wanted = keep(first);
    for (sock, want) in to.iter().zip(wanted) {
        if !want {
            continue;
        }
        send_copy(sock, &frames);
    }
}

/// Send a whole message without blocking. A full peer drops it, as XPUB
/// does at its high-water mark; the rest of a message whose first frame
/// went always fits.
fn send_copy<F: std::ops::Deref<Target = [u8]>>(to: &zmq::Socket, frames: &[F]) {
    let n = frames.len();
    for (i, f) in frames.iter().enumerate() {
        let flags = if i + 1 < n {
            zmq::SNDMORE | zmq::DONTWAIT
        } else {
            zmq::DONTWAIT
        };
        if to.send(&**f, flags).is_err() {
            break;
        }
    }
}

/// The cascading bus loop (its own thread, like `zmq::proxy`). Ends on
/// `TERMINATE` on `ctl`.
/// With `guard` (CURVE on), local publishers' messages are checked.
pub(crate) fn bus_loop(s: BusSockets, local: LocalIds, guard: Option<crate::bus::Guard>) {
    loop {
        let mut items = [
            s.xsub.as_poll_item(zmq::POLLIN),
            s.xpub.as_poll_item(zmq::POLLIN),
            s.up.as_poll_item(zmq::POLLIN),
            s.down.as_poll_item(zmq::POLLIN),
            s.ctl.as_poll_item(zmq::POLLIN),
        ];
        if let Err(e) = zmq::poll(&mut items, -1) {
            if e == zmq::Error::EINTR {
                continue;
            }
            tracing::error!(error = %e, "cascading bus stopped");
            return;
        }
        let ready: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
        if ready[4] {
            if let Ok(m) = s.ctl.recv_bytes(zmq::DONTWAIT) {
                if m == b"TERMINATE" {
                    return;
                }
            }
        }
        // Drain each socket a bounded amount per round, fairly.
        for _ in 0..256 {
            let mut moved = false;
            if ready[0] && s.xsub.get_events().is_ok_and(|e| e.contains(zmq::POLLIN)) {
                let presence = |t: &[u8]| t.starts_with(topic::PRESENCE_PREFIX.as_bytes());
                match &guard {
                    None => forward(&s.xsub, &[&s.xpub, &s.up], |t| vec![true, !presence(t)]),
                    Some(g) => {
                        if let Some(frames) = crate::bus::recv_checked(&s.xsub, g) {
                            let up = frames.first().is_some_and(|t| !presence(t));
                            send_copy(&s.xpub, &frames);
                            if up {
                                send_copy(&s.up, &frames);
                            }
                        }
                    }
                }
                moved = true;
            }
            if ready[1] && s.xpub.get_events().is_ok_and(|e| e.contains(zmq::POLLIN)) {
                forward(&s.xpub, &[&s.xsub, &s.down], |_| vec![true, true]);
                moved = true;
            }
            if ready[2] && s.up.get_events().is_ok_and(|e| e.contains(zmq::POLLIN)) {
                forward(&s.up, &[&s.xsub], |_| vec![true]);
                moved = true;
            }
            if ready[3] && s.down.get_events().is_ok_and(|e| e.contains(zmq::POLLIN)) {
                forward(&s.down, &[&s.xpub], |t| vec![!is_local(&local, t)]);
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }
}

/// A node as mirrored: relay or bank, id, and its endpoints (a change of
/// endpoint registers it again).
type NodeKey = (bool, String, String, String);

/// One node kept registered in the parent.
struct Mirrored {
    key: NodeKey,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Keep every relay and bank of this broker registered in the parent:
/// reads our own directory every `every`, starts a registration for each
/// new node, says goodbye for each one gone.
/// What [`mirror_directory`] works with.
pub(crate) struct Mirror {
    pub(crate) ctx: zmq::Context,
    /// Our own directory endpoint.
    pub(crate) own_rpc: String,
    pub(crate) parent: ParentOptions,
    /// Host advertised for gateway endpoints (`[broker] address`).
    pub(crate) advertise_host: String,
    pub(crate) password: Password,
    pub(crate) heartbeat: Duration,
    /// How often our own directory is read.
    pub(crate) every: Duration,
}

pub(crate) async fn mirror_directory(m: Mirror, mut stop: watch::Receiver<bool>) {
    let Mirror {
        ctx,
        own_rpc,
        parent,
        advertise_host,
        password,
        heartbeat,
        every,
    } = m;
    let (own, up) = match (
        DealerConn::connect(&ctx, &own_rpc, SocketOptions::default()),
        DealerConn::connect(&ctx, &parent.rpc, SocketOptions::default()),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, parent = %parent.rpc, "cannot open the cascade's directory connections");
            return;
        }
    };
    let mut gateway = match &parent.advertise {
        Advertise::Direct => None,
        Advertise::Gateway => match Gateway::spawn(&ctx, &parent.gateway_bind, &advertise_host) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::error!(error = %e, bind = %parent.gateway_bind, "cannot start the cascade's gateway");
                return;
            }
        },
    };
    let mut mirrored: HashMap<(bool, String), Mirrored> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        let timeout = Duration::from_secs(2);
        let relays = own
            .rpc(
                labmesh_proto::lm::LIST_RELAY_IDS,
                serde_json::Value::Null,
                password.to_field(),
                timeout,
            )
            .await;
        let banks = own
            .rpc(
                labmesh_proto::lm::LIST_BANKS,
                serde_json::Value::Null,
                password.to_field(),
                timeout,
            )
            .await;
        let (Ok(Ok(relays)), Ok(Ok(banks))) = (relays, banks) else {
            tracing::debug!("cascade: own directory did not answer");
            continue;
        };
        let relays: Vec<RelayInfo> = serde_json::from_value(relays).unwrap_or_default();
        let banks: Vec<BankInfo> = serde_json::from_value(banks).unwrap_or_default();
        let mut want: HashMap<(bool, String), (NodeKey, Registrant)> = HashMap::new();
        // The endpoint the parent lists for one of ours; `None` when the
        // gateway cannot open it (logged; tried again next round).
        let mut targets = HashSet::new();
        let mut listed = |ep: &str| -> Option<String> {
            match gateway.as_mut() {
                None => Some(ep.to_string()),
                Some(_) if ep.is_empty() => Some(String::new()),
                Some(g) => {
                    targets.insert(ep.to_string());
                    match g.route(ep) {
                        Ok(gw) => Some(gw),
                        Err(e) => {
                            tracing::warn!(error = %e, target = ep, "gateway: cannot open an endpoint");
                            None
                        }
                    }
                }
            }
        };
        for r in relays {
            let Some(ep) = listed(&r.rpc_endpoint) else {
                continue;
            };
            let key = (true, r.relay_id.clone(), ep.clone(), String::new());
            let mut reg = Registrant::relay(&r.relay_id, &ep, &password);
            reg.hello.via = Some(own_rpc.clone());
            want.insert((true, r.relay_id), (key, reg));
        }
        for b in banks {
            let (Some(ing), Some(ret)) = (
                listed(b.ingest.as_deref().unwrap_or_default()),
                listed(b.retrieve.as_deref().unwrap_or_default()),
            ) else {
                continue;
            };
            let key = (false, b.bank_id.clone(), ing.clone(), ret.clone());
            let mut reg = Registrant::bank(&b.bank_id, &ing, &ret, &password);
            reg.hello.via = Some(own_rpc.clone());
            want.insert((false, b.bank_id), (key, reg));
        }
        // Gone, or changed endpoints: say goodbye (the new one registers).
        let stale: Vec<(bool, String)> = mirrored
            .iter()
            .filter(|(k, m)| want.get(*k).is_none_or(|(key, _)| *key != m.key))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(m) = mirrored.remove(&k) {
                tracing::info!(id = %k.1, parent = %parent.rpc, "cascade: leaving the parent");
                let _ = m.stop.send(true);
                let _ = m.task.await;
            }
        }
        if let Some(g) = gateway.as_mut() {
            g.retain(&targets);
        }
        for (k, (key, reg)) in want {
            if mirrored.contains_key(&k) {
                continue;
            }
            tracing::info!(id = %k.1, parent = %parent.rpc, "cascade: registering in the parent");
            let (tx, rx) = watch::channel(false);
            let task = tokio::spawn(keep_registered(up.clone(), vec![reg], heartbeat, rx));
            mirrored.insert(
                k,
                Mirrored {
                    key,
                    stop: tx,
                    task,
                },
            );
        }
    }
    for (_, m) in mirrored {
        let _ = m.stop.send(true);
        let _ = m.task.await;
    }
    if let Some(g) = gateway {
        g.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_owners() {
        assert_eq!(owner(b"state.psu-1"), Some(&b"psu-1"[..]));
        assert_eq!(owner(b"state.lab.psu"), Some(&b"lab.psu"[..]));
        assert_eq!(owner(&topic::stream("lab.psu", "v")), Some(&b"lab.psu"[..]));
        assert_eq!(owner(b"dataset.bank-0"), Some(&b"bank-0"[..]));
        assert_eq!(owner(b"nodot"), None);
    }

    #[test]
    fn a_clash_names_both_owners() {
        assert_eq!(
            clash_message(
                "relay",
                "psu-1",
                ("tcp://10.0.0.5:5850", None),
                ("tcp://10.1.0.2:41001", Some("tcp://10.1.0.2:5750")),
            ),
            "relay_id 'psu-1' is already registered by a live relay at tcp://10.0.0.5:5850; \
             refused for the relay at tcp://10.1.0.2:41001 (via broker tcp://10.1.0.2:5750)"
        );
    }
}
