//! Roles and the CURVE identity a server reads from each message.
//!
//! With CURVE on, the ZAP handler (`labmesh-wire`'s `zap`) maps the client's
//! public key to a [`Role`] and sets libzmq's `User-Id` message property to
//! [`UserId`]'s text form, `<role>:<fingerprint>` (for example
//! `operator:rq:rM>}U?`). Servers read it per message; nothing of it goes on
//! the wire, so labmesh v0 peers see no change. docs/SECURITY.md has the
//! model; docs/PROTOCOL.md (Security) the table.

use std::fmt;

use crate::lm::RelayMethod;

/// What a client key may do. Ordered: each role may do everything the
/// roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Describe, read-only methods, state and stream subscriptions,
    /// downloads, the catalogue.
    Viewer,
    /// Plus state-changing methods, leases, uploads.
    Operator,
    /// Plus forced lease takeover, stream add/remove, directory changes.
    Admin,
}

impl Role {
    /// The name used in config files, `User-Id` and 403 messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parse a role name (exact, lower case).
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Characters of a key's Z85 text kept as its fingerprint in logs and
/// `User-Id`: enough to tell a lab's keys apart, too few to be the key.
pub const FINGERPRINT_CHARS: usize = 8;

/// The ZAP metadata property (libzmq message property) holding the
/// client's whole public key in Z85, next to `User-Id`: what the broker
/// records as the owner of an id and checks bus topics against (a
/// fingerprint is for logs; 8 characters could be ground out).
pub const KEY_PROPERTY: &str = "X-Labmesh-Key";

/// The `User-Id` the ZAP handler gives an authenticated connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId {
    /// The key's role.
    pub role: Role,
    /// The first [`FINGERPRINT_CHARS`] characters of the public key in Z85.
    pub fingerprint: String,
}

impl UserId {
    /// Parse `<role>:<fingerprint>`; `None` for anything else (a message
    /// on a socket without CURVE has no `User-Id` at all).
    pub fn parse(s: &str) -> Option<UserId> {
        let (role, fingerprint) = s.split_once(':')?;
        Some(UserId {
            role: Role::parse(role)?,
            fingerprint: fingerprint.to_string(),
        })
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role, self.fingerprint)
    }
}

/// The least role that may call `method` on a relay. `read_only` is the
/// driver description's mark for the method; `force` whether an `lm.lock`
/// asks to take the lease over.
pub fn relay_method_role(method: &RelayMethod<'_>, read_only: bool, force: bool) -> Role {
    match method {
        RelayMethod::Describe
        | RelayMethod::Ping
        | RelayMethod::Who
        | RelayMethod::Streams
        | RelayMethod::Last
        | RelayMethod::UnknownReserved(_) => Role::Viewer,
        RelayMethod::Lock if force => Role::Admin,
        RelayMethod::Lock
        | RelayMethod::Unlock
        | RelayMethod::StreamEnable
        | RelayMethod::StreamDisable
        | RelayMethod::StreamSetRate => Role::Operator,
        RelayMethod::StreamAdd | RelayMethod::StreamRemove => Role::Admin,
        RelayMethod::Instrument(_) if read_only => Role::Viewer,
        RelayMethod::Instrument(_) => Role::Operator,
    }
}

/// The least role for a request `kind` (its `type`) on a bank socket:
/// every ingest request (`ingest_start`, `ingest_chunk`, `ingest_resume`,
/// `ingest_abort`) is an upload and needs [`Role::Operator`]; everything
/// on the retrieve socket (`get`, `credit`, `cancel`, `list_datasets`) is a
/// download or the catalogue, [`Role::Viewer`]. A kind not listed (a
/// malformed request, answered 400 anyway) counts as an upload when it
/// arrives on the ingest socket.
pub fn bank_request_role(ingest_socket: bool, kind: &str) -> Role {
    match (ingest_socket, kind) {
        (false, "get" | "credit" | "cancel" | "list_datasets") => Role::Viewer,
        (true, _) => Role::Operator,
        (false, _) => Role::Viewer,
    }
}

/// The role a key has on one instrument: its per-instrument override if
/// the allow-list gives one (`instruments = { psu1 = "operator" }`), else
/// its role everywhere.
pub fn role_on_instrument(
    role: Role,
    overrides: &std::collections::BTreeMap<String, Role>,
    instrument: &str,
) -> Role {
    overrides.get(instrument).copied().unwrap_or(role)
}

/// The message of a 403: names the role, the method and the role needed.
pub fn forbidden_message(role: Role, method: &str, needed: Role) -> String {
    format!("forbidden: role {role} may not call {method} (needs {needed})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_methods_by_role() {
        use RelayMethod as M;
        assert_eq!(
            relay_method_role(&M::Instrument("set_voltage"), false, false),
            Role::Operator
        );
        assert_eq!(
            relay_method_role(&M::Instrument("measure"), true, false),
            Role::Viewer
        );
        assert_eq!(relay_method_role(&M::Describe, false, false), Role::Viewer);
        assert_eq!(relay_method_role(&M::Lock, false, false), Role::Operator);
        assert_eq!(relay_method_role(&M::Lock, false, true), Role::Admin);
        assert_eq!(relay_method_role(&M::StreamAdd, false, false), Role::Admin);
        assert_eq!(
            forbidden_message(Role::Viewer, "set_voltage", Role::Operator),
            "forbidden: role viewer may not call set_voltage (needs operator)"
        );
    }

    #[test]
    fn bank_requests_by_role() {
        for kind in [
            "ingest_start",
            "ingest_chunk",
            "ingest_resume",
            "ingest_abort",
            "x",
        ] {
            assert_eq!(bank_request_role(true, kind), Role::Operator, "{kind}");
        }
        for kind in ["get", "credit", "cancel", "list_datasets"] {
            assert_eq!(bank_request_role(false, kind), Role::Viewer, "{kind}");
        }
        assert_eq!(
            forbidden_message(Role::Viewer, "ingest_start", Role::Operator),
            "forbidden: role viewer may not call ingest_start (needs operator)"
        );
    }

    #[test]
    fn instrument_overrides_replace_the_role() {
        let o: std::collections::BTreeMap<String, Role> = [
            ("psu1".to_string(), Role::Operator),
            ("hv".to_string(), Role::Viewer),
        ]
        .into();
        assert_eq!(role_on_instrument(Role::Viewer, &o, "psu1"), Role::Operator);
        assert_eq!(role_on_instrument(Role::Admin, &o, "hv"), Role::Viewer);
        assert_eq!(role_on_instrument(Role::Viewer, &o, "psu2"), Role::Viewer);
    }

    #[test]
    fn user_id_golden_text() {
        let u = UserId {
            role: Role::Operator,
            fingerprint: "rq:rM>}U".into(),
        };
        assert_eq!(u.to_string(), "operator:rq:rM>}U");
        // The fingerprint may itself hold ':' (Z85 has it): split at the first.
        assert_eq!(UserId::parse("operator:rq:rM>}U"), Some(u));
        assert_eq!(UserId::parse("root:abc"), None);
        assert_eq!(UserId::parse("viewer"), None);
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Operator.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Operator));
        for r in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }
}
