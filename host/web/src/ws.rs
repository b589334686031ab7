//! `GET /ws`: live bus data for one browser.
//!
//! Server to browser: the bus messages (`state`, `presence`, `dataset`,
//! `sample` for watched relays) and, whenever this connection's drop count
//! changed, `{"type":"drops","dropped":N}` before the next message.
//! Browser to server: `{"type":"watch","relay_id":"..."}` (stream samples
//! of that relay too) and `{"type":"unwatch"}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;

use crate::api::App;
use crate::hub::Conn;

/// A browser that cannot take one message in this long is disconnected.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message a browser may send.
const MAX_IN: usize = 4096;

pub(crate) async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(conn) = app.hub.join(peer) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many WebSocket connections",
        )
            .into_response();
    };
    ws.max_message_size(MAX_IN)
        .max_frame_size(MAX_IN)
        .on_upgrade(move |socket| run(app, conn, socket))
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FromBrowser {
    Watch { relay_id: String },
    Unwatch,
}

async fn run(app: Arc<App>, conn: Arc<Conn>, socket: WebSocket) {
    tracing::debug!(id = conn.id, peer = %conn.peer, "websocket open");
    let (mut tx, mut rx) = socket.split();
    let writer = {
        let conn = conn.clone();
        let app = app.clone();
        async move {
            let mut told = 0u64;
            let hello = serde_json::json!({"type": "hello", "id": conn.id, "local": app.local});
            if tx
                .send(Message::Text(Utf8Bytes::from(hello.to_string())))
                .await
                .is_err()
            {
                return;
            }
            while let Some((msg, dropped)) = conn.next().await {
                if dropped != told {
                    told = dropped;
                    let d = serde_json::json!({"type": "drops", "dropped": dropped});
                    let sent = tokio::time::timeout(
                        SEND_TIMEOUT,
                        tx.send(Message::Text(Utf8Bytes::from(d.to_string()))),
                    )
                    .await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break;
                    }
                }
                match tokio::time::timeout(SEND_TIMEOUT, tx.send(Message::Text(msg))).await {
                    Ok(Ok(())) => app.metrics.ws_sent.inc(),
                    _ => break,
                };
            }
        }
    };
    let reader = {
        let conn = conn.clone();
        let app = app.clone();
        async move {
            while let Some(Ok(m)) = rx.next().await {
                let Message::Text(t) = m else {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                    continue;
                };
                match serde_json::from_str::<FromBrowser>(t.as_str()) {
                    Ok(FromBrowser::Watch { relay_id }) => {
                        conn.watch(&relay_id);
                        tokio::spawn(crate::pump::watch_streams(app.clone(), relay_id));
                    }
                    Ok(FromBrowser::Unwatch) => conn.unwatch_all(),
                    Err(e) => tracing::debug!(id = conn.id, error = %e, "odd message from browser"),
                }
            }
        }
    };
    let mut stop = app.stop.clone();
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    app.hub.leave(&conn);
    tracing::debug!(id = conn.id, peer = %conn.peer, "websocket closed");
}
