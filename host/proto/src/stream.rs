//! Streams (extension): named instrument calls a relay runs at a rate and
//! publishes on the bus, controlled at runtime with reserved methods.
//!
//! A sample is published as `[topic, header]` or, when the value is bytes
//! (a waveform from `query_binary`), `[topic, header, bytes]`:
//!
//! * topic: `stream.<relay_id>.<name>` followed by one NUL byte
//!   ([`crate::topic::stream`]). The terminator makes a ZeroMQ prefix
//!   subscription to one stream exact (`stream.r.v\0` never matches
//!   `stream.r.v2\0`); `stream.<relay_id>.` receives every stream of a
//!   relay (and of relays whose id continues with a dot: filter on the
//!   header's `relay_id`).
//! * header: [`StreamSample`] as JSON.
//!
//! Python labmesh clients subscribe to `state.` and `dataset.` only, so
//! they never see a stream message.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codes::ErrorBody;

/// Fastest rate a stream may run at, Hz.
pub const MAX_HZ: f64 = 20_000.0;
/// Slowest rate a stream may run at, Hz (one sample in 1000 s).
pub const MIN_HZ: f64 = 0.001;
/// Streams one instrument may have.
pub const MAX_STREAMS: usize = 64;
/// Longest stream name, bytes.
pub const MAX_NAME: usize = 64;

/// Whether `name` is a valid stream name: 1 to [`MAX_NAME`] bytes of ASCII
/// letters, digits, `_` and `-` (no dot, so `<relay_id>.<name>` splits at
/// the last dot).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Whether `hz` is an accepted rate: finite, within [`MIN_HZ`]..=[`MAX_HZ`].
pub fn valid_hz(hz: f64) -> bool {
    hz.is_finite() && (MIN_HZ..=MAX_HZ).contains(&hz)
}

fn default_true() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A stream's definition: in `[[relay.instruments]] streams = [...]` and
/// the params of [`crate::lm::STREAM_ADD`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// Name, unique per instrument ([`valid_name`]).
    pub name: String,
    /// The instrument method called for each sample.
    pub method: String,
    /// Its params (bound against the method's description when added).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
    /// Samples per second ([`valid_hz`]).
    pub hz: f64,
    /// Whether it publishes (default true). A disabled stream publishes
    /// nothing and calls nothing.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub enabled: bool,
}

impl StreamSpec {
    /// Check the name and rate; the method is checked by the relay against
    /// the driver's description.
    pub fn check(&self) -> Result<(), String> {
        if !valid_name(&self.name) {
            return Err(format!(
                "stream name {:?}: 1 to {MAX_NAME} letters, digits, '_' or '-'",
                self.name
            ));
        }
        if !valid_hz(self.hz) {
            return Err(format!(
                "stream {:?}: hz {} is outside {MIN_HZ}..={MAX_HZ}",
                self.name, self.hz
            ));
        }
        Ok(())
    }
}

/// One published sample's header (and the body of [`crate::lm::LAST`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamSample {
    /// The relay.
    pub relay_id: String,
    /// The stream's name.
    pub stream: String,
    /// Per stream, from 0, +1 per published sample; restarts at 0 when the
    /// stream is added again or the relay restarts.
    pub seq: u64,
    /// When the call started, Unix seconds (comparable across hosts).
    pub t_wall: f64,
    /// When the call started, seconds on the relay's monotonic clock
    /// (comparable between samples of one relay run only; never jumps).
    pub t_mono: f64,
    /// Whether the call succeeded.
    pub ok: bool,
    /// The call's result (absent on error and for binary values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The call's error (when `ok` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// A binary value: its length in bytes; the bytes are the message's
    /// third frame (in [`LastResult`], base64 in `binary_base64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<u64>,
}

/// Params naming one stream ([`crate::lm::STREAM_ENABLE`],
/// [`crate::lm::STREAM_DISABLE`], [`crate::lm::STREAM_REMOVE`],
/// [`crate::lm::LAST`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamName {
    /// The stream.
    pub name: String,
}

/// Params of [`crate::lm::STREAM_SET_RATE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetRate {
    /// The stream.
    pub name: String,
    /// The new rate ([`valid_hz`]).
    pub hz: f64,
}

/// Result of every stream-control method: what the stream is now, and
/// whether this call changed anything (calling it again changes nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamChanged {
    /// The stream.
    pub name: String,
    /// False when the stream already was as asked.
    pub changed: bool,
    /// Whether the stream exists after the call (false after remove).
    pub exists: bool,
}

