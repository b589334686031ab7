//! Roles per method: what a CURVE key's role may call on this relay.
//!
//! The ZAP handler labels every CURVE connection with `<role>:<fingerprint>`
//! (`labmesh_proto::security::UserId`); the relay reads it per message and
//! checks the method against `relay_method_role` (the driver description's
//! `read_only` marks decide for driver methods). A plaintext socket has no
//! `User-Id`: no roles apply there (the network password, if any, does).

use labmesh_drivers::Description;
use labmesh_proto::lm::RelayMethod;
use labmesh_proto::security::{forbidden_message, relay_method_role, Role, UserId};
use serde_json::Value;

/// `Err(message)` for a 403 when `user` may not call `method`.
pub(crate) fn check(
    relay_id: &str,
    user: Option<&str>,
    method: &str,
    params: &Value,
    description: &Description,
) -> Result<(), String> {
    let Some(user) = user else { return Ok(()) };
    // A User-Id we did not set (cannot happen with our ZAP handler) gets
    // the least role rather than any.
    let parsed = UserId::parse(user);
    let role = parsed.as_ref().map_or(Role::Viewer, |u| u.role);
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
        user = %user,
        %method,
        "call refused: role may not call this method"
    );
    Err(forbidden_message(role, method, needed))
}
