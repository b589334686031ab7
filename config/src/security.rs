//! `[security]` (extension): CURVE keys and the client allow-list.
//!
//! ```toml
//! [security]
//! server_public_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
//! server_secret_key_file = "/etc/labmesh/server.secret"  # or server_secret_key
//! client_public_key = "..."        # the key this node connects with
//! client_secret_key_file = "..."
//!
//! [[security.allow]]
//! key = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"
//! role = "viewer"                  # viewer | operator | admin
//! name = "alice's laptop"
//! instruments = { psu1 = "operator", hv1 = "viewer" }  # per relay id, replaces role there
//! ```
//!
//! labmesh's variables (`ZMQ_SERVER_SECRETKEY`, `ZMQ_SERVER_PUBLICKEY`,
//! `ZMQ_CLIENT_SECRETKEY`, `ZMQ_CLIENT_PUBLICKEY`) override the keys here,
//! one by one. This crate checks shapes only (a key is 40 characters of
//! Z85, a role one of the three); `labmesh-wire`'s `curve` decodes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// `[security]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecuritySection {
    /// The mesh's server public key (Z85).
    pub server_public_key: Option<String>,
    /// The mesh's server secret key (Z85); prefer the file.
    pub server_secret_key: Option<String>,
    /// A file holding the server secret key.
    pub server_secret_key_file: Option<PathBuf>,
    /// This node's client public key.
    pub client_public_key: Option<String>,
    /// This node's client secret key; prefer the file.
    pub client_secret_key: Option<String>,
    /// A file holding the client secret key.
    pub client_secret_key_file: Option<PathBuf>,
    /// Allowed client keys. Empty: any client key is accepted as operator.
    pub allow: Vec<AllowKey>,
}

/// One `[[security.allow]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllowKey {
    /// The client's public key (Z85).
    pub key: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Who this key is, for logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Per-instrument roles: relay id -> role, replacing `role` on that
    /// instrument (higher or lower).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub instruments: BTreeMap<String, String>,
}

fn is_role(s: &str) -> bool {
    matches!(s, "viewer" | "operator" | "admin")
}

/// Z85's alphabet (ZeroMQ RFC 32).
const Z85: &str =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Whether `s` looks like a CURVE key: 40 characters of Z85.
pub fn is_z85_key(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| Z85.contains(c))
}

/// Read a key file: the first line that is not empty or a `#` comment,
/// trimmed, optionally quoted; also `NAME="key"` lines as `labmesh keygen
/// --format env` prints them.
pub fn read_key_file(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    let value = match line.split_once('=') {
        Some((name, v))
            if !name.contains('"')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.is_empty() =>
        {
            v
        }
        _ => line,
    };
    let key = value.trim().trim_matches('"').to_string();
    if !is_z85_key(&key) {
        return Err(ConfigError::Invalid {
            file: path.to_path_buf(),
            key: "<key file>".into(),
            why: "does not hold a CURVE key (40 characters of Z85)".into(),
        });
    }
    Ok(key)
}

