//! labmesh-bank integration tests: one binary, shared helpers in `support`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod crash;
mod protocol;
mod python;
mod roundtrip;
mod s3;
mod support;
mod weed;
