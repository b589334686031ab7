//! labmesh-bank integration tests: one binary, shared helpers in `support`.

mod crash;
mod protocol;
mod python;
mod roundtrip;
mod support;
