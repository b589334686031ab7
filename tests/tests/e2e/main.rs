//! End-to-end tests: one binary, shared helpers in `labmesh_tests`.

mod bad_input;
mod firmware;
mod instruments;
mod interop;
mod lifecycle;
mod issue9;
mod mesh;
