//! From the bus to the hub: one task reads the client's events, counts
//! them, serialises each once and hands it to every browser; stream
//! samples come from per-stream subscriptions made when a browser watches
//! a relay.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use labmesh_client::{Event, Receive};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::api::{App, MAX_STREAM_SUBS};
use crate::metrics::{BankLabel, Metrics, StreamLabel};
use crate::WebError;

/// Start the bus task.
pub(crate) fn start(app: Arc<App>) -> Result<(), WebError> {
    let mut rx = app.client.events();
    // A client without the bus would never deliver anything: say so.
    if app.client.subscribe_state("", Receive::Cache).is_err() {
        return Err(WebError::NoBus);
    }
    tokio::spawn(async move {
        let mut stop = app.stop.clone();
        let mut last_seq: HashMap<String, u64> = HashMap::new();
        loop {
            let ev = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                ev = rx.recv() => ev,
            };
            let ev = match ev {
                Ok(ev) => ev,
                Err(RecvError::Lagged(n)) => {
                    app.metrics.bus_lagged.inc_by(n);
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            let msg = match ev {
                Event::State(s) => {
                    let label = Metrics::relay(&s.relay_id);
                    app.metrics.state_messages.get_or_create(&label).inc();
                    app.metrics.gauges.observe(&s.relay_id, &s.state);
                    if let Some(seq) = s.seq {
                        if let Some(prev) = last_seq.get(&s.relay_id) {
                            if seq > prev + 1 {
                                app.metrics
                                    .state_seq_gaps
                                    .get_or_create(&label)
                                    .inc_by(seq - prev - 1);
                            }
                        }
                        if last_seq.len() < 10_000 || last_seq.contains_key(&s.relay_id) {
                            last_seq.insert(s.relay_id.clone(), seq);
                        }
                    }
                    json!({"type": "state", "relay_id": s.relay_id, "state": s.state,
                           "seq": s.seq, "ts": s.ts, "stale": s.stale, "interval": s.interval})
                }
                Event::Dataset(d) => {
                    app.metrics
                        .datasets_announced
                        .get_or_create(&BankLabel {
                            bank: d.bank_id.clone(),
                        })
                        .inc();
                    let mut v = serde_json::to_value(&d).unwrap_or(Value::Null);
                    if let Some(o) = v.as_object_mut() {
                        o.insert("type".into(), "dataset".into());
                    }
                    v
                }
                Event::Presence(p) => {
                    app.metrics.presence_events.inc();
                    if p.status != labmesh_proto::mesh::PresenceStatus::Online {
                        app.metrics.gauges.forget(&p.id);
                    }
                    if let Ok(mut d) = app.dir.lock() {
                        d.record(&p);
                    }
                    json!({"type": "presence", "presence": p})
                }
                // Lease changes from the bus (`lock.<relay_id>`): counted and
                // shown to the browsers (the instrument page's lease panel).
                Event::Lock(l) => {
                    app.metrics
                        .lease_changes
                        .get_or_create(&Metrics::relay(&l.relay_id))
                        .inc();
                    json!({"type": "lock", "lock": l})
                }
            };
            app.hub.publish(Utf8Bytes::from(msg.to_string()), None);
        }
        tracing::debug!("web bus pump stopped");
    });
    Ok(())
}

/// Make sure every stream of `relay_id` is subscribed (once; at most
/// [`MAX_STREAM_SUBS`] in all) and its samples go to the browsers that
/// watch the relay.
pub(crate) async fn watch_streams(app: Arc<App>, relay_id: String) {
    let streams = match app.client.relay(&relay_id).await {
        Ok(r) => match r.streams().await {
            Ok(s) => s.streams,
            Err(e) => {
                tracing::debug!(%relay_id, error = %e, "no streams to watch");
                return;
            }
        },
        Err(e) => {
            tracing::debug!(%relay_id, error = %e, "relay not resolved");
            return;
        }
    };
    for st in streams {
        let key = (relay_id.clone(), st.spec.name.clone());
        {
            let Ok(mut w) = app.streams_watched.lock() else {
                return;
            };
            if w.contains(&key) || w.len() >= MAX_STREAM_SUBS {
                continue;
            }
            w.insert(key.clone());
        }
        let sub = match app
            .client
            .subscribe_stream(&key.0, &key.1, Receive::Queue(1024))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(relay_id = %key.0, stream = %key.1, error = %e, "cannot subscribe");
                if let Ok(mut w) = app.streams_watched.lock() {
                    w.remove(&key);
                }
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let label = StreamLabel {
                relay: key.0.clone(),
                stream: key.1.clone(),
            };
            let mut stop = app.stop.clone();
            loop {
                let s = tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    s = sub.recv() => s,
                };
                let Ok(s) = s else { break };
                app.metrics.stream_messages.get_or_create(&label).inc();
                let mut v = serde_json::to_value(&s.header).unwrap_or(Value::Null);
                if let Some(o) = v.as_object_mut() {
                    o.insert("type".into(), "sample".into());
                }
                app.hub
                    .publish(Utf8Bytes::from(v.to_string()), Some(&key.0));
            }
            if let Ok(mut w) = app.streams_watched.lock() {
                w.remove(&key);
            }
        });
    }
}
