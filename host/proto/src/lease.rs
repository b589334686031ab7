//! Instrument leases: typed params and results of [`crate::lm::LOCK`],
//! [`crate::lm::UNLOCK`] and [`crate::lm::WHO`], the lease token an
//! [`crate::mesh::RpcRequest`] carries, the `lock.<relay_id>` bus body,
//! and the 409 errors a leased instrument answers.
//!
//! A lease is cooperative: it keeps two people from driving one instrument
//! by accident, it is not access control (the network password and CURVE
//! are). Anyone may take a lease over with `force`, which is logged and
//! published.
//!
//! The token is a *fencing* token: every new grant or forced takeover gets
//! a larger one, so a call carrying an older token is refused (409) even
//! when nobody holds the lease any more.

use serde::{Deserialize, Serialize};

use crate::{codes, ErrorBody};

/// Longest lease a relay grants in one `lm.lock`, seconds (24 h).
pub const MAX_TTL_S: f64 = 86_400.0;
/// Longest holder name, bytes.
pub const MAX_HOLDER: usize = 128;
/// Holder used when `lm.lock` names none.
pub const ANONYMOUS: &str = "anonymous";

/// Params of [`crate::lm::LOCK`].
///
/// `{"ttl_s":30.0}` takes a free lease; with `token` it renews the lease
/// that token belongs to; with `force` it takes the lease from its holder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockParams {
    /// How long the lease lasts without renewal, seconds (0 < ttl_s <=
    /// [`MAX_TTL_S`]).
    pub ttl_s: f64,
    /// Who is asking (shown to everyone else): e.g. `alice@bench-3`.
    /// [`ANONYMOUS`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// The token of a lease held now: renew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// Take the lease even if someone else holds it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

impl LockParams {
    /// A plain request for a lease of `ttl_s` seconds by `holder`.
    pub fn new(ttl_s: f64, holder: &str) -> Self {
        LockParams {
            ttl_s,
            holder: Some(holder.to_string()),
            token: None,
            force: false,
        }
    }

    /// Why these params are refused (400), if they are.
    pub fn check(&self) -> Result<(), String> {
        if !(self.ttl_s.is_finite() && self.ttl_s > 0.0 && self.ttl_s <= MAX_TTL_S) {
            return Err(format!(
                "ttl_s must be above 0 and at most {MAX_TTL_S} s, got {}",
                self.ttl_s
            ));
        }
        if let Some(h) = &self.holder {
            check_holder(h)?;
        }
        Ok(())
    }

    /// The holder name to record.
    pub fn holder_name(&self) -> &str {
        self.holder.as_deref().unwrap_or(ANONYMOUS)
    }
}

/// Whether `h` is an acceptable holder name: 1..=[`MAX_HOLDER`] bytes, no
/// control characters.
pub fn check_holder(h: &str) -> Result<(), String> {
    if h.is_empty() || h.len() > MAX_HOLDER || h.chars().any(char::is_control) {
        return Err(format!(
            "holder must be 1 to {MAX_HOLDER} bytes without control characters"
        ));
    }
    Ok(())
}

/// Result of [`crate::lm::LOCK`]: the lease as granted or renewed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockResult {
    /// Who holds it.
    pub holder: String,
    /// The fencing token: send it with every call (`"lease"` in the rpc
    /// request) and to renew or release.
    pub token: u64,
    /// When it expires unless renewed, Unix seconds.
    pub expires: f64,
    /// When this holder got it (kept across renewals), Unix seconds.
    pub since: f64,
}

/// Params of [`crate::lm::UNLOCK`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlockParams {
    /// The token of the lease to release.
    pub token: u64,
}

/// Result of [`crate::lm::UNLOCK`]: `{"ok":true}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockResult {
    /// Always true (a wrong token is a 409 error instead).
    pub ok: bool,
}

/// A lease as everyone may see it (no token): the result of
/// [`crate::lm::WHO`] (`null` when the instrument is free).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// Who holds it.
    pub holder: String,
    /// Since when, Unix seconds.
    pub since: f64,
    /// When it expires unless renewed, Unix seconds.
    pub expires: f64,
    /// Extension, CURVE on: the fingerprint of the holder's key (the first
    /// 8 Z85 characters of its public key). Only that key may use the
    /// lease's token. Absent without CURVE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Extension, CURVE on: the holder key's `name` in the relay's
    /// allow-list, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
}

/// Result of [`crate::lm::WHO`].
pub type WhoResult = Option<LeaseInfo>;

