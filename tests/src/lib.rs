//! labmesh end-to-end mesh tests and Python interop
