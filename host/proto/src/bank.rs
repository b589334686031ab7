//! Bank messages: typed versions of the JSON objects exchanged with a
//! databank's ingest and retrieve sockets.
//!
//! Legacy (labmesh v0) messages keep labmesh's field order; every extension
//! field is optional and skipped when absent, so a reply to a legacy request
//! serialises byte for byte as the Python `DataBank` would send it. See
//! `docs/PROTOCOL.md` (Databank) for the frame-by-frame description.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::mesh::{ChunkStatus, DecodeFailure};
use crate::ErrorBody;

/// A request on the bank's ingest ROUTER (frame 1 after the identity; an
/// `ingest_chunk` carries its bytes in frame 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum IngestRequest {
    /// `{"type":"ingest_start",...}`: open an upload session.
    IngestStart(IngestStart),
    /// `{"type":"ingest_chunk",...}` (+ raw bytes frame unless `eof`).
    IngestChunk(IngestChunk),
    /// Extension: `{"type":"ingest_resume",...}`: re-attach to a session.
    IngestResume(IngestResume),
    /// Extension: `{"type":"ingest_abort",...}`: drop a session.
    IngestAbort(IngestAbort),
}

/// `ingest_start`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestStart {
    /// Dataset id; labmesh generates a uuid4 hex when absent.
    #[serde(default)]
    pub dataset_id: Option<String>,
    /// Uploading relay (`"unknown"` when absent).
    #[serde(default)]
    pub relay_id: Option<String>,
    /// Free-form metadata object.
    #[serde(default)]
    pub meta: Option<Value>,
    /// Declared size in bytes (labmesh optional field; verified at eof).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Declared lower-case hex SHA-256 (labmesh optional field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Extension: upload token; makes the session resumable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Shared network password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Value>,
}

/// `ingest_chunk`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestChunk {
    /// Dataset id (informational; the session is found by sender/token).
    #[serde(default)]
    pub dataset_id: Option<String>,
    /// Chunk sequence number, from 0.
    #[serde(default)]
    pub seq: u64,
    /// True on the final, bytes-less message.
    #[serde(default)]
    pub eof: bool,
    /// Extension (eof only): total size, verified like `ingest_start`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Extension (eof only): SHA-256 of the whole content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Extension: `ingest_resume`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestResume {
    /// The dataset being uploaded.
    pub dataset_id: String,
    /// The token given in `ingest_start`.
    pub token: String,
    /// Set once the uploader has sent eof: lets the bank confirm a commit
    /// whose `ingest_done` was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// As `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Shared network password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Value>,
}

/// Extension: `ingest_abort`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestAbort {
    /// The dataset being uploaded.
    pub dataset_id: String,
    /// The session's token.
    pub token: String,
}

/// A reply on the ingest socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum IngestReply {
    /// `{"type":"ingest_ack","dataset_id"}` (+ extension fields).
    IngestAck(IngestAck),
    /// `{"type":"ingest_ack_chunk","dataset_id","next_seq"[,"status"]}`.
    IngestAckChunk(IngestAckChunk),
    /// `{"type":"ingest_done","dataset_id","size","sha256"}`.
    IngestDone(IngestDone),
    /// `{"type":"error"[,"dataset_id"],"error":{"code","message"}}`.
    Error(BankErrorReply),
}

/// `ingest_ack`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestAck {
    /// The session's dataset id.
    pub dataset_id: String,
    /// Extension: echo of the upload token (absent for legacy sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Extension: next chunk sequence the bank expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_seq: Option<u64>,
    /// Extension: bytes the bank holds, i.e. where chunk `next_seq` starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Extension: largest chunk the bank accepts, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chunk: Option<u64>,
}

/// `ingest_ack_chunk`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestAckChunk {
    /// The session's dataset id.
    pub dataset_id: String,
    /// Next chunk sequence the bank expects.
    pub next_seq: u64,
    /// `"out_of_order"` when the chunk was dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ChunkStatus>,
    /// Extension (token sessions): every chunk below this is on stable
    /// storage and survives a bank crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_seq: Option<u64>,
}

/// `ingest_done`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestDone {
    /// The committed dataset.
    pub dataset_id: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its lower-case hex SHA-256.
    pub sha256: String,
}

/// `{"type":"error",...}` on either bank socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BankErrorReply {
    /// The dataset concerned, when known (labmesh sets it on 422).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_id: Option<String>,
    /// Code and message.
    pub error: ErrorBody,
}

/// A request on the bank's retrieve ROUTER.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RetrieveRequest {
    /// `{"type":"get","dataset_id"}` (+ extension fields).
    Get(Get),
    /// Extension: grant more chunks to a credit-mode download.
    Credit(Credit),
    /// Extension: stop a download.
    Cancel(Cancel),
    /// Extension: catalogue query.
    ListDatasets(Query),
}

