//! The checked bus: with CURVE on, only the key that registered an id may
//! publish its topics.
//!
//! Without CURVE the broker's bus is `zmq::proxy` (nothing to check against:
//! a publisher has no identity). With CURVE on, every message a publisher
//! sends to the XSUB carries the ZAP handler's properties: `User-Id`
//! (`<role>:<fingerprint>`) and the whole public key
//! ([`KEY_PROPERTY`]). [`checked_proxy`] replaces the XSUB → XPUB half of
//! the proxy with a loop that reads each message with them and forwards it
//! whole only if [`may_publish`] says so; the XPUB → XSUB half
//! (subscriptions) is forwarded as the proxy does. The cascading loop
//! (`cascade::bus_loop`) uses the same check on its XSUB.
//!
//! | topic | may publish it |
//! | --- | --- |
//! | `state.<id>`, `lock.<id>`, `stream.<id>.<name>\0` | the key that registered relay `<id>` here (operator or admin) |
//! | `dataset.<id>` | the key that registered bank `<id>` here (operator or admin) |
//! | `presence.<id>` | only the broker itself (its inproc publisher: no key) |
//! | anything else | nobody |
//!
//! The ownership map is written by the directory (tokio task) on every
//! registration and removal and read here, on the bus thread, once per
//! message: one uncontended `RwLock` read and one hash lookup.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use labmesh_proto::security::{Role, UserId, KEY_PROPERTY};
use labmesh_proto::topic::{self, TopicFamily};

/// Ids registered in this broker's directory right now, with the CURVE
/// key (Z85) that registered each (`None` without CURVE).
#[derive(Debug, Default)]
pub(crate) struct Registered {
    pub(crate) relays: HashMap<String, Option<Arc<str>>>,
    pub(crate) banks: HashMap<String, Option<Arc<str>>>,
}

impl Registered {
    /// Whether `id` is registered here, as relay or bank.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.relays.contains_key(id) || self.banks.contains_key(id)
    }
}

/// The directory's registrations shared with the bus thread.
pub(crate) type LocalIds = Arc<RwLock<Registered>>;

/// Why a message was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The publisher's role may not publish at all (viewer).
    Role,
    /// The topic belongs to an id another key registered.
    NotOwner,
    /// The topic's id is not registered here (yet, or any more: a relay
    /// publishes before its `hello` is answered and after its `bye`).
    NotRegistered,
    /// `presence.` from anyone but the broker, or a topic of no known kind.
    Reserved,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Role => "role may not publish",
            Refusal::NotOwner => "topic of an id another key registered",
            Refusal::NotRegistered => "topic of an id not registered here",
            Refusal::Reserved => "topic reserved or of no known kind",
        }
    }
}

/// Whether a publisher with `key` (Z85; `None`: the broker's own inproc
/// publisher) and `role` may publish `t`.
pub(crate) fn may_publish(
    reg: &Registered,
    t: &[u8],
    key: Option<&str>,
    role: Option<Role>,
) -> Result<(), Refusal> {
    let family = topic::parse(t);
    let Some(key) = key else {
        // No ZAP properties on a CURVE socket: the inproc connection, which
        // only the broker's presence publisher uses.
        return match family {
            Some((TopicFamily::Presence, _)) => Ok(()),
            _ => Err(Refusal::Reserved),
        };
    };
    if !role.is_some_and(|r| r.allows(Role::Operator)) {
        return Err(Refusal::Role);
    }
    let (map, id) = match family {
        Some((TopicFamily::State | TopicFamily::Lock, id)) => (&reg.relays, id),
        Some((TopicFamily::Stream, rest)) => match topic::split_stream(rest) {
            Some((id, _)) => (&reg.relays, id.as_bytes()),
            None => return Err(Refusal::Reserved),
        },
        Some((TopicFamily::Dataset, id)) => (&reg.banks, id),
        Some((TopicFamily::Presence, _)) | None => return Err(Refusal::Reserved),
    };
    match std::str::from_utf8(id).ok().and_then(|id| map.get(id)) {
        Some(owner) if owner.as_deref() == Some(key) => Ok(()),
        Some(_) => Err(Refusal::NotOwner),
        None => Err(Refusal::NotRegistered),
    }
}

/// The check as the bus thread runs it, with the count of what it dropped.
#[derive(Clone)]
pub(crate) struct Guard {
    pub(crate) local: LocalIds,
    pub(crate) dropped: Arc<AtomicU64>,
}

