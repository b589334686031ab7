//! The JSON HTTP API behind the pages, the safety check, and the router.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use labmesh_client::{Client, ClientError};
use labmesh_proto::lm::{self, DescribeResult};
use labmesh_proto::mesh::{Presence, PresenceStatus};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::hub::Hub;
use crate::metrics::{ErrorLabel, Metrics};
use crate::{assets, ws, WebOptions};

/// Presence events kept for the timeline.
const TIMELINE: usize = 500;
/// Stream subscriptions the web node holds at most.
pub(crate) const MAX_STREAM_SUBS: usize = 256;

/// Everything the handlers share.
pub struct App {
    pub(crate) client: Client,
    pub(crate) opts: WebOptions,
    /// Listening on a loopback address: no token needed.
    pub(crate) local: bool,
    pub(crate) hub: Hub,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) dir: Mutex<Directory>,
    describes: Mutex<HashMap<String, (Instant, DescribeResult)>>,
    pub(crate) streams_watched: Mutex<HashSet<(String, String)>>,
    pub(crate) stop: tokio::sync::watch::Receiver<bool>,
    /// When this web node started (Unix seconds): presence before it is unknown.
    pub(crate) started: f64,
}

/// What the bus said about nodes coming and going.
#[derive(Default)]
pub(crate) struct Directory {
    pub(crate) nodes: HashMap<String, Presence>,
    pub(crate) timeline: VecDeque<Presence>,
}

impl Directory {
    pub(crate) fn record(&mut self, p: &Presence) {
        if self.nodes.len() < 10_000 || self.nodes.contains_key(&p.id) {
            self.nodes.insert(p.id.clone(), p.clone());
        }
        if self.timeline.len() >= TIMELINE {
            self.timeline.pop_front();
        }
        self.timeline.push_back(p.clone());
    }
}

