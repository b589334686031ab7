//! labmesh broker: directory, liveness and the state bus proxy