string_enum! {
    /// What happened to a lease (`lock.<relay_id>`'s `event`).
    pub enum LockEventKind {
        /// A free instrument was leased.
        Granted => "granted",
        /// The holder renewed its lease.
        Renewed => "renewed",
        /// The holder released it.
        Released => "released",
        /// Nobody renewed it within its TTL.
        Expired => "expired",
        /// Someone took it over with `force` (`previous` names who held it).
        Forced => "forced",
    }
}

/// The body of a `lock.<relay_id>` bus message. It never carries the
/// token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockEvent {
    /// The instrument.
    pub relay_id: String,
    /// What happened.
    pub event: LockEventKind,
    /// The holder the event is about: the new holder (granted, renewed,
    /// forced) or the one whose lease ended (released, expired).
    pub holder: String,
    /// When that holder got the lease, Unix seconds.
    pub since: f64,
    /// When the lease expires (granted, renewed, forced) or was due to
    /// (released, expired), Unix seconds.
    pub expires: f64,
    /// Forced: who held the lease before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Event time, Unix seconds.
    pub ts: f64,
}

impl LockEvent {
    /// Whether the instrument is leased after this event.
    pub fn held(&self) -> bool {
        matches!(
            self.event,
            LockEventKind::Granted | LockEventKind::Renewed | LockEventKind::Forced
        )
    }
}

/// The 409 a state-changing call without the lease's token gets:
/// `"<relay_id> is leased by <holder> until <expires> (Unix s, <n> s from
/// now)"`.
pub fn leased_error(relay_id: &str, lease: &LeaseInfo, now: f64) -> ErrorBody {
    ErrorBody::new(
        codes::CONFLICT,
        format!(
            "{relay_id} is leased by {} until {:.3} (Unix s, {:.1} s from now)",
            lease.holder,
            lease.expires,
            (lease.expires - now).max(0.0)
        ),
    )
}

/// Who presents a request, CURVE on: the caller key's fingerprint and its
/// allow-list name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHolder {
    /// First 8 Z85 characters of the public key.
    pub fingerprint: String,
    /// The allow-list's `name` for the key.
    pub name: Option<String>,
}

impl KeyHolder {
    fn describe(&self) -> String {
        match &self.name {
            Some(n) => format!("key {} ({n})", self.fingerprint),
            None => format!("key {}", self.fingerprint),
        }
    }
}

/// The 403 a call, `lm.lock` renewal or `lm.unlock` gets when it carries the
/// current lease's token but comes from another CURVE key than the one
/// that took the lease (a copied token): `"psu-1: lease token T belongs to
/// key <fp> (alice); refused from key <fp> (bob)"`.
pub fn wrong_key_error(
    relay_id: &str,
    token: u64,
    holder: &KeyHolder,
    caller: Option<&KeyHolder>,
) -> ErrorBody {
    let from = match caller {
        Some(c) => c.describe(),
        None => "a connection without a key".to_string(),
    };
    ErrorBody::new(
        codes::FORBIDDEN,
        format!(
            "{relay_id}: lease token {token} belongs to {}; refused from {from}",
            holder.describe()
        ),
    )
}

