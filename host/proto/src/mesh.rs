//! Mesh messages: typed versions of the JSON objects labmesh exchanges.
//!
//! Every request and reply is one JSON object with a `"type"` field, encoded
//! compactly (no spaces) as labmesh's `dumps` does. Field order here is the
//! order on the wire. Extension fields are optional and skipped when absent,
//! so a message built from a labmesh v0 request serialises exactly as the
//! Python package would send it (up to non-ASCII escaping: Python escapes,
//! serde_json writes UTF-8; both are the same JSON text).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ErrorBody;

string_enum! {
    /// Who is saying `hello` (or `heartbeat`, `bye`).
    pub enum Role {
        /// An instrument relay.
        Relay => "relay",
        /// A databank.
        Bank => "bank",
        /// A client (anything that is neither relay nor bank is served as one).
        Client => "client",
    }
}

string_enum! {
    /// A presence event's status.
    pub enum PresenceStatus {
        /// The node registered (or re-registered).
        Online => "online",
        /// The node left or expired.
        Offline => "offline",
    }
}

string_enum! {
    /// Why a presence event happened.
    pub enum PresenceReason {
        /// A `hello` was accepted.
        Registered => "registered",
        /// No sign of life for `ttl_seconds` (and no answer to probes).
        TtlExpired => "ttl expired",
        /// The node said `bye`.
        Shutdown => "shutdown",
        /// Another registration took the id (the old owner was gone).
        Replaced => "replaced",
    }
}

string_enum! {
    /// `ingest_ack_chunk`'s `status`.
    pub enum ChunkStatus {
        /// The chunk was not the next one expected and was dropped.
        OutOfOrder => "out_of_order",
    }
}

/// A `hello` registration (relay, bank) or greeting (client).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// `relay`, `bank`, or anything else (treated as a client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Relay id (role relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_id: Option<String>,
    /// The relay's public RPC endpoint (role relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_endpoint: Option<String>,
    /// Bank id (role bank); the broker defaults it to `bank`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_id: Option<String>,
    /// Bank ingest endpoint (role bank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<String>,
    /// Bank retrieve endpoint (role bank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieve: Option<String>,
    /// Shared network password (labmesh upstream `LMH_NETWORK_PASSWORD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Value>,
    /// Extension (cascading): the directory endpoint of the child broker
    /// that registers this node on its behalf, so that a clash names both
    /// owners' brokers. Absent for a node registering itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// A remote procedure call, to the broker or to a relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcRequest {
    /// Caller-chosen id echoed in the reply (labmesh uses a uuid4 hex string).
    #[serde(default)]
    pub rpc_uuid: Value,
    /// Method name.
    pub method: String,
    /// Object (named), array (positional), scalar (single argument) or null.
    #[serde(default)]
    pub params: Value,
    /// Shared network password, when the network has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Value>,
    /// Extension: the token of the instrument lease this caller holds
    /// ([`crate::lease`]); a relay refuses state-changing calls without it
    /// while the instrument is leased. labmesh v0 peers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
}

/// A sign of life from a relay or bank (labmesh brokers ignore it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// `relay` or `bank`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Set by relays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_id: Option<String>,
    /// Set by banks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_id: Option<String>,
    /// Shared network password, when the network has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Value>,
    /// Extension: when present, a Rust broker answers with a
    /// [`Reply::HeartbeatAck`] carrying this id (labmesh v0 heartbeats have
    /// none and get no answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_uuid: Option<String>,
    /// Extension: the registration token from the [`HelloAck`]. A heartbeat
    /// with a token refreshes only the registration that token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Extension (relays): the endpoint this relay serves; a heartbeat from
    /// another endpoint than the registered one is not `known`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_endpoint: Option<String>,
}