impl App {
    pub(crate) fn new(
        client: Client,
        opts: WebOptions,
        addr: SocketAddr,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> App {
        let metrics = Arc::new(Metrics::with_gauges(opts.gauges.clone()));
        App {
            client,
            local: addr.ip().is_loopback(),
            hub: Hub::new(opts.ws_queue_bytes, opts.max_ws, metrics.clone()),
            metrics,
            opts,
            dir: Mutex::new(Directory::default()),
            describes: Mutex::new(HashMap::new()),
            streams_watched: Mutex::new(HashSet::new()),
            stop,
            started: now(),
        }
    }

    /// The relay's description, from a short-lived cache.
    pub(crate) async fn describe(&self, relay_id: &str) -> Result<DescribeResult, ApiError> {
        if let Ok(m) = self.describes.lock() {
            if let Some((at, d)) = m.get(relay_id) {
                if at.elapsed() < self.opts.describe_ttl {
                    return Ok(d.clone());
                }
            }
        }
        let v = self
            .client
            .call(relay_id, lm::DESCRIBE, Value::Null)
            .await?;
        let d: DescribeResult = serde_json::from_value(v).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                502,
                format!("{relay_id}: odd description: {e}"),
            )
        })?;
        if let Ok(mut m) = self.describes.lock() {
            if m.len() > 4096 {
                m.clear();
            }
            m.insert(relay_id.to_string(), (Instant::now(), d.clone()));
        }
        Ok(d)
    }

    fn forget_description(&self, relay_id: &str) {
        if let Ok(mut m) = self.describes.lock() {
            m.remove(relay_id);
        }
    }

    /// Who is asking, and whether they may change things. Read-only
    /// actions are open; state-changing ones need the operator token unless
    /// the node listens on loopback. A wrong token is always refused.
    pub(crate) fn authorize(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
        changes_state: bool,
        what: &str,
    ) -> Result<String, ApiError> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.strip_prefix("Bearer "))
            .map(str::trim);
        let token_ok = match (&self.opts.token, bearer) {
            (Some(t), Some(b)) => constant_time_eq(t.as_bytes(), b.as_bytes()),
            _ => false,
        };
        let refuse = |why: &str| {
            self.metrics.refused.inc();
            tracing::warn!(target: "labmesh_web::audit", %peer, action = %what, "refused: {why}");
            Err(ApiError::new(StatusCode::FORBIDDEN, 403, why.to_string()))
        };
        if bearer.is_some() && !token_ok {
            return refuse("wrong operator token");
        }
        let who = if token_ok {
            format!("operator@{peer}")
        } else {
            format!("anonymous@{peer}")
        };
        if changes_state && !token_ok && !self.local {
            return refuse(
                "this action changes state: on a non-local address it needs the operator token (Authorization: Bearer ...)",
            );
        }
        Ok(who)
    }

    fn count_error(&self, relay_id: &str, code: i64) {
        self.metrics
            .call_errors
            .get_or_create(&ErrorLabel {
                relay: relay_id.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    /// A call through the mesh, timed and counted, carrying the caller's
    /// lease token if it gave one (each browser its own: the web node
    /// never holds a lease for anybody).
    async fn timed_call(
        &self,
        relay_id: &str,
        method: &str,
        params: Value,
        lease: Option<u64>,
    ) -> Result<Value, ApiError> {
        let t0 = Instant::now();
        let r = match lease {
            None => self.client.call(relay_id, method, params).await,
            Some(token) => match self.client.relay(relay_id).await {
                Ok(relay) => relay.call_leased(method, params, Some(token)).await,
                Err(e) => Err(e),
            },
        };
        let label = Metrics::relay(relay_id);
        self.metrics.calls.get_or_create(&label).inc();
        self.metrics
            .call_latency
            .get_or_create(&label)
            .observe(t0.elapsed().as_secs_f64());
        r.map_err(|e| {
            let e = ApiError::from(e);
            self.count_error(relay_id, e.code);
            e
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An error answer: HTTP status plus labmesh's `{"code","message"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    pub(crate) code: i64,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: i64, message: String) -> ApiError {
        ApiError {
            status,
            code,
            message,
        }
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        use labmesh_transfer::TransferError;
        let code = match &e {
            ClientError::Transfer(TransferError::Remote(b)) => b.code,
            ClientError::Transfer(TransferError::InvalidDatasetId(_)) => 400,
            ClientError::Transfer(TransferError::Timeout(_)) => 408,
            ClientError::Transfer(TransferError::Integrity(_)) => 422,
            _ => e.code().unwrap_or(503),
        };
        let status = match code {
            400 => StatusCode::BAD_REQUEST,
            404 => StatusCode::NOT_FOUND,
            408 => StatusCode::GATEWAY_TIMEOUT,
            409 => StatusCode::CONFLICT,
            422 => StatusCode::UNPROCESSABLE_ENTITY,
            503 => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, code, format!("{e:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// One router for the whole app.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::app_js))
        .route("/style.css", get(assets::style))
        .route("/metrics", get(metrics))
        .route("/ws", get(ws::upgrade))
        .route("/api/mesh", get(mesh))
        .route("/api/web", get(web_stats))
        .route("/api/relays/{id}", get(describe))
        .route("/api/relays/{id}/state", get(state))
        .route("/api/relays/{id}/call", post(call))
        .route("/api/relays/{id}/streams", get(streams))
        .route("/api/relays/{id}/streams/{name}", post(stream_control))
        .route("/api/relays/{id}/lease", get(lease).post(lease_change))
        .route("/api/datasets", get(datasets))
        .route("/api/datasets/{bank}/{dataset}", get(download))
        .with_state(app)
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[derive(Serialize)]
struct NodeView {
    id: String,
    endpoint: Option<String>,
    /// online | stale | offline
    status: &'static str,
    /// Unix seconds of the last state (relays) or presence event.
    last_seen: Option<f64>,
    state_gaps: Option<u64>,
}

async fn mesh(State(app): State<Arc<App>>) -> ApiResult {
    let relays = app.client.list_relays().await?;
    let banks = app.client.list_banks().await?;
    let (nodes, timeline) = match app.dir.lock() {
        Ok(d) => (
            d.nodes.clone(),
            d.timeline.iter().cloned().collect::<Vec<_>>(),
        ),
        Err(_) => (HashMap::new(), Vec::new()),
    };
    let listed: HashSet<String> = relays
        .iter()
        .map(|r| r.relay_id.clone())
        .chain(banks.iter().map(|b| b.bank_id.clone()))
        .collect();
    let t = now();
    let mut relay_views: Vec<NodeView> = relays
        .iter()
        .map(|r| {
            let h = app.client.state_health(&r.relay_id);
            let status = match &h {
                Some(h) if h.stale => "stale",
                _ => "online",
            };
            let last_seen = h
                .as_ref()
                .and_then(|h| h.last.ts)
                .or_else(|| nodes.get(&r.relay_id).map(|p| p.ts));
            NodeView {
                id: r.relay_id.clone(),
                endpoint: Some(r.rpc_endpoint.clone()),
                status,
                last_seen,
                state_gaps: h.map(|h| h.gaps),
            }
        })
        .collect();
    let mut bank_views: Vec<NodeView> = banks
        .iter()
        .map(|b| NodeView {
            id: b.bank_id.clone(),
            endpoint: b.retrieve.clone(),
            status: "online",
            last_seen: nodes.get(&b.bank_id).map(|p| p.ts),
            state_gaps: None,
        })
        .collect();
    // Gone from the broker's list: offline, as the bus last said.
    for p in nodes.values() {
        if listed.contains(&p.id) || p.status == PresenceStatus::Online && t - p.ts < 1.0 {
            continue;
        }
        let v = NodeView {
            id: p.id.clone(),
            endpoint: p.endpoint.clone(),
            status: "offline",
            last_seen: Some(p.ts),
            state_gaps: None,
        };
        match p.role {
            labmesh_proto::mesh::Role::Bank => bank_views.push(v),
            _ => relay_views.push(v),
        }
    }
    relay_views.sort_by(|a, b| a.id.cmp(&b.id));
    bank_views.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(json!({
        "relays": relay_views,
        "banks": bank_views,
        "timeline": timeline,
        "now": t,
        "since": app.started,
        "web": {"local": app.local, "token_required": !app.local},
    })))
}

async fn web_stats(State(app): State<Arc<App>>) -> ApiResult {
    Ok(Json(json!({
        "local": app.local,
        "ws_queue_bytes": app.hub.budget(),
        "connections": app.hub.stats(),
    })))
}

async fn describe(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let d = app.describe(&id).await?;
    let mut v = serde_json::to_value(&d).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("state".into(), state_json(&app, &id));
    }
    Ok(Json(v))
}

fn state_json(app: &App, id: &str) -> Value {
    match app.client.state_health(id) {
        Some(h) => json!({
            "state": h.last.state, "seq": h.last.seq, "ts": h.last.ts,
            "stale": h.stale || h.last.stale, "gaps": h.gaps, "interval": h.last.interval,
        }),
        None => Value::Null,
    }
}

async fn state(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    Ok(Json(state_json(&app, &id)))
}

#[derive(Deserialize)]
struct CallBody {
    method: String,
    #[serde(default)]
    params: Value,
    /// The caller's lease token (from `POST .../lease`), if it holds one.
    #[serde(default)]
    lease: Option<u64>,
}

async fn call(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<CallBody>,
) -> ApiResult {
    let d = app.describe(&id).await?;
    let Some(spec) = d.description.method(&body.method) else {
        app.count_error(&id, 404);
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            404,
            format!("{id} declares no method {:?}", body.method),
        ));
    };
    let what = format!("call {id}.{}", body.method);
    let who = app.authorize(&headers, peer, !spec.read_only, &what)?;
    // The relay checks again; this answers at once without a round trip.
    if let Err(e) = spec.bind(&body.params) {
        app.count_error(&id, e.code());
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            e.code(),
            e.to_string(),
        ));
    }
    tracing::info!(target: "labmesh_web::audit", %who, relay = %id, method = %body.method, params = %body.params, leased = body.lease.is_some(), "call");
    let r = app
        .timed_call(&id, &body.method, body.params, body.lease)
        .await;
    if let Err(e) = &r {
        tracing::info!(target: "labmesh_web::audit", %who, relay = %id, method = %body.method, code = e.code, "call failed");
    }
    Ok(Json(json!({"result": r?})))
}

async fn streams(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    Ok(Json(
        app.timed_call(&id, lm::STREAMS, Value::Null, None).await?,
    ))
}

#[derive(Deserialize)]
struct StreamControl {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    hz: Option<f64>,
    /// The caller's lease token, if it holds one.
    #[serde(default)]
    lease: Option<u64>,
}

async fn stream_control(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<StreamControl>,
) -> ApiResult {
    let who = app.authorize(&headers, peer, true, &format!("stream {id}.{name}"))?;
    let p = json!({"name": name});
    let mut out = serde_json::Map::new();
    if let Some(hz) = body.hz {
        tracing::info!(target: "labmesh_web::audit", %who, relay = %id, stream = %name, hz, "stream rate");
        let r = app
            .timed_call(
                &id,
                lm::STREAM_SET_RATE,
                json!({"name": name, "hz": hz}),
                body.lease,
            )
            .await?;
        out.insert("rate".into(), r);
    }
    if let Some(en) = body.enabled {
        tracing::info!(target: "labmesh_web::audit", %who, relay = %id, stream = %name, enabled = en, "stream enable");
        let m = if en {
            lm::STREAM_ENABLE
        } else {
            lm::STREAM_DISABLE
        };
        let r = app.timed_call(&id, m, p, body.lease).await?;
        out.insert("enabled".into(), r);
    }
    app.forget_description(&id);
    crate::pump::watch_streams(app.clone(), id).await;
    Ok(Json(Value::Object(out)))
}

async fn lease(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    match app.client.call(&id, "lm.who", Value::Null).await {
        Ok(v) => Ok(Json(json!({"supported": true, "lease": v}))),
        Err(e) if e.code() == Some(404) || e.code() == Some(400) => {
            // A relay without leases answers "unknown method".
            if matches!(e, ClientError::NotFound(_)) {
                return Err(e.into());
            }
            Ok(Json(
                json!({"supported": false, "message": "leases not supported by this relay"}),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct LeaseBody {
    /// `lock` or `unlock`
    action: String,
    #[serde(default)]
    params: Value,
}

async fn lease_change(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<LeaseBody>,
) -> ApiResult {
    let method = match body.action.as_str() {
        "lock" => "lm.lock",
        "unlock" => "lm.unlock",
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                400,
                format!("action {other:?}: expected lock or unlock"),
            ))
        }
    };
    let who = app.authorize(&headers, peer, true, &format!("{method} {id}"))?;
    let mut params = body.params;
    if method == "lm.lock" {
        if let Some(o) = params.as_object_mut() {
            o.entry("holder")
                .or_insert_with(|| Value::String(who.clone()));
        }
    }
    tracing::info!(target: "labmesh_web::audit", %who, relay = %id, %method, "lease");
    let r = app.timed_call(&id, method, params, None).await;
    if let Err(e) = &r {
        tracing::info!(target: "labmesh_web::audit", %who, relay = %id, %method, code = e.code, "lease refused by the relay");
    }
    match r {
        // (Lease changes are counted from the relay's `lock.` events,
        // whoever made them.)
        Ok(v) => Ok(Json(json!({"result": v}))),
        Err(e) if e.code == 404 || e.code == 400 => Ok(Json(
            json!({"supported": false, "message": "leases not supported by this relay", "error": e.message}),
        )),
        Err(e) => Err(e),
    }
}

async fn datasets(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let num = |k: &str| -> Result<Option<f64>, ApiError> {
        match q.get(k).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => s.parse::<f64>().map(Some).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    400,
                    format!("{k}={s:?}: not a number"),
                )
            }),
        }
    };
    let mut meta: Vec<(String, String)> = q
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("meta.").map(|k| (k.to_string(), v.clone())))
        .collect();
    meta.sort();
    let query = labmesh_transfer::Query {
        relay_id: q.get("relay_id").filter(|s| !s.is_empty()).cloned(),
        since: num("since")?,
        until: num("until")?,
        meta,
        limit: Some(
            num("limit")?
                .map(|l| l.clamp(1.0, 10_000.0) as u32)
                .unwrap_or(500),
        ),
        password: None,
    };
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for bank in app.client.banks().await? {
        match bank.list_datasets(query.clone()).await {
            Ok(v) => all.extend(v),
            Err(e) => {
                errors.push(json!({"bank_id": bank.info().bank_id, "message": format!("{e:#}")}))
            }
        }
    }
    all.sort_by(|a, b| b.created.total_cmp(&a.created));
    Ok(Json(json!({"datasets": all, "errors": errors})))
}

async fn download(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((bank_id, dataset_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let bank = app.client.bank(Some(&bank_id)).await?;
    let stream = bank
        .download_stream(&dataset_id, labmesh_transfer::DownloadOptions::default())
        .await
        .map_err(ApiError::from)?;
    let meta = stream.meta().clone();
    tracing::info!(target: "labmesh_web::audit", who = %format!("anonymous@{peer}"), bank = %bank_id, dataset = %dataset_id, size = meta.size, "download");
    let body = futures::stream::unfold(stream, |mut s| async move {
        match s.next_chunk().await {
            Ok(Some(c)) => Some((Ok::<_, std::io::Error>(c), s)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(dataset = %s.meta().dataset_id, error = %e, "download failed mid-stream; aborting the response");
                Some((Err(std::io::Error::other(e.to_string())), s))
            }
        }
    });
    let filename: String = dataset_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, meta.size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
            (
                header::HeaderName::from_static("x-sha256"),
                meta.sha256.clone(),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