impl SecuritySection {
    /// Check shapes; errors name the key.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |key: String, why: &str| ConfigError::Invalid {
            file: file.to_path_buf(),
            key,
            why: why.to_string(),
        };
        let keys = [
            ("security.server_public_key", &self.server_public_key),
            ("security.server_secret_key", &self.server_secret_key),
            ("security.client_public_key", &self.client_public_key),
            ("security.client_secret_key", &self.client_secret_key),
        ];
        for (name, v) in keys {
            if let Some(k) = v {
                if !is_z85_key(k) {
                    return Err(bad(name.into(), "not a CURVE key (40 characters of Z85)"));
                }
            }
        }
        if self.server_secret_key.is_some() && self.server_secret_key_file.is_some() {
            return Err(bad(
                "security.server_secret_key_file".into(),
                "give server_secret_key or server_secret_key_file, not both",
            ));
        }
        if self.client_secret_key.is_some() && self.client_secret_key_file.is_some() {
            return Err(bad(
                "security.client_secret_key_file".into(),
                "give client_secret_key or client_secret_key_file, not both",
            ));
        }
        for (i, a) in self.allow.iter().enumerate() {
            if !is_z85_key(&a.key) {
                return Err(bad(
                    format!("security.allow[{i}].key"),
                    "not a CURVE public key (40 characters of Z85)",
                ));
            }
            if !is_role(&a.role) {
                return Err(bad(
                    format!("security.allow[{i}].role"),
                    &format!(
                        "{:?} is not a role: must be viewer, operator or admin",
                        a.role
                    ),
                ));
            }
            for (id, role) in &a.instruments {
                let key = format!("security.allow[{i}].instruments.{id}");
                if id.is_empty() {
                    return Err(bad(key, "an instrument id cannot be empty"));
                }
                if !is_role(role) {
                    return Err(bad(
                        key,
                        &format!("{role:?} is not a role: must be viewer, operator or admin"),
                    ));
                }
            }
        }
        for (i, a) in self.allow.iter().enumerate() {
            // The User-Id a server sees carries the key's first 8 Z85
            // characters: two listed keys sharing them could not be told
            // apart for per-instrument roles and lease ownership.
            let fp = a.key.get(..8);
            if let Some(j) = self.allow[..i].iter().position(|b| b.key.get(..8) == fp) {
                return Err(bad(
                    format!("security.allow[{i}].key"),
                    &format!(
                        "starts with the same 8 characters as security.allow[{j}].key \
                         (its fingerprint): list each key once, or make a new key pair"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    const K: &str = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";

    #[test]
    fn parses_and_checks_the_table() {
        let text = format!(
            "[security]\nserver_public_key = \"{K}\"\nserver_secret_key = \"{K}\"\n\
             [[security.allow]]\nkey = \"{K}\"\nrole = \"viewer\"\nname = \"alice\"\n"
        );
        let (cfg, warnings) = Config::parse(&text, Path::new("t.toml")).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.security.allow[0].role, "viewer");
        assert_eq!(cfg.security.server_public_key.as_deref(), Some(K));

        let bad = text.replace("viewer", "root");
        let err = Config::parse(&bad, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("security.allow[0].role"), "{err}");
        let bad = text.replace(
            &format!("server_public_key = \"{K}\""),
            "server_public_key = \"abc\"",
        );
        let err = Config::parse(&bad, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("security.server_public_key"), "{err}");
    }

    #[test]
    fn per_instrument_roles_parse_and_unknown_roles_are_refused() {
        const K2: &str = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";
        let text = format!(
            "[security]\nserver_public_key = \"{K}\"\nserver_secret_key = \"{K}\"\n\
             [[security.allow]]\nkey = \"{K2}\"\nrole = \"viewer\"\n\
             instruments = {{ psu1 = \"operator\", hv1 = \"viewer\" }}\n"
        );
        let (cfg, _) = Config::parse(&text, Path::new("t.toml")).unwrap();
        let a = &cfg.security.allow[0];
        assert_eq!(a.instruments["psu1"], "operator");
        assert_eq!(a.instruments["hv1"], "viewer");
        let err = Config::parse(
            &text.replace("\"operator\"", "\"boss\""),
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("security.allow[0].instruments.psu1") && err.contains("\"boss\""),
            "{err}"
        );
        // Two keys with one fingerprint are refused.
        let dup = format!(
            "{text}[[security.allow]]\nkey = \"{}{}\"\nrole = \"admin\"\n",
            &K2[..8],
            &K[8..]
        );
        let err = Config::parse(&dup, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("security.allow[1].key"), "{err}");
    }

    #[test]
    fn key_files_hold_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, format!("# server\n{K}\n")).unwrap();
        assert_eq!(read_key_file(&p).unwrap(), K);
        std::fs::write(&p, format!("ZMQ_SECRETKEY=\"{K}\"\n")).unwrap();
        assert_eq!(read_key_file(&p).unwrap(), K);
        std::fs::write(&p, "nope\n").unwrap();
        assert!(read_key_file(&p).is_err());
    }
}