/// Extension: a node leaving on purpose (graceful shutdown). No reply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bye {
    /// `relay` or `bank`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Set by relays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_id: Option<String>,
    /// Set by banks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_id: Option<String>,
    /// Shared network password, when the network has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Value>,
    /// Extension: the registration token from the [`HelloAck`]; a `bye`
    /// without the registration's token is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Extension: the body of a `presence.<id>` bus message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// Relay or bank id.
    pub id: String,
    /// `relay` or `bank`.
    pub role: Role,
    /// `online` or `offline`.
    pub status: PresenceStatus,
    /// Why: `registered`, `ttl expired`, `shutdown`, `replaced`.
    pub reason: PresenceReason,
    /// The node's RPC (relay) or retrieve (bank) endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Event time, Unix seconds.
    pub ts: f64,
}

/// A request arriving on a broker or relay ROUTER socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// `{"type":"hello",...}`
    Hello(Hello),
    /// `{"type":"rpc",...}`
    Rpc(RpcRequest),
    /// `{"type":"heartbeat",...}`
    Heartbeat(Heartbeat),
    /// `{"type":"bye",...}` (ext)
    Bye(Bye),
}

/// Reply to a `hello` (sent as [`Reply::Hello`]: `{"type":"hello",...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloAck {
    /// Whether the registration was accepted.
    pub ok: bool,
    /// The role as understood (`relay`, `bank`, `client`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The bank id as registered (role bank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_id: Option<String>,
    /// Why the hello was refused (upstream's shape: a plain string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    /// Extension (relays and banks): the registration token. It ties the
    /// registration to its registrant: heartbeats and `bye` carry it back
    /// (labmesh v0 nodes ignore it and send neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl HelloAck {
    /// An accepted hello for `role`.
    pub fn ok(role: Role) -> Self {
        HelloAck {
            ok: true,
            role: Some(role),
            bank_id: None,
            error: None,
            token: None,
        }
    }

    /// A refused hello with upstream's string error.
    pub fn refused(why: &str) -> Self {
        HelloAck {
            ok: false,
            role: None,
            bank_id: None,
            error: Some(Value::String(why.to_string())),
            token: None,
        }
    }
}

/// A reply on a broker or relay ROUTER socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// `{"type":"hello","ok",...}`: the answer to a `hello`.
    Hello(HelloAck),
    /// `{"type":"rpc_result","rpc_uuid","result"}`
    RpcResult {
        /// Echo of the request's id.
        rpc_uuid: Value,
        /// The method's return value.
        result: Value,
    },
    /// `{"type":"rpc_error","rpc_uuid","error":{"code","message"}}`
    RpcError {
        /// Echo of the request's id (null when the request had none).
        rpc_uuid: Value,
        /// What went wrong.
        error: ErrorBody,
    },
    /// `{"type":"error","error":{"code","message"}}`: a request that could
    /// not be understood well enough to answer in its own shape.
    Error {
        /// What went wrong.
        error: ErrorBody,
    },
    /// Extension: `{"type":"heartbeat_ack","rpc_uuid","known"}`; `known`
    /// is false when the broker has no registration for the sender (it
    /// restarted, or expired it), which tells the sender to register again.
    HeartbeatAck {
        /// Echo of the heartbeat's id.
        rpc_uuid: Value,
        /// Whether the broker knows the sender.
        known: bool,
    },
}

/// The body of a `state.<relay_id>` bus message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateMsg {
    /// The publishing relay.
    pub relay_id: String,
    /// The driver's state object.
    pub state: Value,
    /// Extension: per-relay sequence number, starting at 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Extension: publish time, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<f64>,
    /// Extension: `true` when the instrument was busy and this is the last
    /// known state, republished so the relay is seen alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<bool>,
    /// Extension: the relay's state interval in seconds (a client marks the
    /// relay stale after three missed intervals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<f64>,
}

/// The body of a `dataset.<bank_id>` announcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetAnnounce {
    /// Dataset id.
    pub dataset_id: String,
    /// The bank holding it.
    pub bank_id: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    /// The relay that uploaded it.
    pub relay_id: String,
}

