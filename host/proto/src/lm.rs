//! Reserved methods: the `lm.*` names a relay or broker answers itself, and
//! the broker's directory methods, each with typed params and result.
//!
//! A driver never sees an `lm.*` call: the relay answers it without queueing
//! behind the instrument, so `lm.ping` works while a long call runs.

use serde::{Deserialize, Serialize};

use crate::describe::Description;
use crate::mesh::RelayInfo;

/// Relay: the instrument's [`Description`] plus its relay id
/// ([`DescribeResult`]). No params.
pub const DESCRIBE: &str = "lm.describe";
/// Relay and broker probe: liveness check that bypasses the instrument
/// queue ([`PingResult`]). No params.
pub const PING: &str = "lm.ping";
/// Broker (extension): look up one relay by id ([`ResolveParams`] ->
/// [`crate::mesh::RelayInfo`], 404 when not registered).
pub const RESOLVE: &str = "lm.resolve";

/// Relay (extension): take or renew the instrument's lease
/// ([`crate::lease::LockParams`] -> [`crate::lease::LockResult`]; 409 when
/// someone else holds it).
pub const LOCK: &str = "lm.lock";
/// Relay (extension): give the lease back ([`crate::lease::UnlockParams`]
/// -> [`crate::lease::UnlockResult`]; 409 with a token that is not the
/// current one).
pub const UNLOCK: &str = "lm.unlock";
/// Relay (extension): who holds the lease (`null` or
/// [`crate::lease::LeaseInfo`]). No params.
pub const WHO: &str = "lm.who";
// Streams (extension; types in `crate::stream`). Every control method is
// idempotent: asking for what already holds answers `changed: false`.

/// Relay: every stream with its rate and health
/// ([`crate::stream::StreamsResult`]). No params.
pub const STREAMS: &str = "lm.streams";
/// Relay: start publishing a stream ([`crate::stream::StreamName`] ->
/// [`crate::stream::StreamChanged`]; 404 for an unknown stream).
pub const STREAM_ENABLE: &str = "lm.stream_enable";
/// Relay: stop publishing a stream (as [`STREAM_ENABLE`]).
pub const STREAM_DISABLE: &str = "lm.stream_disable";
/// Relay: add a stream, or replace the one of that name
/// ([`crate::stream::StreamSpec`] -> [`crate::stream::StreamChanged`]).
pub const STREAM_ADD: &str = "lm.stream_add";
/// Relay: remove a stream ([`crate::stream::StreamName`] ->
/// [`crate::stream::StreamChanged`]; removing a missing stream is not an
/// error: `exists: false, changed: false`).
pub const STREAM_REMOVE: &str = "lm.stream_remove";
/// Relay: change a stream's rate ([`crate::stream::SetRate`] ->
/// [`crate::stream::StreamChanged`]).
pub const STREAM_SET_RATE: &str = "lm.stream_set_rate";
/// Relay: a stream's newest sample ([`crate::stream::StreamName`] ->
/// [`crate::stream::LastResult`]).
pub const LAST: &str = "lm.last";

/// Broker (labmesh v0): every registered relay, sorted by id
/// (`[RelayInfo]`). No params.
pub const LIST_RELAY_IDS: &str = "list_relay_ids";
/// Broker (labmesh v0): every registered bank, sorted by id (`[BankInfo]`).
/// No params.
pub const LIST_BANKS: &str = "list_banks";
/// Broker (labmesh v0): `{"ok": true}`. No params.
pub const BROKER_PING: &str = "ping";

/// Whether `method` is in the reserved `lm.` namespace.
pub fn is_reserved(method: &str) -> bool {
    method.starts_with("lm.")
}

