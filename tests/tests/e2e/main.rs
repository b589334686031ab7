//! End-to-end tests: one binary, shared helpers in `labmesh_tests`.

mod bad_input;
mod interop;
mod mesh;