/// A relay as listed by the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayInfo {
    /// Relay id.
    pub relay_id: String,
    /// Where to send RPCs.
    pub rpc_endpoint: String,
}

/// A bank as listed by the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankInfo {
    /// Bank id.
    pub bank_id: String,
    /// Upload endpoint.
    pub ingest: Option<String>,
    /// Download endpoint.
    pub retrieve: Option<String>,
}

/// Whether `id` is a valid relay or bank id: 1..=128 of `[A-Za-z0-9._-]`,
/// not `.` or `..` (the dataset-id rule). Anything else is refused with 400.
pub fn valid_node_id(id: &str) -> bool {
    crate::bank::valid_dataset_id(id) && id.len() <= crate::limits::MAX_NODE_ID
}

/// Whether `ep` is an endpoint a node may register: `tcp://`, `ipc://` or
/// `inproc://` followed by something, at most
/// [`crate::limits::MAX_ENDPOINT`] bytes, no whitespace or control bytes.
pub fn valid_endpoint(ep: &str) -> bool {
    ep.len() <= crate::limits::MAX_ENDPOINT
        && ["tcp://", "ipc://", "inproc://"]
            .iter()
            .any(|p| ep.len() > p.len() && ep.starts_with(p))
        && ep.bytes().all(|b| b.is_ascii_graphic())
}

/// Encode a message as compact JSON bytes.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising these types cannot fail: all keys are strings and no
    // custom Serialize impl returns an error.
    // (A map with non-string keys is the only way to fail, and no message
    // here has one; a debug build would say so loudly.)
    serde_json::to_vec(msg).unwrap_or_else(|e| {
        debug_assert!(false, "serialising a mesh message failed: {e}");
        b"{}".to_vec()
    })
}

/// Why a frame could not be turned into a [`Request`].
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeFailure {
    /// Not JSON, or JSON but not an object.
    NotAnObject(String),
    /// An object without a string `type`, or with a type this node does not
    /// serve.
    UnknownType(Option<String>),
    /// A known type with missing or mistyped fields; the `rpc_uuid` is kept
    /// (when there was one) so the reply can carry it.
    BadFields {
        /// The message's type.
        kind: String,
        /// Parser message naming the field.
        why: String,
        /// The request id, if the object had one.
        rpc_uuid: Value,
    },
}

impl DecodeFailure {
    /// The error reply for this failure, in the protocol's shape.
    pub fn reply(&self) -> Reply {
        match self {
            DecodeFailure::NotAnObject(why) => Reply::Error {
                error: ErrorBody::new(400, format!("bad request: {why}")),
            },
            DecodeFailure::UnknownType(t) => Reply::Error {
                error: ErrorBody::new(
                    400,
                    match t {
                        Some(t) => format!("unknown message type {t:?}"),
                        None => "missing message type".to_string(),
                    },
                ),
            },
            DecodeFailure::BadFields {
                kind,
                why,
                rpc_uuid,
            } if kind == "rpc" => Reply::RpcError {
                rpc_uuid: rpc_uuid.clone(),
                error: ErrorBody::new(400, format!("bad rpc: {why}")),
            },
            DecodeFailure::BadFields { kind, why, .. } => Reply::Error {
                error: ErrorBody::new(400, format!("bad {kind}: {why}")),
            },
        }
    }
}

/// The failure as its error reply says it (`unknown message type "x"`,
/// `bad rpc: missing field method`), for logs.
impl std::fmt::Display for DecodeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reply() {
            Reply::Error { error } | Reply::RpcError { error, .. } => {
                write!(f, "{}", error.message)
            }
            _ => write!(f, "undecodable frame"),
        }
    }
}

