//! One instrument's lease: who holds it, its fencing token and its expiry.
//!
//! It lives in the instrument's own task (inside [`crate::rpc::RpcContext`]),
//! so nothing is shared and nothing is locked. Expiry is measured on the
//! monotonic clock (`tokio::time::Instant`); the Unix times reported
//! (`since`, `expires`) are for people and other hosts. Every change is
//! published on `lock.<relay_id>` through the relay's PUB; the instrument
//! task's timer ([`Lease::deadline`]) publishes an expiry even when nobody
//! calls.

use std::time::Duration;

use labmesh_proto::lease::{
    leased_error, stale_token_error, wrong_key_error, KeyHolder, LeaseInfo, LockEvent,
    LockEventKind, LockParams, LockResult,
};
use labmesh_proto::mesh::encode;
use labmesh_proto::{codes, topic, unix_now, ErrorBody};
use tokio::time::Instant;

use crate::publish::Bus;

/// A lease as held.
#[derive(Debug, Clone)]
struct Held {
    holder: String,
    token: u64,
    /// Unix seconds of the grant (kept across renewals).
    since: f64,
    /// Monotonic expiry (what counts).
    expires_at: Instant,
    /// The same as Unix seconds, fixed when granted or renewed (reported).
    expires: f64,
    /// CURVE on: the key that took the lease; only it may use the token.
    key: Option<KeyHolder>,
}

impl Held {
    /// Whether `who` may use this lease's token: anyone without CURVE (the
    /// lease has no key), only the same key with it.
    fn key_ok(&self, who: Option<&KeyHolder>) -> bool {
        match &self.key {
            None => true,
            Some(k) => who.is_some_and(|w| w.fingerprint == k.fingerprint),
        }
    }

    /// The 403 for a caller that fails [`Held::key_ok`].
    fn wrong_key(&self, relay_id: &str, who: Option<&KeyHolder>) -> ErrorBody {
        let Some(k) = &self.key else {
            return ErrorBody::new(codes::FORBIDDEN, "lease token from another key");
        };
        labmesh_wire::warn_throttled!(
            %relay_id,
            holder_key = %k.fingerprint,
            caller_key = %who.map_or("none", |w| w.fingerprint.as_str()),
            "lease token presented by another key than its holder's: refused"
        );
        wrong_key_error(relay_id, self.token, k, who)
    }
}

/// The lease state of one instrument.
pub(crate) struct Lease {
    relay_id: String,
    topic: Vec<u8>,
    current: Option<Held>,
    /// The smallest token the next grant may have.
    next_token: u64,
    events: Bus,
}

/// Milliseconds since the Unix epoch: tokens start from it, so they keep
/// growing across relay restarts (unless the clock goes back, or more than
/// a thousand grants a second were made before a restart).
fn unix_ms() -> u64 {
    (unix_now() * 1000.0) as u64
}

impl Lease {
    /// No lease yet; events go to `events` (the relay's PUB queue).
    pub(crate) fn new(relay_id: &str, events: Bus) -> Self {
        Lease {
            relay_id: relay_id.to_string(),
            topic: topic::lock(relay_id).into_bytes(),
            current: None,
            next_token: unix_ms(),
            events,
        }
    }

    fn info(&self, h: &Held) -> LeaseInfo {
        LeaseInfo {
            holder: h.holder.clone(),
            since: h.since,
            expires: h.expires,
            key: h.key.as_ref().map(|k| k.fingerprint.clone()),
            key_name: h.key.as_ref().and_then(|k| k.name.clone()),
        }
    }

    fn publish(&self, event: LockEventKind, info: &LeaseInfo, previous: Option<String>) {
        let body = encode(&LockEvent {
            relay_id: self.relay_id.clone(),
            event,
            holder: info.holder.clone(),
            since: info.since,
            expires: info.expires,
            previous,
            ts: unix_now(),
        });
        // A full queue means the PUB is behind; dropped as PUB would drop.
        let _ = self.events.offer(self.topic.clone(), body, None);
    }

