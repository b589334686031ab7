//! Roles per method: what a CURVE key's role may call on this relay.
//!
//! The ZAP handler labels every CURVE connection with `<role>:<fingerprint>`
//! (`labmesh_proto::security::UserId`); the relay reads it per message and
//! checks the method against `relay_method_role` (the driver description's
//! `read_only` marks decide for driver methods), with the key's role on
//! this instrument: `[[security.allow]]`'s `instruments` table overrides
//! its role per relay id. A plaintext socket has no
//! `User-Id`: no roles apply there (the network password, if any, does).

use std::sync::Arc;

use labmesh_drivers::Description;
use labmesh_proto::lease::KeyHolder;
use labmesh_proto::lm::RelayMethod;
use labmesh_proto::security::{
    forbidden_message, relay_method_role, role_on_instrument, Role, UserId,
};
use labmesh_wire::curve::Security;
use serde_json::Value;

/// Who sent a request, CURVE on: the role it has on this instrument (its
/// allow-list override for `relay_id`, if any) and its key.
pub(crate) struct Caller {
    pub(crate) role: Role,
    pub(crate) key: KeyHolder,
}

/// The caller behind `user` (the message's `User-Id`) on `relay_id`;
/// `None` on a plaintext socket. The allow-list entry is found by the
/// fingerprint the `User-Id` carries (unique per list: the config loader
/// refuses duplicates).
pub(crate) fn caller(
    relay_id: &str,
    user: Option<&str>,
    security: Option<&Arc<Security>>,
) -> Option<Caller> {
    let user = user?;
    // A User-Id we did not set (cannot happen with our ZAP handler) gets
    // the least role rather than any.
    let Some(parsed) = UserId::parse(user) else {
        return Some(Caller {
            role: Role::Viewer,
            key: KeyHolder {
                fingerprint: user.to_string(),
                name: None,
            },
        });
    };
    let entry = security.and_then(|s| s.entry_by_fingerprint(&parsed.fingerprint));
    let role = match entry {
        Some(e) => role_on_instrument(parsed.role, &e.instruments, relay_id),
        None => parsed.role,
    };
    Some(Caller {
        role,
        key: KeyHolder {
            fingerprint: parsed.fingerprint,
            name: entry.and_then(|e| e.name.clone()),
        },
    })
}

/// `Err(message)` for a 403 when `user` may not call `method`.
pub(crate) fn check(
    relay_id: &str,
    caller: Option<&Caller>,
    method: &str,
    params: &Value,
    description: &Description,
) -> Result<(), String> {
    let Some(caller) = caller else { return Ok(()) };
    let role = caller.role;
    let m = RelayMethod::parse(method);
    let read_only = description.method(method).is_some_and(|s| s.read_only);
    let force = matches!(m, RelayMethod::Lock)
        && params.get("force").and_then(Value::as_bool) == Some(true);
    let needed = relay_method_role(&m, read_only, force);
    if role.allows(needed) {
        return Ok(());
    }
    labmesh_wire::warn_throttled!(
        %relay_id,
        key = %caller.key.fingerprint,
        key_name = %caller.key.name.as_deref().unwrap_or(""),
        %role,
        %method,
        "call refused: role may not call this method"
    );
    Err(forbidden_message(role, method, needed))
}