/// Decode one request frame, telling exactly what was wrong with it.
///
/// A well-formed request is parsed once, straight into its type; only a
/// frame that fails is looked at again to say what was wrong with it.
pub fn decode_request(frame: &[u8]) -> Result<Request, DecodeFailure> {
    match serde_json::from_slice::<Request>(frame) {
        Ok(r) => Ok(r),
        Err(e) => Err(diagnose(frame, &["hello", "rpc", "heartbeat", "bye"], e)),
    }
}

/// Decode one reply frame (from a broker or relay ROUTER).
pub fn decode_reply(frame: &[u8]) -> Result<Reply, DecodeFailure> {
    match serde_json::from_slice::<Reply>(frame) {
        Ok(r) => Ok(r),
        Err(e) => Err(diagnose(
            frame,
            &["hello", "rpc_result", "rpc_error", "error", "heartbeat_ack"],
            e,
        )),
    }
}

/// Why `frame` did not decode into a message of one of the `known` types.
pub(crate) fn diagnose(frame: &[u8], known: &[&str], err: serde_json::Error) -> DecodeFailure {
    let value: Value = match serde_json::from_slice(frame) {
        Ok(v) => v,
        Err(e) => return DecodeFailure::NotAnObject(format!("not JSON: {e}")),
    };
    let Value::Object(obj) = &value else {
        return DecodeFailure::NotAnObject("not a JSON object".to_string());
    };
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.clone(),
        _ => return DecodeFailure::UnknownType(None),
    };
    if !known.contains(&kind.as_str()) {
        return DecodeFailure::UnknownType(Some(kind));
    }
    DecodeFailure::BadFields {
        kind,
        why: err.to_string(),
        rpc_uuid: obj.get("rpc_uuid").cloned().unwrap_or(Value::Null),
    }
}

