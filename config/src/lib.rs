//! labmesh TOML configuration: schema, defaults, validation, endpoint resolution
