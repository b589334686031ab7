//! Numeric state fields as Prometheus gauges (opt-in):
//! `labmesh_web_state_value{relay="psu-1",field="voltage"}`.
//!
//! Off by default: a state can hold anything, and every exported series
//! costs the scraper. `[web] gauges = true` exports every numeric (and
//! boolean, as 0/1) top-level field of every relay; a list exports only
//! the fields named, each either `field` (any relay) or `relay.field`.
//! At most [`MAX_SERIES`] series exist at once; a relay's series are
//! removed when it goes offline, so a scrape never shows a value nobody
//! measures any more.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;

/// Most gauge series at once (relay x field).
pub const MAX_SERIES: usize = 4096;

/// Which state fields become gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Gauges {
    /// None (the default).
    #[default]
    Off,
    /// Every numeric or boolean top-level field of every relay.
    All,
    /// Only these: `field` (of any relay) or `relay.field`.
    Fields(Vec<String>),
}

impl Gauges {
    fn wants(&self, relay: &str, field: &str) -> bool {
        match self {
            Gauges::Off => false,
            Gauges::All => true,
            Gauges::Fields(list) => list.iter().any(|sel| {
                sel == field
                    || sel
                        .strip_prefix(relay)
                        .and_then(|rest| rest.strip_prefix('.'))
                        == Some(field)
            }),
        }
    }
}

/// `relay="...",field="..."`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FieldLabel {
    /// Relay id.
    pub relay: String,
    /// Top-level state field.
    pub field: String,
}

/// The gauge family and which series exist.
pub struct StateGauges {
    select: Gauges,
    /// Registered under `state_value`.
    pub family: Family<FieldLabel, Gauge<f64, AtomicU64>>,
    series: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl StateGauges {
    /// Gauges for the fields `select` picks.
    pub fn new(select: Gauges) -> StateGauges {
        StateGauges {
            select,
            family: Family::default(),
            series: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any field can become a gauge.
    pub fn enabled(&self) -> bool {
        self.select != Gauges::Off
    }

    /// Set the gauges of `relay`'s selected fields from a new state.
    pub fn observe(&self, relay: &str, state: &Value) {
        if !self.enabled() {
            return;
        }
        let Some(obj) = state.as_object() else {
            return;
        };
        let Ok(mut series) = self.series.lock() else {
            return;
        };
        let mut total: usize = series.values().map(BTreeSet::len).sum();
        for (field, v) in obj {
            let x = match v {
                Value::Number(n) => n.as_f64(),
                Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
                _ => None,
            };
            let Some(x) = x.filter(|x| x.is_finite()) else {
                continue;
            };
            if !self.select.wants(relay, field) {
                continue;
            }
            let known = series.get(relay).is_some_and(|s| s.contains(field));
            if !known {
                if total >= MAX_SERIES {
                    continue;
                }
                total += 1;
                series
                    .entry(relay.to_string())
                    .or_default()
                    .insert(field.clone());
            }
            self.family
                .get_or_create(&FieldLabel {
                    relay: relay.to_string(),
                    field: field.clone(),
                })
                .set(x);
        }
    }

    /// `relay` went offline: its series go.
    pub fn forget(&self, relay: &str) {
        let Ok(mut series) = self.series.lock() else {
            return;
        };
        for field in series.remove(relay).unwrap_or_default() {
            self.family.remove(&FieldLabel {
                relay: relay.to_string(),
                field,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_fields_by_name_or_relay_dot_name() {
        let g = Gauges::Fields(vec!["voltage".into(), "psu-2.current".into()]);
        assert!(g.wants("psu-1", "voltage"));
        assert!(g.wants("psu-2", "current"));
        assert!(!g.wants("psu-1", "current"));
        assert!(!g.wants("psu-22", "current"));
        assert!(!Gauges::Off.wants("psu-1", "voltage"));
        assert!(Gauges::All.wants("x", "y"));
    }

    #[test]
    fn numbers_and_bools_only_and_bounded() {
        let g = StateGauges::new(Gauges::All);
        g.observe(
            "r",
            &json!({"v": 2.5, "on": true, "name": "x", "nested": {"a": 1}, "n": null}),
        );
        let s = g.series.lock().unwrap().get("r").cloned().unwrap();
        assert_eq!(s.into_iter().collect::<Vec<_>>(), ["on", "v"]);
        assert_eq!(
            g.family
                .get(&FieldLabel {
                    relay: "r".into(),
                    field: "on".into()
                })
                .unwrap()
                .get(),
            1.0
        );
        g.forget("r");
        assert!(g
            .family
            .get(&FieldLabel {
                relay: "r".into(),
                field: "v".into()
            })
            .is_none());
        // Never more than MAX_SERIES.
        let many: serde_json::Map<String, Value> = (0..MAX_SERIES + 10)
            .map(|i| (format!("f{i}"), json!(i)))
            .collect();
        g.observe("big", &Value::Object(many));
        let total: usize = g.series.lock().unwrap().values().map(BTreeSet::len).sum();
        assert_eq!(total, MAX_SERIES);
    }
}
