//! Endpoint keys: an 8-byte fingerprint of an endpoint's name and schema.
//!
//! A key is FNV-1a 64 over the UTF-8 string `"{name}:{schema}"`, little-endian.
//! Computed at compile time, as postcard-rpc does, so a host and a device built
//! from different message definitions disagree on the key and the device answers
//! `UnknownEndpoint` instead of misreading the body.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// An endpoint or topic fingerprint (8 bytes on the wire, no length prefix).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Key(pub [u8; 8]);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

const fn fnv1a_bytes(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    hash
}

impl Key {
    /// The all-zero key, used for frames that belong to no endpoint
    /// (an error answering a frame whose header could not be read).
    pub const ZERO: Key = Key([0; 8]);

    /// FNV-1a 64 of `"{name}:{schema}"`, little-endian.
    pub const fn for_endpoint(name: &str, schema: &str) -> Key {
        let mut h = fnv1a_bytes(FNV_OFFSET, name.as_bytes());
        h = fnv1a_bytes(h, b":");
        h = fnv1a_bytes(h, schema.as_bytes());
        Key(h.to_le_bytes())
    }
}

/// A request/response endpoint: a name, a schema string and the two body types.
///
/// `SCHEMA` is the human-written signature of the request and response types;
/// change it whenever either type changes, so the key changes with it.
pub trait Endpoint {
    /// Request body type.
    type Request: Serialize + DeserializeOwned;
    /// Response body type.
    type Response: Serialize + DeserializeOwned;
    /// Endpoint name as shown to users (relay method name).
    const NAME: &'static str;
    /// Schema signature, part of the key.
    const SCHEMA: &'static str;
    /// Wire key.
    const KEY: Key = Key::for_endpoint(Self::NAME, Self::SCHEMA);
}

/// A device-to-host event stream (e.g. telemetry).
pub trait Topic {
    /// Event body type.
    type Message: Serialize + DeserializeOwned;
    /// Topic name.
    const NAME: &'static str;
    /// Schema signature, part of the key.
    const SCHEMA: &'static str;
    /// Wire key.
    const KEY: Key = Key::for_endpoint(Self::NAME, Self::SCHEMA);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Reference values of FNV-1a 64 ("" and "a") from the FNV specification.
        assert_eq!(fnv1a_bytes(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_bytes(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_bytes(FNV_OFFSET, b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn schema_change_changes_key() {
        assert_ne!(
            Key::for_endpoint("set_voltage", "u32->State"),
            Key::for_endpoint("set_voltage", "f32->State")
        );
    }
}
