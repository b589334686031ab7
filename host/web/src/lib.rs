//! labmesh-web: the live dashboard node.
//!
//! A [`labmesh_client::Client`] on the mesh, served over HTTP with axum: a
//! one-page app (embedded: the binary is the whole app), a JSON API behind
//! it, live bus data over WebSocket with a bounded queue per browser, and
//! `GET /metrics` for Prometheus. See `docs/WEB.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use labmesh_client::{Client, ClientOptions};
//! let ctx = zmq::Context::new();
//! let client = Client::connect(&ctx, ClientOptions::new("tcp://127.0.0.1:5750", "tcp://127.0.0.1:5752")).await?;
//! let web = labmesh_web::spawn(client, labmesh_web::WebOptions::default()).await?;
//! println!("http://{}/", web.addr());
//! web.shutdown().await;
//! # Ok(()) }
//! ```

mod api;
mod assets;
pub mod gauges;
pub mod hub;
pub mod metrics;
mod pump;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use labmesh_client::Client;

pub use gauges::Gauges;
pub use hub::ConnStats;

/// How to serve.
#[derive(Debug, Clone)]
pub struct WebOptions {
    /// Where to listen (`127.0.0.1:8080` by default; port 0 picks one).
    pub listen: SocketAddr,
    /// The operator token: on a non-loopback address, state-changing
    /// actions need `Authorization: Bearer <token>`; without a token they
    /// are all refused there.
    pub token: Option<String>,
    /// Bytes of messages queued per WebSocket before the oldest are dropped.
    pub ws_queue_bytes: usize,
    /// At most this many WebSocket connections.
    pub max_ws: usize,
    /// Kernel send buffer of each accepted connection (`SO_SNDBUF`);
    /// `None` leaves the kernel's autotuning.
    pub socket_send_buffer: Option<usize>,
    /// How long to describe a relay from cache before asking again.
    pub describe_ttl: std::time::Duration,
    /// Which numeric state fields `/metrics` exports as gauges (none by
    /// default).
    pub gauges: Gauges,
}

impl Default for WebOptions {
    fn default() -> Self {
        WebOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            ws_queue_bytes: 256 * 1024,
            max_ws: 256,
            socket_send_buffer: None,
            describe_ttl: std::time::Duration::from_secs(5),
            gauges: Gauges::Off,
        }
    }
}

/// Why the web node could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The client was made without the bus: nothing live to show.
    #[error("the web node needs a client subscribed to the bus")]
    NoBus,
}

/// A running web node.
pub struct WebHandle {
    addr: SocketAddr,
    app: Arc<api::App>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for WebHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

impl WebHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every WebSocket connection's counters.
    pub fn connections(&self) -> Vec<ConnStats> {
        self.app.hub.stats()
    }

    /// The `/metrics` text now.
    pub fn metrics_text(&self) -> String {
        self.app.metrics.encode()
    }

    /// Stop serving (open WebSockets are closed) and wait for it.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Wait until the server ends (after [`WebHandle::shutdown`] from
    /// another task, or a fatal accept error).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}

/// Bind `opts.listen` and serve `client`'s mesh until shut down.
pub async fn spawn(client: Client, opts: WebOptions) -> Result<WebHandle, WebError> {
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| WebError::Bind {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| WebError::Bind {
        addr: opts.listen,
        source,
    })?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let app = Arc::new(api::App::new(client, opts.clone(), addr, stop_rx.clone()));
    pump::start(app.clone())?;
    let router = api::router(app.clone());
    let sndbuf = opts.socket_send_buffer;
    let task = tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(move |tcp| {
            let _ = tcp.set_nodelay(true);
            if let Some(n) = sndbuf {
                let _ = socket2::SockRef::from(&*tcp).set_send_buffer_size(n);
            }
        });
        let mut stop_rx = stop_rx;
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "web server stopped");
        }
    });
    tracing::info!(%addr, local = addr.ip().is_loopback(), "web dashboard listening");
    Ok(WebHandle {
        addr,
        app,
        stop,
        task,
    })
}
