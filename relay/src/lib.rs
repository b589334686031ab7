//! labmesh relay agent: registration, RPC server, state publishing
