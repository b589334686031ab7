//! labmesh databank: ingest, storage, catalogue, retrieve