impl Guard {
    /// Whether the message whose first frame is `first` may go on. Logs
    /// (throttled) and counts a refusal.
    pub(crate) fn admit(&self, first: &mut zmq::Message) -> bool {
        // `gets` borrows the message mutably: copy what is needed first.
        let key = first.gets(KEY_PROPERTY).map(str::to_string);
        let user = first.gets("User-Id").and_then(UserId::parse);
        let verdict = match self.local.read() {
            Ok(reg) => may_publish(&reg, first, key.as_deref(), user.as_ref().map(|u| u.role)),
            // A writer panicked: refuse rather than guess.
            Err(_) => Err(Refusal::NotOwner),
        };
        match verdict {
            Ok(()) => true,
            Err(Refusal::NotRegistered) => {
                // Counted, not warned about: every relay's first and last
                // states race its hello and bye.
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    topic = %String::from_utf8_lossy(&first[..first.len().min(80)]),
                    "bus: dropped a message of an id not registered here"
                );
                false
            }
            Err(why) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let shown: String = String::from_utf8_lossy(&first[..first.len().min(80)])
                    .chars()
                    .map(|c| if c.is_control() { '·' } else { c })
                    .collect();
                let peer = first.gets("Peer-Address").unwrap_or("-").to_string();
                labmesh_wire::warn_throttled!(
                    key = %user.as_ref().map_or_else(|| "-".to_string(), |u| u.fingerprint.clone()),
                    role = %user.as_ref().map_or("-", |u| u.role.as_str()),
                    %peer,
                    topic = %shown,
                    why = why.as_str(),
                    dropped_total = n,
                    "bus: dropped a message its publisher may not publish"
                );
                false
            }
        }
    }
}

/// Receive one whole message from `from` (non-blocking) and apply the
/// guard: `Some(frames)` to forward, `None` when nothing was waiting or
/// the message was dropped (all its frames: a message is never split).
pub(crate) fn recv_checked(from: &zmq::Socket, guard: &Guard) -> Option<Vec<zmq::Message>> {
    let mut first = from.recv_msg(zmq::DONTWAIT).ok()?;
    let mut frames = Vec::with_capacity(3);
    let more = from.get_rcvmore().unwrap_or(false);
    let keep = guard.admit(&mut first);
    frames.push(first);
    if more {
        // libzmq delivers a multipart message whole: the rest is here.
        while let Ok(m) = from.recv_msg(zmq::DONTWAIT) {
            let more = m.get_more();
            frames.push(m);
            if !more {
                break;
            }
        }
    }
    keep.then_some(frames)
}

/// Send a whole message without blocking; a full peer drops it, as XPUB
/// does at its high-water mark.
fn send_all(to: &zmq::Socket, frames: Vec<zmq::Message>) {
    let n = frames.len();
    for (i, f) in frames.into_iter().enumerate() {
        let flags = if i + 1 < n {
            zmq::SNDMORE | zmq::DONTWAIT
        } else {
            zmq::DONTWAIT
        };
        if to.send(f, flags).is_err() {
            break;
        }
    }
}

/// Forward one whole message from `from` to `to` unchecked (subscriptions).
fn pass(from: &zmq::Socket, to: &zmq::Socket) -> bool {
    let Ok(first) = from.recv_msg(zmq::DONTWAIT) else {
        return false;
    };
    let mut frames = vec![first];
    while frames.last().is_some_and(|m| m.get_more()) {
        match from.recv_msg(zmq::DONTWAIT) {
            Ok(m) => frames.push(m),
            Err(_) => break,
        }
    }
    send_all(to, frames);
    true
}