/// `get`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Get {
    /// Dataset id.
    #[serde(default)]
    pub dataset_id: Option<String>,
    /// Extension: credit mode; the bank sends at most this many chunks
    /// before the client grants more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit: Option<u32>,
    /// Extension: start at this byte offset (resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Extension: wanted chunk size in bytes (the bank caps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,
    /// Shared network password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Value>,
}

/// Extension: `credit`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Credit {
    /// The download's dataset id.
    pub dataset_id: String,
    /// Additional chunks the client is ready to receive.
    pub credit: u32,
}

/// Extension: `cancel`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cancel {
    /// The download's dataset id.
    pub dataset_id: String,
}

/// Extension: `list_datasets` (catalogue query). All filters optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// Only datasets uploaded by this relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_id: Option<String>,
    /// Only datasets created at or after this time (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<f64>,
    /// Only datasets created before this time (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<f64>,
    /// Only datasets whose meta has every one of these key = value pairs
    /// (values compared as text: `5`, `"5"` and `5.0`... see the protocol doc).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "pairs")]
    pub meta: Vec<(String, String)>,
    /// At most this many (newest first); the bank caps it at 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Shared network password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Value>,
}

/// `meta` as a JSON object of strings on the wire, pairs in Rust.
mod pairs {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
        let m: Map<String, Value> = v
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        m.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
        let m = Option::<Map<String, Value>>::deserialize(d)?.unwrap_or_default();
        Ok(m.into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect())
    }
}

/// A reply on the retrieve socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RetrieveReply {
    /// `{"type":"meta","dataset_id","size","sha256","meta"}` (+ extensions).
    Meta(MetaMsg),
    /// `{"type":"chunk","dataset_id","seq","eof"}` (+ bytes frame unless eof).
    Chunk(ChunkMsg),
    /// Extension: `{"type":"datasets","datasets":[...]}`.
    Datasets(DatasetList),
    /// `{"type":"error",...}`.
    Error(BankErrorReply),
}

/// `meta`, the first reply to `get`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaMsg {
    /// Dataset id.
    pub dataset_id: String,
    /// Total size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the whole dataset.
    pub sha256: String,
    /// The uploader's metadata.
    #[serde(default)]
    pub meta: Value,
    /// Extension (answers to extended gets): first byte sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Extension: chunk size used for this stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,
    /// Extension: echo of the granted initial credit (credit mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit: Option<u32>,
}

/// `chunk`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkMsg {
    /// Dataset id.
    pub dataset_id: String,
    /// Sequence number within this stream, from 0.
    pub seq: u64,
    /// True on the final, bytes-less message.
    pub eof: bool,
    /// Extension (extended gets): byte offset of this chunk in the dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// Extension: the answer to `list_datasets`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetList {
    /// Matching datasets, newest first.
    pub datasets: Vec<DatasetInfo>,
}

/// One catalogue entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Dataset id.
    pub dataset_id: String,
    /// The bank holding it.
    pub bank_id: String,
    /// The uploading relay.
    pub relay_id: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Commit time, Unix seconds.
    pub created: f64,
    /// The uploader's metadata.
    #[serde(default)]
    pub meta: Value,
}

/// Why a frame could not be decoded into a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Malformed {
    /// Not JSON, or not an object.
    NotAnObject(String),
    /// Missing or unexpected `type`.
    UnknownType(Option<String>),
    /// Known type, bad fields.
    BadFields {
        /// The message type.
        kind: String,
        /// serde's explanation, naming the field.
        why: String,
    },
}

impl Malformed {
    /// A human-readable explanation for the error reply.
    pub fn message(&self) -> String {
        match self {
            Malformed::NotAnObject(why) => format!("bad request: {why}"),
            Malformed::UnknownType(Some(t)) => format!("unknown message type {t:?}"),
            Malformed::UnknownType(None) => "missing message type".to_string(),
            Malformed::BadFields { kind, why } => format!("bad {kind}: {why}"),
        }
    }
}

fn decode_tagged<T: serde::de::DeserializeOwned>(
    frame: &[u8],
    known: &[&str],
) -> Result<T, Malformed> {
    // Parsed once on the happy path; a failure is looked at again only to
    // say what was wrong.
    serde_json::from_slice(frame).map_err(|e| match crate::mesh::diagnose(frame, known, e) {
        DecodeFailure::NotAnObject(why) => Malformed::NotAnObject(why),
        DecodeFailure::UnknownType(t) => Malformed::UnknownType(t),
        DecodeFailure::BadFields { kind, why, .. } => Malformed::BadFields { kind, why },
    })
}

