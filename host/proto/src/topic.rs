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

/// Extension: stream samples: `stream.<relay_id>.<name>` and a NUL byte,
/// body [`crate::stream::StreamSample`] (and a raw third frame for binary
/// values).
pub const STREAM_PREFIX: &str = "stream.";

/// The byte that ends every stream topic, so that a prefix subscription
/// to one stream is exact.
pub const STREAM_END: u8 = 0;

/// The topic of `relay_id`'s stream `name`, terminator included.
pub fn stream(relay_id: &str, name: &str) -> Vec<u8> {
    let mut t = Vec::with_capacity(STREAM_PREFIX.len() + relay_id.len() + name.len() + 2);
    t.extend_from_slice(STREAM_PREFIX.as_bytes());
    t.extend_from_slice(relay_id.as_bytes());
    t.push(b'.');
    t.extend_from_slice(name.as_bytes());
    t.push(STREAM_END);
    t
}

/// The subscription prefix for every stream of `relay_id` (also matches
/// relays whose id is `relay_id` followed by a dot and more).
pub fn stream_relay_prefix(relay_id: &str) -> String {
    format!("{STREAM_PREFIX}{relay_id}.")
}

/// Split the part of a stream topic after [`STREAM_PREFIX`] into relay id
/// and stream name (names have no dot; the terminator must be there).
pub fn split_stream(rest: &[u8]) -> Option<(&str, &str)> {
    let rest = rest.strip_suffix(&[STREAM_END])?;
    let rest = std::str::from_utf8(rest).ok()?;
    let (relay, name) = rest.rsplit_once('.')?;
    (!relay.is_empty() && !name.is_empty()).then_some((relay, name))
}

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

/// The families of topics a node may receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicFamily {
    /// `state.`
    State,
    /// `dataset.`
    Dataset,
    /// `presence.`
    Presence,
    /// `stream.` (the id part is `<relay_id>.<name>` and the terminator:
    /// see [`split_stream`])
    Stream,
}

/// The family of `topic` and the id after the prefix, if it is one of ours.
pub fn parse(topic: &[u8]) -> Option<(TopicFamily, &[u8])> {
    [
        (STATE_PREFIX, TopicFamily::State),
        (DATASET_PREFIX, TopicFamily::Dataset),
        (PRESENCE_PREFIX, TopicFamily::Presence),
        (STREAM_PREFIX, TopicFamily::Stream),
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
        assert_eq!(parse(b"stat"), None);
        assert_eq!(stream("psu-1", "v"), b"stream.psu-1.v\0");
        assert!(!stream("psu-1", "v2").starts_with(&stream("psu-1", "v")));
        assert!(stream("psu-1", "v").starts_with(stream_relay_prefix("psu-1").as_bytes()));
        let t = stream("lab.psu", "v");
        let (f, rest) = parse(&t).unwrap();
        assert_eq!(f, TopicFamily::Stream);
        assert_eq!(split_stream(rest), Some(("lab.psu", "v")));
        assert_eq!(split_stream(b"psu.v"), None, "no terminator");
        assert_eq!(split_stream(b"psu\0"), None, "no name");
    }
}
