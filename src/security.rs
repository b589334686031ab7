//! The node's CURVE keys: `[security]` in the file, then labmesh's
//! `ZMQ_*KEY` variables over it (each variable replaces the key it names),
//! installed on the process's zmq context before any socket is made.

use anyhow::Context as _;
use labmesh_config::security::read_key_file;
use labmesh_config::Config;
use labmesh_proto::security::Role;
use labmesh_wire::curve::{
    self, AllowEntry, CurveKey, KeyPair, Security, ENV_CLIENT_PUBLIC, ENV_CLIENT_SECRET,
    ENV_SERVER_PUBLIC, ENV_SERVER_SECRET,
};

/// The file's keys with the environment's over them.
pub fn from_config(cfg: &Config) -> anyhow::Result<Security> {
    from_config_and(cfg, |k| {
        std::env::var(k).ok().filter(|v| !v.trim().is_empty())
    })
}

/// [`from_config`] with an explicit variable lookup (tests).
pub fn from_config_and(
    cfg: &Config,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Security> {
    let s = &cfg.security;
    let file_key = |inline: &Option<String>,
                    path: &Option<std::path::PathBuf>|
     -> anyhow::Result<Option<String>> {
        match (inline, path) {
            (Some(k), _) => Ok(Some(k.clone())),
            (None, Some(p)) => Ok(Some(read_key_file(p)?)),
            (None, None) => Ok(None),
        }
    };
    let server_secret =
        env(ENV_SERVER_SECRET).or(file_key(&s.server_secret_key, &s.server_secret_key_file)?);
    let server_public = env(ENV_SERVER_PUBLIC).or(s.server_public_key.clone());
    let client_secret =
        env(ENV_CLIENT_SECRET).or(file_key(&s.client_secret_key, &s.client_secret_key_file)?);
    let client_public = env(ENV_CLIENT_PUBLIC).or(s.client_public_key.clone());
    let merged = |k: &str| match k {
        ENV_SERVER_SECRET => server_secret.clone(),
        ENV_SERVER_PUBLIC => server_public.clone(),
        ENV_CLIENT_SECRET => client_secret.clone(),
        ENV_CLIENT_PUBLIC => client_public.clone(),
        _ => None,
    };
    let mut sec = Security::from_lookup(merged)?;
    for (i, a) in s.allow.iter().enumerate() {
        let key = CurveKey::from_z85(&a.key, &format!("security.allow[{i}].key"))?;
        let role = Role::parse(&a.role)
            .with_context(|| format!("security.allow[{i}].role: {:?} is not a role", a.role))?;
        let mut instruments = std::collections::BTreeMap::new();
        for (id, r) in &a.instruments {
            let r = Role::parse(r).with_context(|| {
                format!("security.allow[{i}].instruments.{id}: {r:?} is not a role")
            })?;
            instruments.insert(id.clone(), r);
        }
        sec.allow.push(AllowEntry {
            key,
            role,
            name: a.name.clone(),
            instruments,
        });
    }
    if !sec.allow.is_empty() && sec.server.is_none() {
        tracing::warn!(
            "[security] allow lists client keys but this node has no server key pair: \
             the list only applies to nodes that serve CURVE"
        );
    }
    Ok(sec)
}

/// Build the security from the configuration and install it on `ctx`.
/// Nothing configured: plaintext, as before (`None`).
pub fn install(ctx: &zmq::Context, cfg: &Config) -> anyhow::Result<Option<curve::Installed>> {
    let sec = from_config(cfg)?;
    if !sec.is_on() {
        return Ok(None);
    }
    let installed = curve::install(ctx, sec)?;
    if let Some(p) = installed.security().server {
        tracing::info!(server_key = %p.public.fingerprint(), allowed = installed.security().allow.len(), "CURVE on");
    } else {
        tracing::info!("CURVE on (client)");
    }
    Ok(Some(installed))
}

/// A fresh key pair (for `labmesh keygen`).
pub fn generate() -> anyhow::Result<KeyPair> {
    Ok(KeyPair::generate()?)
}