/// The bus with CURVE on and no parent: XSUB → XPUB checked, XPUB → XSUB
/// (subscriptions) as `zmq::proxy`. Its own thread; ends on `TERMINATE` on
/// `ctl`.
pub(crate) fn checked_proxy(xsub: zmq::Socket, xpub: zmq::Socket, ctl: zmq::Socket, guard: Guard) {
    loop {
        let mut items = [
            xsub.as_poll_item(zmq::POLLIN),
            xpub.as_poll_item(zmq::POLLIN),
            ctl.as_poll_item(zmq::POLLIN),
        ];
        match zmq::poll(&mut items, -1) {
            Ok(_) => {}
            Err(zmq::Error::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "checked bus stopped");
                return;
            }
        }
        if items[2].is_readable() {
            if let Ok(m) = ctl.recv_bytes(zmq::DONTWAIT) {
                if m == b"TERMINATE" {
                    return;
                }
            }
        }
        // Drain both sides a bounded amount per round, fairly.
        for _ in 0..1024 {
            let mut moved = false;
            if xsub.get_events().is_ok_and(|e| e.contains(zmq::POLLIN)) {
                if let Some(frames) = recv_checked(&xsub, &guard) {
                    send_all(&xpub, frames);
                }
                moved = true;
            }
            if xpub.get_events().is_ok_and(|e| e.contains(zmq::POLLIN)) {
                moved |= pass(&xpub, &xsub);
            }
            if !moved {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registered {
        let mut r = Registered::default();
        r.relays.insert("psu".into(), Some(Arc::from("KEY-A")));
        r.relays.insert("lab.dmm".into(), Some(Arc::from("KEY-B")));
        r.banks.insert("bank-0".into(), Some(Arc::from("KEY-B")));
        r
    }

    #[test]
    fn only_the_registering_key_publishes_an_ids_topics() {
        let r = reg();
        let op = Some(Role::Operator);
        let a = Some("KEY-A");
        let b = Some("KEY-B");
        assert_eq!(may_publish(&r, b"state.psu", a, op), Ok(()));
        assert_eq!(may_publish(&r, b"lock.psu", a, op), Ok(()));
        assert_eq!(may_publish(&r, &topic::stream("psu", "v"), a, op), Ok(()));
        assert_eq!(may_publish(&r, b"state.psu", b, op), Err(Refusal::NotOwner));
        assert_eq!(
            may_publish(&r, &topic::stream("psu", "v"), b, op),
            Err(Refusal::NotOwner)
        );
        // Dotted ids: the stream topic's id is found by its terminator.
        assert_eq!(
            may_publish(&r, &topic::stream("lab.dmm", "v"), b, op),
            Ok(())
        );
        assert_eq!(
            may_publish(&r, b"stream.lab.dmm.v", b, op),
            Err(Refusal::Reserved),
            "no terminator"
        );
        // A prefix of an id is not the id.
        assert_eq!(
            may_publish(&r, b"state.ps", a, op),
            Err(Refusal::NotRegistered)
        );
        assert_eq!(
            may_publish(&r, b"state.psu2", a, op),
            Err(Refusal::NotRegistered)
        );
        // Banks announce datasets; a relay id is not a bank id.
        assert_eq!(may_publish(&r, b"dataset.bank-0", b, op), Ok(()));
        assert_eq!(
            may_publish(&r, b"dataset.psu", a, op),
            Err(Refusal::NotRegistered)
        );
        assert_eq!(
            may_publish(&r, b"state.bank-0", b, op),
            Err(Refusal::NotRegistered)
        );
        // Unregistered ids belong to nobody.
        assert_eq!(
            may_publish(&r, b"state.ghost", a, op),
            Err(Refusal::NotRegistered)
        );
        // Admin is not a skeleton key.
        assert_eq!(
            may_publish(&r, b"state.psu", b, Some(Role::Admin)),
            Err(Refusal::NotOwner)
        );
        assert_eq!(may_publish(&r, b"state.psu", a, Some(Role::Admin)), Ok(()));
    }

    #[test]
    fn viewers_publish_nothing_and_presence_is_the_brokers() {
        let r = reg();
        let a = Some("KEY-A");
        assert_eq!(
            may_publish(&r, b"state.psu", a, Some(Role::Viewer)),
            Err(Refusal::Role)
        );
        assert_eq!(may_publish(&r, b"state.psu", a, None), Err(Refusal::Role));
        assert_eq!(
            may_publish(&r, b"presence.psu", a, Some(Role::Operator)),
            Err(Refusal::Reserved)
        );
        assert_eq!(
            may_publish(&r, b"chat.hello", a, Some(Role::Operator)),
            Err(Refusal::Reserved)
        );
        // The broker's own inproc publisher: presence only.
        assert_eq!(may_publish(&r, b"presence.psu", None, None), Ok(()));
        assert_eq!(
            may_publish(&r, b"state.psu", None, None),
            Err(Refusal::Reserved)
        );
        // Without CURVE a registration has no key: no key matches it.
        let mut plain = Registered::default();
        plain.relays.insert("psu".into(), None);
        assert_eq!(
            may_publish(&plain, b"state.psu", a, Some(Role::Operator)),
            Err(Refusal::NotOwner)
        );
    }
}