/// A method as a relay sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMethod<'a> {
    /// [`DESCRIBE`]
    Describe,
    /// [`PING`]
    Ping,
    // Leases (one block).
    /// [`LOCK`]
    Lock,
    /// [`UNLOCK`]
    Unlock,
    /// [`WHO`]
    Who,
    /// [`STREAMS`]
    Streams,
    /// [`STREAM_ENABLE`]
    StreamEnable,
    /// [`STREAM_DISABLE`]
    StreamDisable,
    /// [`STREAM_ADD`]
    StreamAdd,
    /// [`STREAM_REMOVE`]
    StreamRemove,
    /// [`STREAM_SET_RATE`]
    StreamSetRate,
    /// [`LAST`]
    Last,
    /// Another reserved name this relay does not serve (404).
    UnknownReserved(&'a str),
    /// A driver method.
    Instrument(&'a str),
}

impl<'a> RelayMethod<'a> {
    /// Classify a method name.
    pub fn parse(method: &'a str) -> Self {
        match method {
            DESCRIBE => RelayMethod::Describe,
            PING => RelayMethod::Ping,
            LOCK => RelayMethod::Lock,
            UNLOCK => RelayMethod::Unlock,
            WHO => RelayMethod::Who,
            STREAMS => RelayMethod::Streams,
            STREAM_ENABLE => RelayMethod::StreamEnable,
            STREAM_DISABLE => RelayMethod::StreamDisable,
            STREAM_ADD => RelayMethod::StreamAdd,
            STREAM_REMOVE => RelayMethod::StreamRemove,
            STREAM_SET_RATE => RelayMethod::StreamSetRate,
            LAST => RelayMethod::Last,
            m if is_reserved(m) => RelayMethod::UnknownReserved(m),
            m => RelayMethod::Instrument(m),
        }
    }
}

/// A method as the broker's directory sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerMethod<'a> {
    /// [`LIST_RELAY_IDS`]
    ListRelayIds,
    /// [`LIST_BANKS`]
    ListBanks,
    /// [`BROKER_PING`] (not `lm.ping`: a broker registered as a relay must
    /// not look like one to a probe)
    Ping,
    /// [`RESOLVE`]
    Resolve,
    /// Anything else (400, as labmesh answers).
    Unknown(&'a str),
}

impl<'a> BrokerMethod<'a> {
    /// Classify a method name.
    pub fn parse(method: &'a str) -> Self {
        match method {
            LIST_RELAY_IDS => BrokerMethod::ListRelayIds,
            LIST_BANKS => BrokerMethod::ListBanks,
            BROKER_PING => BrokerMethod::Ping,
            RESOLVE => BrokerMethod::Resolve,
            other => BrokerMethod::Unknown(other),
        }
    }
}

/// Result of [`DESCRIBE`]: the description's fields, then `relay_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DescribeResult {
    /// What the driver offers.
    #[serde(flatten)]
    pub description: Description,
    /// The relay answering.
    pub relay_id: String,
    /// Version of the driver code (extension): the labmesh-drivers release
    /// for built-in and TOML drivers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// The instrument's streams (extension; absent when it has none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<crate::stream::StreamSpec>,
}

/// Result of [`PING`] (relay) and [`BROKER_PING`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResult {
    /// Always true.
    pub ok: bool,
    /// The relay answering (absent from the broker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_id: Option<String>,
}

/// Params of [`RESOLVE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveParams {
    /// The relay to look up.
    pub relay_id: String,
}

/// Result of [`RESOLVE`].
pub type ResolveResult = RelayInfo;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::describe::MethodSpec;

    #[test]
    fn golden_bytes() {
        let d = DescribeResult {
            description: Description {
                state_fields: Vec::new(),
                driver: "mock-psu".into(),
                identity: Some("SIM".into()),
                methods: vec![MethodSpec::new("get_state", "state")],
            },
            relay_id: "Inst-0".into(),
            driver_version: None,
            streams: vec![],
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"driver":"mock-psu","identity":"SIM","methods":[{"name":"get_state","doc":"state","params":[]}],"relay_id":"Inst-0"}"#
        );
        let back: DescribeResult =
            serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        let p = PingResult {
            ok: true,
            relay_id: Some("a".into()),
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"ok":true,"relay_id":"a"}"#
        );
        assert_eq!(
            serde_json::to_string(&PingResult {
                ok: true,
                relay_id: None
            })
            .unwrap(),
            r#"{"ok":true}"#
        );
        assert_eq!(
            serde_json::to_string(&ResolveParams {
                relay_id: "psu-1".into()
            })
            .unwrap(),
            r#"{"relay_id":"psu-1"}"#
        );
    }

    #[test]
    fn classify() {
        assert_eq!(RelayMethod::parse("lm.describe"), RelayMethod::Describe);
        assert_eq!(
            RelayMethod::parse("lm.nope"),
            RelayMethod::UnknownReserved("lm.nope")
        );
        assert_eq!(
            RelayMethod::parse("set_voltage"),
            RelayMethod::Instrument("set_voltage")
        );
        assert_eq!(RelayMethod::parse("lm.lock"), RelayMethod::Lock);
        assert_eq!(RelayMethod::parse("lm.unlock"), RelayMethod::Unlock);
        assert_eq!(RelayMethod::parse("lm.who"), RelayMethod::Who);
        assert_eq!(RelayMethod::parse("lm.streams"), RelayMethod::Streams);
        assert_eq!(
            RelayMethod::parse("lm.stream_set_rate"),
            RelayMethod::StreamSetRate
        );
        assert_eq!(RelayMethod::parse("lm.last"), RelayMethod::Last);
        assert_eq!(BrokerMethod::parse("ping"), BrokerMethod::Ping);
        assert_eq!(
            BrokerMethod::parse("lm.ping"),
            BrokerMethod::Unknown("lm.ping")
        );
        assert_eq!(BrokerMethod::parse("lm.resolve"), BrokerMethod::Resolve);
        assert_eq!(BrokerMethod::parse("x"), BrokerMethod::Unknown("x"));
    }
}
