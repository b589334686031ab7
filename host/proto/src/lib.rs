//! labmesh-proto: the labmesh protocol, as types.
//!
//! Everything a peer must match to talk to a labmesh node is defined here
//! once, with golden-byte tests next to it, and written down in
//! `docs/PROTOCOL.md`. The crate depends on serde only: no sockets, no
//! runtime.
//!
//! * [`mesh`]: directory and relay messages (`hello`, `rpc`, `heartbeat`,
//!   `bye`, their replies), bus bodies (state, dataset, presence).
//! * [`bank`]: databank ingest, retrieve and catalogue messages.
//! * [`topic`]: bus topic names and builders.
//! * [`describe`]: the method-description schema (methods, parameters with
//!   type, unit and range) and binding call parameters to it.
//! * [`lm`]: the reserved `lm.*` methods with typed params and results.
//! * [`lease`]: instrument leases (`lm.lock`, `lm.unlock`, `lm.who`, the
//!   `lock.` topic's body, the 409 bodies).
//! * [`stream`]: stream samples, definitions and their control methods.
//! * [`security`]: roles and the CURVE `User-Id` servers read per message.
//! * [`codes`]: the one table of error codes.
//! * [`limits`]: sizes and deadlines every node agrees on.
//! * [`endpoint`]: `BROKER` substitution and advertised endpoints.
//!
//! Labmesh v0 peers keep working: extensions are new message types, new
//! optional fields (skipped when absent) or reserved method names, and every
//! closed set of strings (`role`, `status`, `reason`) is an enum that keeps
//! values it does not know.

#[macro_use]
mod string_enum;

pub mod bank;
pub mod codes;
pub mod describe;
pub mod endpoint;
pub mod lease;
pub mod limits;
pub mod lm;
pub mod mesh;
pub mod security;
pub mod stream;
pub mod topic;

pub use codes::ErrorBody;
pub use mesh::{decode_request, encode, Reply, Request};

/// Seconds since the Unix epoch, as labmesh's `time.time()`: the timestamp
/// every message carries (`ts`, `created`), comparable across hosts.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