    /// Whether a lease is held (possibly just expired, not yet noticed).
    pub(crate) fn engaged(&self) -> bool {
        self.current.is_some()
    }

    /// The current lease's token and holder (the LAN gateway tells its
    /// own locks from the mesh's by the token).
    pub(crate) fn current(&self) -> Option<(u64, &str)> {
        self.current.as_ref().map(|h| (h.token, h.holder.as_str()))
    }

    /// When the current lease expires, if there is one: the instrument
    /// task sleeps until then and calls [`Lease::expire_due`].
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.current.as_ref().map(|h| h.expires_at)
    }

    /// End the lease if its time is up (and publish `expired`).
    pub(crate) fn expire_due(&mut self) {
        let now = Instant::now();
        if let Some(h) = self.current.as_ref().filter(|h| h.expires_at <= now) {
            let info = self.info(h);
            tracing::info!(relay_id = %self.relay_id, holder = %h.holder, token = h.token, "lease expired");
            self.current = None;
            self.publish(LockEventKind::Expired, &info, None);
        }
    }

    fn grant(
        &mut self,
        holder: &str,
        ttl: Duration,
        now: Instant,
        key: Option<&KeyHolder>,
    ) -> Held {
        let token = self.next_token.max(unix_ms());
        self.next_token = token.saturating_add(1);
        let since = unix_now();
        Held {
            holder: holder.to_string(),
            token,
            since,
            expires_at: now + ttl,
            expires: since + ttl.as_secs_f64(),
            key: key.cloned(),
        }
    }

    fn result(&self, h: &Held) -> LockResult {
        let info = self.info(h);
        LockResult {
            holder: info.holder,
            token: h.token,
            expires: info.expires,
            since: info.since,
        }
    }

    /// `lm.lock`: grant, renew or (with `force`) take over. `who` is the
    /// caller's CURVE key (`None` without CURVE): a grant records it, and
    /// only it may renew.
    pub(crate) fn lock(
        &mut self,
        p: &LockParams,
        who: Option<&KeyHolder>,
    ) -> Result<LockResult, ErrorBody> {
        self.expire_due();
        p.check()
            .map_err(|why| ErrorBody::new(codes::BAD_REQUEST, format!("lm.lock: {why}")))?;
        let now = Instant::now();
        let ttl = Duration::from_secs_f64(p.ttl_s);
        let (held, event, previous) = match (self.current.take(), p.token) {
            (Some(h), Some(t)) if t == h.token && !h.key_ok(who) => {
                let e = h.wrong_key(&self.relay_id, who);
                self.current = Some(h);
                return Err(e);
            }
            (Some(mut h), Some(t)) if t == h.token => {
                h.expires_at = now + ttl;
                h.expires = unix_now() + ttl.as_secs_f64();
                (h, LockEventKind::Renewed, None)
            }
            (Some(h), _) if p.force => {
                let new = self.grant(p.holder_name(), ttl, now, who);
                tracing::warn!(relay_id = %self.relay_id, holder = %new.holder, previous = %h.holder, token = new.token, "lease taken over (force)");
                (new, LockEventKind::Forced, Some(h.holder))
            }
            (Some(h), token) => {
                let info = self.info(&h);
                self.current = Some(h);
                return Err(match token {
                    Some(t) => stale_token_error(&self.relay_id, t, Some(&info)),
                    None => leased_error(&self.relay_id, &info, unix_now()),
                });
            }
            (None, Some(t)) if !p.force => {
                return Err(stale_token_error(&self.relay_id, t, None));
            }
            (None, _) => {
                let new = self.grant(p.holder_name(), ttl, now, who);
                tracing::info!(relay_id = %self.relay_id, holder = %new.holder, token = new.token, ttl_s = p.ttl_s, "lease granted");
                (new, LockEventKind::Granted, None)
            }
        };
        let result = self.result(&held);
        let info = self.info(&held);
        self.current = Some(held);
        self.publish(event, &info, previous);
        Ok(result)
    }

    /// `lm.unlock`: release the lease `token` belongs to (from its key, if
    /// it has one).
    pub(crate) fn unlock(&mut self, token: u64, who: Option<&KeyHolder>) -> Result<(), ErrorBody> {
        self.expire_due();
        match self.current.take() {
            Some(h) if h.token == token && !h.key_ok(who) => {
                let e = h.wrong_key(&self.relay_id, who);
                self.current = Some(h);
                Err(e)
            }
            Some(h) if h.token == token => {
                let info = self.info(&h);
                tracing::info!(relay_id = %self.relay_id, holder = %h.holder, token, "lease released");
                self.publish(LockEventKind::Released, &info, None);
                Ok(())
            }
            other => {
                let info = other.as_ref().map(|h| self.info(h));
                self.current = other;
                Err(stale_token_error(&self.relay_id, token, info.as_ref()))
            }
        }
    }

    /// `lm.who`: the lease as everyone may see it.
    pub(crate) fn who(&mut self) -> Option<LeaseInfo> {
        self.expire_due();
        self.current.as_ref().map(|h| self.info(h))
    }

    /// Whether a call may go to the instrument: read-only methods always;
    /// state-changing ones without a token only while nobody holds the
    /// lease, with a token only if it is the current lease's and, CURVE
    /// on, `who` is the key that took it.
    pub(crate) fn admit(
        &mut self,
        read_only: bool,
        token: Option<u64>,
        who: Option<&KeyHolder>,
    ) -> Result<(), ErrorBody> {
        if read_only {
            return Ok(());
        }
        self.expire_due();
        match (&self.current, token) {
            (None, None) => Ok(()),
            (Some(h), Some(t)) if h.token == t && !h.key_ok(who) => {
                Err(h.wrong_key(&self.relay_id, who))
            }
            (Some(h), Some(t)) if h.token == t => Ok(()),
            (Some(h), None) => Err(leased_error(&self.relay_id, &self.info(h), unix_now())),
            (held, Some(t)) => {
                let info = held.as_ref().map(|h| self.info(h));
                Err(stale_token_error(&self.relay_id, t, info.as_ref()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::publish::{bus, BusRx};

    fn lease() -> (Lease, BusRx) {
        let (tx, rx) = bus(labmesh_proto::limits::DEFAULT_BUS_MAX_MSG);
        (Lease::new("psu-1", tx), rx)
    }

    fn event(rx: &mut BusRx) -> LockEvent {
        let (topic, body) = rx.try_recv().unwrap();
        assert_eq!(topic, b"lock.psu-1");
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn grant_contend_renew_force_release_expire() {
        let (mut l, mut rx) = lease();
        let a = l.lock(&LockParams::new(10.0, "alice"), None).unwrap();
        assert_eq!(a.holder, "alice");
        assert_eq!(event(&mut rx).event, LockEventKind::Granted);
        // Someone else: 409 naming alice; their state-changing call too.
        let e = l.lock(&LockParams::new(10.0, "bob"), None).unwrap_err();
        assert_eq!(e.code, codes::CONFLICT);
        assert!(e.message.contains("leased by alice"), "{}", e.message);
        assert_eq!(
            l.admit(false, None, None).unwrap_err().code,
            codes::CONFLICT
        );
        assert!(l.admit(true, None, None).is_ok());
        assert!(l.admit(false, Some(a.token), None).is_ok());
        // Renewal keeps the token and pushes the expiry.
        let first = l.deadline().unwrap();
        tokio::time::advance(Duration::from_secs(8)).await;
        let r = l
            .lock(
                &LockParams {
                    token: Some(a.token),
                    ..LockParams::new(10.0, "alice")
                },
                None,
            )
            .unwrap();
        assert_eq!(r.token, a.token);
        assert_eq!(l.deadline().unwrap() - first, Duration::from_secs(8));
        // (Paused time: the wall clock stands still, the TTL restarts.)
        assert!((r.expires - a.expires).abs() < 1.0);
        assert_eq!(event(&mut rx).event, LockEventKind::Renewed);
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(l.who().is_some());
        // Force: new token, alice fenced off.
        let b = l
            .lock(
                &LockParams {
                    force: true,
                    ..LockParams::new(5.0, "bob")
                },
                None,
            )
            .unwrap();
        assert!(b.token > a.token);
        let ev = event(&mut rx);
        assert_eq!(ev.event, LockEventKind::Forced);
        assert_eq!(ev.previous.as_deref(), Some("alice"));
        let e = l.admit(false, Some(a.token), None).unwrap_err();
        assert!(e.message.contains("no longer valid"), "{}", e.message);
        assert!(l.unlock(a.token, None).is_err());
        // Release, then a fresh grant has a larger token still.
        l.unlock(b.token, None).unwrap();
        assert_eq!(event(&mut rx).event, LockEventKind::Released);
        assert!(l.who().is_none());
        assert!(l.admit(false, None, None).is_ok());
        assert!(l.admit(false, Some(b.token), None).is_err(), "stale token");
        let c = l.lock(&LockParams::new(1.0, "carol"), None).unwrap();
        assert!(c.token > b.token);
        event(&mut rx);
        // Orphaned: expires after its TTL on the monotonic clock.
        assert!(l.deadline().is_some());
        tokio::time::advance(Duration::from_millis(999)).await;
        l.expire_due();
        assert!(l.who().is_some());
        tokio::time::advance(Duration::from_millis(2)).await;
        l.expire_due();
        let ev = event(&mut rx);
        assert_eq!(
            (ev.event, ev.holder.as_str()),
            (LockEventKind::Expired, "carol")
        );
        assert!(l.who().is_none());
        assert!(l.deadline().is_none());
        // Renewing an expired lease is refused: the holder learns it lost it.
        let e = l
            .lock(
                &LockParams {
                    token: Some(c.token),
                    ..LockParams::new(1.0, "carol")
                },
                None,
            )
            .unwrap_err();
        assert_eq!(e.code, codes::CONFLICT);
        assert_eq!(
            l.lock(&LockParams::new(0.0, "x"), None).unwrap_err().code,
            codes::BAD_REQUEST
        );
    }

    fn key(fp: &str, name: Option<&str>) -> KeyHolder {
        KeyHolder {
            fingerprint: fp.into(),
            name: name.map(str::to_string),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_curve_the_token_works_only_from_the_holders_key() {
        let (mut l, mut rx) = lease();
        let alice = key("AAAAAAAA", Some("alice"));
        let mallory = key("MMMMMMMM", None);
        let a = l
            .lock(&LockParams::new(10.0, "alice"), Some(&alice))
            .unwrap();
        event(&mut rx);
        let who = l.who().unwrap();
        assert_eq!(who.key.as_deref(), Some("AAAAAAAA"));
        assert_eq!(who.key_name.as_deref(), Some("alice"));
        // The holder's key with the token: admitted.
        assert!(l.admit(false, Some(a.token), Some(&alice)).is_ok());
        // The same token from another key (or none): 403 naming both.
        let e = l.admit(false, Some(a.token), Some(&mallory)).unwrap_err();
        assert_eq!(e.code, codes::FORBIDDEN);
        assert!(
            e.message.contains("AAAAAAAA (alice)") && e.message.contains("MMMMMMMM"),
            "{}",
            e.message
        );
        assert_eq!(
            l.admit(false, Some(a.token), None).unwrap_err().code,
            codes::FORBIDDEN
        );
        let renew = LockParams {
            token: Some(a.token),
            ..LockParams::new(10.0, "mallory")
        };
        assert_eq!(
            l.lock(&renew, Some(&mallory)).unwrap_err().code,
            codes::FORBIDDEN
        );
        assert_eq!(
            l.unlock(a.token, Some(&mallory)).unwrap_err().code,
            codes::FORBIDDEN
        );
        // Nothing changed hands: alice still holds it and may release it.
        assert_eq!(l.who().unwrap().holder, "alice");
        assert!(rx.try_recv().is_none(), "no event for refused attempts");
        l.unlock(a.token, Some(&alice)).unwrap();
        assert!(l.who().is_none());
    }
}
