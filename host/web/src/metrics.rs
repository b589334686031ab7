//! `GET /metrics`: Prometheus text format, with `prometheus-client`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `relay="..."`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayLabel {
    /// Relay id.
    pub relay: String,
}

/// `relay="...",code="..."`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    /// Relay id.
    pub relay: String,
    /// labmesh error code (400, 404, 408, ...; `403` is the web node's own
    /// refusal, which never reaches the relay).
    pub code: String,
}

/// `relay="...",stream="..."`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    /// Relay id.
    pub relay: String,
    /// Stream name.
    pub stream: String,
}

/// `bank="..."`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BankLabel {
    /// Bank id.
    pub bank: String,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Every metric the web node exports.
pub struct Metrics {
    registry: Registry,
    /// Calls made through the web node, per relay.
    pub calls: Family<RelayLabel, Counter>,
    /// Failed calls by error code.
    pub call_errors: Family<ErrorLabel, Counter>,
    /// Call latency, seconds.
    pub call_latency: Family<RelayLabel, Histogram, fn() -> Histogram>,
    /// State messages received from the bus.
    pub state_messages: Family<RelayLabel, Counter>,
    /// Stream samples received from the bus.
    pub stream_messages: Family<StreamLabel, Counter>,
    /// State messages missed (gaps in `seq`).
    pub state_seq_gaps: Family<RelayLabel, Counter>,
    /// Lease changes made through the web node.
    pub lease_changes: Family<RelayLabel, Counter>,
    /// Datasets announced on the bus, per bank.
    pub datasets_announced: Family<BankLabel, Counter>,
    /// Presence events seen.
    pub presence_events: Counter,
    /// Bus events the web node itself missed (its own queue overflowed).
    pub bus_lagged: Counter,
    /// Open WebSocket connections.
    pub ws_connections: Gauge,
    /// WebSocket connections accepted since start.
    pub ws_accepted: Counter,
    /// WebSocket connections refused (too many).
    pub ws_refused: Counter,
    /// Messages written to WebSockets.
    pub ws_sent: Counter,
    /// Messages dropped from full per-browser queues.
    pub ws_dropped: Counter,
    /// HTTP actions refused with 403.
    pub refused: Counter,
    /// Numeric state fields as gauges (opt-in).
    pub gauges: crate::gauges::StateGauges,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// All metrics registered under `labmesh_web_`, no state gauges.
    pub fn new() -> Metrics {
        Metrics::with_gauges(crate::gauges::Gauges::Off)
    }

    /// All metrics, and the state fields `gauges` selects as
    /// `labmesh_web_state_value{relay,field}`.
    pub fn with_gauges(gauges: crate::gauges::Gauges) -> Metrics {
        let mut r = Registry::with_prefix("labmesh_web");
        let m = Metrics {
            registry: Registry::default(),
            calls: Family::default(),
            call_errors: Family::default(),
            call_latency: Family::new_with_constructor(latency_histogram),
            state_messages: Family::default(),
            stream_messages: Family::default(),
            state_seq_gaps: Family::default(),
            lease_changes: Family::default(),
            datasets_announced: Family::default(),
            presence_events: Counter::default(),
            bus_lagged: Counter::default(),
            ws_connections: Gauge::default(),
            ws_accepted: Counter::default(),
            ws_refused: Counter::default(),
            ws_sent: Counter::default(),
            ws_dropped: Counter::default(),
            refused: Counter::default(),
            gauges: crate::gauges::StateGauges::new(gauges),
        };
        if m.gauges.enabled() {
            r.register(
                "state_value",
                "Numeric state fields (booleans as 0/1), as the newest state said",
                m.gauges.family.clone(),
            );
        }
        r.register(
            "relay_calls",
            "Calls made through the web node",
            m.calls.clone(),
        );
        r.register(
            "relay_call_errors",
            "Failed calls by error code",
            m.call_errors.clone(),
        );
        r.register(
            "relay_call_latency_seconds",
            "Call latency through the web node",
            m.call_latency.clone(),
        );
        r.register(
            "relay_state_messages",
            "State messages from the bus",
            m.state_messages.clone(),
        );
        r.register(
            "relay_stream_messages",
            "Stream samples from the bus",
            m.stream_messages.clone(),
        );
        r.register(
            "relay_state_seq_gaps",
            "State messages missed (seq gaps)",
            m.state_seq_gaps.clone(),
        );
        r.register(
            "relay_lease_changes",
            "Lease changes (granted, renewed, released, expired, forced) seen on the bus",
            m.lease_changes.clone(),
        );
        r.register(
            "bank_datasets_announced",
            "Datasets announced on the bus",
            m.datasets_announced.clone(),
        );
        r.register(
            "presence_events",
            "Presence events from the bus",
            m.presence_events.clone(),
        );
        r.register(
            "bus_lagged",
            "Bus events the web node missed",
            m.bus_lagged.clone(),
        );
        r.register(
            "ws_connections",
            "Open WebSocket connections",
            m.ws_connections.clone(),
        );
        r.register(
            "ws_accepted",
            "WebSocket connections accepted",
            m.ws_accepted.clone(),
        );
        r.register(
            "ws_refused",
            "WebSocket connections refused (limit)",
            m.ws_refused.clone(),
        );
        r.register(
            "ws_sent",
            "Messages written to WebSockets",
            m.ws_sent.clone(),
        );
        r.register(
            "ws_dropped",
            "Messages dropped from full per-browser queues",
            m.ws_dropped.clone(),
        );
        r.register(
            "http_refused",
            "Actions refused with 403",
            m.refused.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }

    /// A relay's label.
    pub fn relay(id: &str) -> RelayLabel {
        RelayLabel {
            relay: id.to_string(),
        }
    }
}
