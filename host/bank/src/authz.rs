//! Roles on the bank's sockets, CURVE on.
//!
//! The ZAP handler labels each CURVE connection `<role>:<fingerprint>`
//! (`labmesh_proto::security::UserId`); every request on the ingest ROUTER
//! (an upload: `ingest_start`, `ingest_chunk`, `ingest_resume`,
//! `ingest_abort`) needs `operator`, every request on the retrieve ROUTER
//! (downloads, credit, cancel, the catalogue) `viewer`
//! (`labmesh_proto::security::bank_request_role`). A plaintext socket has
//! no `User-Id`: no roles apply (the network password, if any, does).

use labmesh_proto::security::{bank_request_role, forbidden_message, Role, UserId};
use labmesh_wire::socket::Peer;

/// `Err(message)` for a 403 when the sender of a request of `kind` on the
/// ingest (`ingest`) or retrieve socket may not make it.
pub(crate) fn check(ingest: bool, kind: &str, meta: &Peer) -> Result<(), String> {
    let Some(user) = meta.user_id.as_deref() else {
        return Ok(());
    };
    // A User-Id our ZAP handler did not make gets the least role.
    let parsed = UserId::parse(user);
    let role = parsed.as_ref().map_or(Role::Viewer, |u| u.role);
    let needed = bank_request_role(ingest, kind);
    if role.allows(needed) {
        return Ok(());
    }
    let fingerprint = parsed.as_ref().map_or(user, |u| u.fingerprint.as_str());
    labmesh_wire::warn_throttled!(
        key = %fingerprint,
        %role,
        peer = %meta.address.as_deref().unwrap_or("?"),
        request = %kind,
        "bank request refused: role may not make it"
    );
    Err(forbidden_message(role, kind, needed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(user: Option<&str>) -> Peer {
        Peer {
            user_id: user.map(str::to_string),
            key: None,
            address: Some("127.0.0.1".into()),
        }
    }

    #[test]
    fn uploads_need_operator_downloads_viewer() {
        let viewer = meta(Some("viewer:abcdefgh"));
        assert_eq!(
            check(true, "ingest_start", &viewer).unwrap_err(),
            "forbidden: role viewer may not call ingest_start (needs operator)"
        );
        assert!(check(true, "ingest_chunk", &viewer).is_err());
        assert!(check(false, "get", &viewer).is_ok());
        assert!(check(false, "list_datasets", &viewer).is_ok());
        assert!(check(true, "ingest_start", &meta(Some("operator:abcdefgh"))).is_ok());
        assert!(check(true, "ingest_start", &meta(Some("admin:abcdefgh"))).is_ok());
        // Plaintext: no roles. A User-Id that is not ours: the least role.
        assert!(check(true, "ingest_start", &meta(None)).is_ok());
        assert!(check(true, "ingest_start", &meta(Some("root"))).is_err());
    }
}
