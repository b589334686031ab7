//! labmesh async client: relays, banks, states, datasets