impl Reply {
    /// The request id this reply answers, when it carries one (a string, as
    /// every labmesh peer sends).
    pub fn rpc_uuid(&self) -> Option<&str> {
        match self {
            Reply::RpcResult { rpc_uuid, .. }
            | Reply::RpcError { rpc_uuid, .. }
            | Reply::HeartbeatAck { rpc_uuid, .. } => rpc_uuid.as_str(),
            Reply::Hello(_) | Reply::Error { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_ack_bytes_match_labmesh() {
        assert_eq!(
            encode(&Reply::Hello(HelloAck::ok(Role::Relay))),
            br#"{"type":"hello","ok":true,"role":"relay"}"#
        );
        assert_eq!(
            encode(&Reply::Hello(HelloAck::refused("invalid password"))),
            br#"{"type":"hello","ok":false,"error":"invalid password"}"#
        );
    }

    #[test]
    fn rpc_replies_match_labmesh() {
        let r = Reply::RpcResult {
            rpc_uuid: Value::String("ab".into()),
            result: serde_json::json!({"ok": true}),
        };
        assert_eq!(
            encode(&r),
            br#"{"type":"rpc_result","rpc_uuid":"ab","result":{"ok":true}}"#
        );
        let e = Reply::RpcError {
            rpc_uuid: Value::String("ab".into()),
            error: ErrorBody::new(404, "unknown method: x"),
        };
        assert_eq!(
            encode(&e),
            br#"{"type":"rpc_error","rpc_uuid":"ab","error":{"code":404,"message":"unknown method: x"}}"#
        );
    }

    #[test]
    fn decode_reports_what_is_wrong() {
        assert!(matches!(
            decode_request(b"\xff\x00"),
            Err(DecodeFailure::NotAnObject(_))
        ));
        assert!(matches!(
            decode_request(b"[1,2]"),
            Err(DecodeFailure::NotAnObject(_))
        ));
        assert_eq!(
            decode_request(br#"{"x":1}"#),
            Err(DecodeFailure::UnknownType(None))
        );
        assert_eq!(
            decode_request(br#"{"type":"nope"}"#),
            Err(DecodeFailure::UnknownType(Some("nope".into())))
        );
        match decode_request(br#"{"type":"rpc","rpc_uuid":"u","method":5}"#) {
            Err(f @ DecodeFailure::BadFields { .. }) => match f.reply() {
                Reply::RpcError { rpc_uuid, error } => {
                    assert_eq!(rpc_uuid, Value::String("u".into()));
                    assert_eq!(error.code, 400);
                }
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
        let ok = decode_request(br#"{"type":"rpc","rpc_uuid":"u","method":"m","params":null}"#);
        assert!(matches!(
            ok,
            Ok(Request::Rpc(RpcRequest {
                params: Value::Null,
                ..
            }))
        ));
        let leased = Request::Rpc(RpcRequest {
            rpc_uuid: Value::String("u".into()),
            method: "set_voltage".into(),
            params: serde_json::json!({"value": 1.0}),
            password: None,
            lease: Some(42),
        });
        let bytes = encode(&leased);
        assert_eq!(
            bytes,
            br#"{"type":"rpc","rpc_uuid":"u","method":"set_voltage","params":{"value":1.0},"lease":42}"#
        );
        assert_eq!(decode_request(&bytes), Ok(leased));
        let hello = decode_request(br#"{"type":"hello","role":"client"}"#);
        assert!(matches!(hello, Ok(Request::Hello(_))));
    }

    /// Regression: the catalogue's `since` filter now and then missed a
    /// dataset created exactly at `since` (bank test
    /// catalogue_filters_newest_first), because serde_json's default float
    /// parser can be 1 ULP off. The workspace enables `float_roundtrip`:
    /// every timestamp must survive JSON bit for bit.
    #[test]
    fn timestamps_round_trip_exactly_through_json() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let t = std::time::Duration::new(
                1_700_000_000 + x % 200_000_000,
                (x >> 32) as u32 % 1_000_000_000,
            )
            .as_secs_f64();
            let back: f64 = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
            assert_eq!(back.to_bits(), t.to_bits(), "{t}");
        }
    }

    #[test]
    fn state_message_bytes_match_labmesh_order() {
        // Python: dumps({"relay_id": rid, "state": dict(st)}) with the MockPSU
        // state's insertion order; extension fields come after.
        let state: Value = serde_json::from_str(
            r#"{"relay_id":"Inst-0","voltage":2.5,"current":2.4961,"output":true,"last_updated":1.5,"runs":0}"#,
        )
        .unwrap();
        let m = StateMsg {
            relay_id: "Inst-0".into(),
            state,
            seq: None,
            ts: None,
            stale: None,
            interval: None,
        };
        assert_eq!(
            encode(&m),
            br#"{"relay_id":"Inst-0","state":{"relay_id":"Inst-0","voltage":2.5,"current":2.4961,"output":true,"last_updated":1.5,"runs":0}}"#
        );
        let v0_heartbeat = Request::Heartbeat(Heartbeat {
            role: Some(Role::Bank),
            bank_id: Some("bank-0".into()),
            ..Heartbeat::default()
        });
        assert_eq!(
            encode(&v0_heartbeat),
            br#"{"type":"heartbeat","role":"bank","bank_id":"bank-0"}"#
        );
        let ack = Reply::HeartbeatAck {
            rpc_uuid: Value::String("h1".into()),
            known: false,
        };
        assert_eq!(
            encode(&ack),
            br#"{"type":"heartbeat_ack","rpc_uuid":"h1","known":false}"#
        );
    }

    #[test]
    fn cascaded_hello_bytes() {
        // What a child broker sends its parent for one of its relays
        // (`advertise = "gateway"`: the endpoint is the child's gateway).
        let h = Request::Hello(Hello {
            role: Some(Role::Relay),
            relay_id: Some("psu-1".into()),
            rpc_endpoint: Some("tcp://10.1.0.2:41001".into()),
            via: Some("tcp://10.1.0.2:5750".into()),
            ..Hello::default()
        });
        let bytes = encode(&h);
        assert_eq!(
            bytes,
            br#"{"type":"hello","role":"relay","relay_id":"psu-1","rpc_endpoint":"tcp://10.1.0.2:41001","via":"tcp://10.1.0.2:5750"}"#
        );
        assert_eq!(decode_request(&bytes), Ok(h));
        let bank = Request::Hello(Hello {
            role: Some(Role::Bank),
            bank_id: Some("bank-a".into()),
            ingest: Some("tcp://10.1.0.2:41002".into()),
            retrieve: Some("tcp://10.1.0.2:41003".into()),
            via: Some("tcp://10.1.0.2:5750".into()),
            ..Hello::default()
        });
        assert_eq!(
            encode(&bank),
            br#"{"type":"hello","role":"bank","bank_id":"bank-a","ingest":"tcp://10.1.0.2:41002","retrieve":"tcp://10.1.0.2:41003","via":"tcp://10.1.0.2:5750"}"#
        );
    }

    #[test]
    fn presence_bytes_and_unknown_values_kept() {
        let p = Presence {
            id: "psu".into(),
            role: Role::Relay,
            status: PresenceStatus::Offline,
            reason: PresenceReason::TtlExpired,
            endpoint: Some("tcp://127.0.0.1:5850".into()),
            ts: 1.5,
        };
        let bytes = encode(&p);
        assert_eq!(
            bytes,
            br#"{"id":"psu","role":"relay","status":"offline","reason":"ttl expired","endpoint":"tcp://127.0.0.1:5850","ts":1.5}"#
        );
        assert_eq!(serde_json::from_slice::<Presence>(&bytes).unwrap(), p);
        // A value from a newer peer parses, compares and goes out unchanged.
        let newer: Presence = serde_json::from_str(
            r#"{"id":"x","role":"gateway","status":"draining","reason":"maintenance","ts":2.0}"#,
        )
        .unwrap();
        assert_eq!(newer.role, Role::Unknown("gateway".into()));
        assert_eq!(newer.status, "draining");
        assert_eq!(
            encode(&newer),
            br#"{"id":"x","role":"gateway","status":"draining","reason":"maintenance","ts":2.0}"#
        );
        let hello = decode_request(br#"{"type":"hello","role":"oscilloscope"}"#).unwrap();
        assert!(matches!(
            hello,
            Request::Hello(Hello { role: Some(Role::Unknown(ref r)), .. }) if r == "oscilloscope"
        ));
    }

    #[test]
    fn replies_decode_once_into_their_variant() {
        let ok =
            decode_reply(br#"{"type":"hello","ok":true,"role":"bank","bank_id":"b"}"#).unwrap();
        assert_eq!(
            ok,
            Reply::Hello(HelloAck {
                bank_id: Some("b".into()),
                ..HelloAck::ok(Role::Bank)
            })
        );
        assert_eq!(ok.rpc_uuid(), None);
        let r = decode_reply(br#"{"type":"rpc_result","rpc_uuid":"u1","result":[1]}"#).unwrap();
        assert_eq!(r.rpc_uuid(), Some("u1"));
        let e = decode_reply(
            br#"{"type":"rpc_error","rpc_uuid":"u2","error":{"code":408,"message":"t"}}"#,
        )
        .unwrap();
        assert!(matches!(e, Reply::RpcError { ref error, .. } if error.code == 408));
        assert_eq!(
            decode_reply(br#"{"type":"rpc_result","rpc_uuid":"u3"}"#),
            Err(DecodeFailure::BadFields {
                kind: "rpc_result".into(),
                why: "missing field `result`".into(),
                rpc_uuid: Value::String("u3".into()),
            })
        );
        assert_eq!(
            decode_reply(br#"{"type":"weird","rpc_uuid":"u4"}"#),
            Err(DecodeFailure::UnknownType(Some("weird".into())))
        );
    }
}
