//! End-to-end tests: one binary, shared helpers in `labmesh_tests`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod bad_input;
mod cascade;
mod cascade_gateway;
mod firmware;
mod gateway;
mod instruments;
mod interop;
mod issue9;
mod layout;
mod leases;
mod lifecycle;
mod links;
mod mesh;
mod streams;
mod transports;
