//! Bus topics.
//!
//! A bus message is two frames, `[topic, json body]`. Python labmesh
//! clients subscribe to `state.` and `dataset.` and expect exactly two
//! frames, so every other family uses a prefix they never subscribe to.

/// Relay state: `state.<relay_id>`, body [`crate::mesh::StateMsg`].
pub const STATE_PREFIX: &str = "state.";
/// Dataset announcements: `dataset.<bank_id>`, body
/// [`crate::mesh::DatasetAnnounce`].
pub const DATASET_PREFIX: &str = "dataset.";
/// Extension: presence events: `presence.<id>`, body
/// [`crate::mesh::Presence`].
pub const PRESENCE_PREFIX: &str = "presence.";

/// Extension: lease changes: `lock.<relay_id>`, body
/// [`crate::lease::LockEvent`].
pub const LOCK_PREFIX: &str = "lock.";

/// The topic of `relay_id`'s state.
pub fn state(relay_id: &str) -> String {
    format!("{STATE_PREFIX}{relay_id}")
}

/// The topic of `bank_id`'s dataset announcements.
pub fn dataset(bank_id: &str) -> String {
    format!("{DATASET_PREFIX}{bank_id}")
}

/// The topic of `id`'s presence events.
pub fn presence(id: &str) -> String {
    format!("{PRESENCE_PREFIX}{id}")
}

/// The topic of `relay_id`'s lease changes.
pub fn lock(relay_id: &str) -> String {
    format!("{LOCK_PREFIX}{relay_id}")
}

/// The families of topics a node may receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicFamily {
    /// `state.`
    State,
    /// `dataset.`
    Dataset,
    /// `presence.`
    Presence,
    /// `lock.`
    Lock,
}

/// The family of `topic` and the id after the prefix, if it is one of ours.
pub fn parse(topic: &[u8]) -> Option<(TopicFamily, &[u8])> {
    [
        (STATE_PREFIX, TopicFamily::State),
        (DATASET_PREFIX, TopicFamily::Dataset),
        (PRESENCE_PREFIX, TopicFamily::Presence),
        (LOCK_PREFIX, TopicFamily::Lock),
    ]
    .into_iter()
    .find_map(|(p, f)| topic.strip_prefix(p.as_bytes()).map(|id| (f, id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert_eq!(state("Inst-0"), "state.Inst-0");
        assert_eq!(dataset("bank-0"), "dataset.bank-0");
        assert_eq!(presence("psu"), "presence.psu");
        assert_eq!(parse(b"state.a"), Some((TopicFamily::State, &b"a"[..])));
        assert_eq!(parse(b"presence."), Some((TopicFamily::Presence, &b""[..])));
        assert_eq!(parse(b"stream.a.v"), None);
        assert_eq!(lock("psu-1"), "lock.psu-1");
        assert_eq!(
            parse(b"lock.psu-1"),
            Some((TopicFamily::Lock, &b"psu-1"[..]))
        );
        // What Python labmesh clients subscribe to never matches it.
        for p in [STATE_PREFIX, DATASET_PREFIX] {
            assert!(!lock("state.x").starts_with(p));
        }
    }
}