/// One stream as [`crate::lm::STREAMS`] reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// Its definition (`method` is the driver's event name for a push
    /// stream).
    #[serde(flatten)]
    pub spec: StreamSpec,
    /// Published by the driver itself (no rate, not schedulable).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub push: bool,
    /// Samples published since added.
    pub samples: u64,
    /// Error samples among them.
    pub errors: u64,
    /// Deadlines skipped because the instrument was still busy (never
    /// made up later: a late stream does not bunch samples).
    pub missed: u64,
    /// Measured rate over the last few seconds, Hz.
    pub actual_hz: f64,
    /// 99th percentile of how late a sample started after its deadline,
    /// over the last 1024 samples, seconds.
    pub jitter_p99_s: f64,
    /// The newest error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ErrorBody>,
}

/// Result of [`crate::lm::STREAMS`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamsResult {
    /// The relay.
    pub relay_id: String,
    /// Its streams, in the order they were added.
    pub streams: Vec<StreamStatus>,
}

/// Result of [`crate::lm::LAST`]: the newest sample, at once, for a late
/// joiner (null `sample` when nothing was published yet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastResult {
    /// The newest sample's header.
    pub sample: Option<StreamSample>,
    /// Its binary value, base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_base64: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn golden_bytes() {
        let s = StreamSample {
            relay_id: "psu-1".into(),
            stream: "v".into(),
            seq: 7,
            t_wall: 1_764_633_600.25,
            t_mono: 12.5,
            ok: true,
            value: Some(json!(2.5)),
            error: None,
            binary: None,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"relay_id":"psu-1","stream":"v","seq":7,"t_wall":1764633600.25,"t_mono":12.5,"ok":true,"value":2.5}"#
        );
        let e = StreamSample {
            ok: false,
            value: None,
            error: Some(ErrorBody::new(408, "timeout")),
            ..s.clone()
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"relay_id":"psu-1","stream":"v","seq":7,"t_wall":1764633600.25,"t_mono":12.5,"ok":false,"error":{"code":408,"message":"timeout"}}"#
        );
        let b = StreamSample {
            value: None,
            binary: Some(1000),
            ..s.clone()
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"relay_id":"psu-1","stream":"v","seq":7,"t_wall":1764633600.25,"t_mono":12.5,"ok":true,"binary":1000}"#
        );
        let spec: StreamSpec =
            serde_json::from_str(r#"{"name":"v","method":"measure_voltage","hz":10}"#).unwrap();
        assert!(spec.enabled);
        assert_eq!(
            serde_json::to_string(&spec).unwrap(),
            r#"{"name":"v","method":"measure_voltage","hz":10.0}"#
        );
        let off = StreamSpec {
            enabled: false,
            params: json!({"channel": 2}),
            ..spec
        };
        assert_eq!(
            serde_json::to_string(&off).unwrap(),
            r#"{"name":"v","method":"measure_voltage","params":{"channel":2},"hz":10.0,"enabled":false}"#
        );
        assert!(
            serde_json::from_str::<StreamSpec>(r#"{"name":"v","method":"m","hz":1,"rate":2}"#)
                .is_err()
        );
        let st = StreamStatus {
            spec: off,
            push: false,
            samples: 3,
            errors: 0,
            missed: 1,
            actual_hz: 9.5,
            jitter_p99_s: 0.0002,
            last_error: None,
        };
        assert_eq!(
            serde_json::to_string(&st).unwrap(),
            r#"{"name":"v","method":"measure_voltage","params":{"channel":2},"hz":10.0,"enabled":false,"samples":3,"errors":0,"missed":1,"actual_hz":9.5,"jitter_p99_s":0.0002}"#
        );
        assert_eq!(
            serde_json::to_string(&StreamChanged {
                name: "v".into(),
                changed: false,
                exists: true
            })
            .unwrap(),
            r#"{"name":"v","changed":false,"exists":true}"#
        );
        assert_eq!(
            serde_json::to_string(&LastResult {
                sample: None,
                binary_base64: None
            })
            .unwrap(),
            r#"{"sample":null}"#
        );
    }

    #[test]
    fn names_and_rates() {
        assert!(valid_name("v"));
        assert!(valid_name("wave_form-2"));
        for bad in ["", "a.b", "a b", "ü", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_hz(10_000.0));
        assert!(valid_hz(0.001));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 20_001.0, 0.0009] {
            assert!(!valid_hz(bad), "{bad}");
        }
    }
}