/// Decode an ingest request frame.
pub fn decode_ingest(frame: &[u8]) -> Result<IngestRequest, Malformed> {
    decode_tagged(
        frame,
        &[
            "ingest_start",
            "ingest_chunk",
            "ingest_resume",
            "ingest_abort",
        ],
    )
}

/// Decode a retrieve request frame.
pub fn decode_retrieve(frame: &[u8]) -> Result<RetrieveRequest, Malformed> {
    decode_tagged(frame, &["get", "credit", "cancel", "list_datasets"])
}

/// Decode a reply frame from an ingest socket.
pub fn decode_ingest_reply(frame: &[u8]) -> Result<IngestReply, Malformed> {
    decode_tagged(
        frame,
        &["ingest_ack", "ingest_ack_chunk", "ingest_done", "error"],
    )
}

/// Decode a reply frame from a retrieve socket.
pub fn decode_retrieve_reply(frame: &[u8]) -> Result<RetrieveReply, Malformed> {
    decode_tagged(frame, &["meta", "chunk", "datasets", "error"])
}

impl BankErrorReply {
    /// An error without a dataset id.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        BankErrorReply {
            dataset_id: None,
            error: ErrorBody::new(code, message),
        }
    }

    /// An error naming a dataset.
    pub fn for_dataset(dataset_id: &str, code: i64, message: impl Into<String>) -> Self {
        BankErrorReply {
            dataset_id: Some(dataset_id.to_string()),
            error: ErrorBody::new(code, message),
        }
    }
}

/// The bank's stable message for a chunk that has no session (labmesh's).
pub const NO_SESSION: &str = "no ingest_start";

/// Largest dataset id length.
pub const MAX_DATASET_ID: usize = 128;

/// Whether `id` is a valid dataset id: 1..=128 of `[A-Za-z0-9._-]`, and not
/// `.` or `..`. Such an id is safe as a file name on every platform.
pub fn valid_dataset_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DATASET_ID
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `token` is a valid upload token: 1..=64 of `[A-Za-z0-9_-]`.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 64
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_tokens() {
        for ok in ["a", "run-001.raw", "A_b.c-9", &"x".repeat(128), "..."] {
            assert!(valid_dataset_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            "sp ace",
            "é",
            &"x".repeat(129),
        ] {
            assert!(!valid_dataset_id(bad), "{bad}");
        }
        assert!(valid_token("9f0c_ab-1"));
        assert!(!valid_token("a.b"));
        assert!(!valid_token(""));
    }

    #[test]
    fn legacy_messages_are_byte_exact() {
        let ack = IngestReply::IngestAckChunk(IngestAckChunk {
            dataset_id: "d".into(),
            next_seq: 3,
            status: Some(ChunkStatus::OutOfOrder),
            durable_seq: None,
        });
        assert_eq!(
            crate::mesh::encode(&ack),
            br#"{"type":"ingest_ack_chunk","dataset_id":"d","next_seq":3,"status":"out_of_order"}"#
        );
        let e = IngestReply::Error(BankErrorReply::new(409, NO_SESSION));
        assert_eq!(
            crate::mesh::encode(&e),
            br#"{"type":"error","error":{"code":409,"message":"no ingest_start"}}"#
        );
        let c = RetrieveReply::Chunk(ChunkMsg {
            dataset_id: "d".into(),
            seq: 0,
            eof: true,
            offset: None,
        });
        assert_eq!(
            crate::mesh::encode(&c),
            br#"{"type":"chunk","dataset_id":"d","seq":0,"eof":true}"#
        );
        // What labmesh's upload_dataset sends decodes, extra fields ignored.
        let r =
            decode_ingest(br#"{"type":"ingest_chunk","dataset_id":"d","seq":4,"eof":false,"x":1}"#);
        assert!(matches!(
            r,
            Ok(IngestRequest::IngestChunk(IngestChunk {
                seq: 4,
                eof: false,
                ..
            }))
        ));
        let q = decode_retrieve(br#"{"type":"list_datasets","meta":{"n":5,"k":"v"}}"#);
        match q {
            Ok(RetrieveRequest::ListDatasets(q)) => {
                let mut m = q.meta;
                m.sort();
                assert_eq!(
                    m,
                    [
                        ("k".to_string(), "v".to_string()),
                        ("n".to_string(), "5".to_string())
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_retrieve(b"\xff"),
            Err(Malformed::NotAnObject(_))
        ));
        assert!(matches!(
            decode_retrieve(br#"{"type":"put"}"#),
            Err(Malformed::UnknownType(Some(_)))
        ));
    }
}