/// The 409 a call (or `lm.lock`, `lm.unlock`) carrying a token that is not
/// the current lease's gets: the lease ended or was taken over.
pub fn stale_token_error(relay_id: &str, token: u64, now_held: Option<&LeaseInfo>) -> ErrorBody {
    let who = match now_held {
        Some(l) => format!(
            "; it is leased by {} until {:.3} (Unix s)",
            l.holder, l.expires
        ),
        None => "; it is not leased now".to_string(),
    };
    ErrorBody::new(
        codes::CONFLICT,
        format!("{relay_id}: lease token {token} is no longer valid (expired, released or taken over){who}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bytes() {
        let p = LockParams::new(30.0, "alice@bench-3");
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"ttl_s":30.0,"holder":"alice@bench-3"}"#
        );
        let renew = LockParams {
            token: Some(1_764_633_600_001),
            force: true,
            ..p.clone()
        };
        assert_eq!(
            serde_json::to_string(&renew).unwrap(),
            r#"{"ttl_s":30.0,"holder":"alice@bench-3","token":1764633600001,"force":true}"#
        );
        let back: LockParams = serde_json::from_str(r#"{"ttl_s":1}"#).unwrap();
        assert_eq!(back.holder_name(), ANONYMOUS);
        assert!(!back.force);
        assert!(serde_json::from_str::<LockParams>(r#"{"ttl_s":1,"tokn":2}"#).is_err());
        let r = LockResult {
            holder: "alice@bench-3".into(),
            token: 1_764_633_600_001,
            expires: 1_764_633_630.5,
            since: 1_764_633_600.5,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"holder":"alice@bench-3","token":1764633600001,"expires":1764633630.5,"since":1764633600.5}"#
        );
        assert_eq!(
            serde_json::to_string(&UnlockParams { token: 7 }).unwrap(),
            r#"{"token":7}"#
        );
        assert_eq!(
            serde_json::to_string(&UnlockResult { ok: true }).unwrap(),
            r#"{"ok":true}"#
        );
        let who: WhoResult = Some(LeaseInfo {
            holder: "bob".into(),
            since: 1.5,
            expires: 31.5,
            key: None,
            key_name: None,
        });
        assert_eq!(
            serde_json::to_string(&who).unwrap(),
            r#"{"holder":"bob","since":1.5,"expires":31.5}"#
        );
        // CURVE on: the holder's key fingerprint and allow-list name.
        let keyed: WhoResult = Some(LeaseInfo {
            key: Some("rq:rM>}U".into()),
            key_name: Some("bob".into()),
            ..who.clone().unwrap()
        });
        let bytes = serde_json::to_string(&keyed).unwrap();
        assert_eq!(
            bytes,
            r#"{"holder":"bob","since":1.5,"expires":31.5,"key":"rq:rM>}U","key_name":"bob"}"#
        );
        assert_eq!(serde_json::from_str::<WhoResult>(&bytes).unwrap(), keyed);
        assert_eq!(
            serde_json::from_str::<WhoResult>(r#"{"holder":"bob","since":1.5,"expires":31.5}"#)
                .unwrap(),
            who
        );
        assert_eq!(serde_json::to_string(&None::<LeaseInfo>).unwrap(), "null");
        let ev = LockEvent {
            relay_id: "psu-1".into(),
            event: LockEventKind::Forced,
            holder: "bob".into(),
            since: 2.0,
            expires: 32.0,
            previous: Some("alice".into()),
            ts: 2.0,
        };
        let bytes = serde_json::to_vec(&ev).unwrap();
        assert_eq!(
            bytes,
            br#"{"relay_id":"psu-1","event":"forced","holder":"bob","since":2.0,"expires":32.0,"previous":"alice","ts":2.0}"#
        );
        assert_eq!(serde_json::from_slice::<LockEvent>(&bytes).unwrap(), ev);
        assert!(ev.held());
        let expired: LockEvent = serde_json::from_str(
            r#"{"relay_id":"psu-1","event":"expired","holder":"bob","since":2.0,"expires":32.0,"ts":32.01}"#,
        )
        .unwrap();
        assert!(!expired.held());
        assert_eq!(expired.event, LockEventKind::Expired);
    }

    #[test]
    fn params_are_checked() {
        for ttl in [0.0, -1.0, f64::NAN, f64::INFINITY, MAX_TTL_S + 1.0] {
            assert!(LockParams::new(ttl, "a").check().is_err(), "{ttl}");
        }
        assert!(LockParams::new(MAX_TTL_S, "a").check().is_ok());
        assert!(LockParams::new(1.0, "").check().is_err());
        assert!(LockParams::new(1.0, "a\nb").check().is_err());
        assert!(LockParams::new(1.0, &"x".repeat(MAX_HOLDER + 1))
            .check()
            .is_err());
    }

    #[test]
    fn conflict_bodies_name_holder_and_expiry() {
        let l = LeaseInfo {
            holder: "alice@bench-3".into(),
            since: 100.0,
            expires: 130.25,
            key: None,
            key_name: None,
        };
        assert_eq!(
            serde_json::to_string(&leased_error("psu-1", &l, 110.0)).unwrap(),
            r#"{"code":409,"message":"psu-1 is leased by alice@bench-3 until 130.250 (Unix s, 20.2 s from now)"}"#
        );
        let e = stale_token_error("psu-1", 5, Some(&l));
        assert_eq!(e.code, codes::CONFLICT);
        assert_eq!(
            e.message,
            "psu-1: lease token 5 is no longer valid (expired, released or taken over); it is leased by alice@bench-3 until 130.250 (Unix s)"
        );
        assert!(stale_token_error("psu-1", 5, None)
            .message
            .ends_with("it is not leased now"));
        let alice = KeyHolder {
            fingerprint: "rq:rM>}U".into(),
            name: Some("alice".into()),
        };
        let bob = KeyHolder {
            fingerprint: "Yne@$w-v".into(),
            name: None,
        };
        assert_eq!(
            serde_json::to_string(&wrong_key_error("psu-1", 5, &alice, Some(&bob))).unwrap(),
            r#"{"code":403,"message":"psu-1: lease token 5 belongs to key rq:rM>}U (alice); refused from key Yne@$w-v"}"#
        );
    }
}
