//! Instrument leases from the client side: take one with
//! [`RelayClient::lock`], and every call through that relay handle (and
//! its clones, and [`Client::call`] to the same relay) carries the token
//! while the [`Lease`] lives. A background task renews it every third of
//! its TTL; dropping the `Lease` (or [`Lease::unlock`]) releases it.
//!
//! ```no_run
//! # async fn demo(client: labmesh_client::Client) -> Result<(), labmesh_client::ClientError> {
//! use std::time::Duration;
//! let psu = client.relay("psu-1").await?;
//! let lease = psu.lock(Duration::from_secs(30)).await?;
//! psu.call("set_voltage", serde_json::json!({"value": 2.5})).await?; // carries the token
//! lease.unlock().await?;
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use labmesh_proto::lease::{LeaseInfo, LockParams, LockResult, UnlockParams, MAX_HOLDER};
use labmesh_proto::{codes, lm};
use serde_json::Value;
use tokio::sync::watch;

use crate::{Client, ClientError, RelayClient};

/// How to ask for a lease.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// How long the lease lasts without renewal (the relay refuses 0 and
    /// more than 24 h).
    pub ttl: Duration,
    /// The name shown to others ([`default_holder`] unless set).
    pub holder: String,
    /// Take the lease from its holder.
    pub force: bool,
    /// Renew in the background every `ttl / 3` while the [`Lease`] lives.
    pub renew: bool,
}

impl LockOptions {
    /// A lease of `ttl`, held as [`default_holder`], renewed, not forced.
    pub fn new(ttl: Duration) -> Self {
        LockOptions {
            ttl,
            holder: default_holder(),
            force: false,
            renew: true,
        }
    }
}

/// `user@host` of this process (`$USER` or `$USERNAME`, the kernel's host
/// name), truncated to the holder limit.
pub fn default_holder() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "user".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    let mut h: String = format!("{user}@{host}")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    while h.len() > MAX_HOLDER {
        h.pop();
    }
    h
}

/// What a [`Lease`] and its renewal task share.
#[derive(Debug)]
struct State {
    granted: LockResult,
    /// Why the lease was lost (taken over, expired), once the relay said so.
    lost: Option<String>,
}

/// A held instrument lease. Calls through the relay handle carry its
/// token while it lives; dropping it stops the renewal and releases the
/// lease in the background (best effort; it expires after its TTL anyway).
#[derive(Debug)]
pub struct Lease {
    relay: RelayClient,
    state: Arc<Mutex<State>>,
    /// Dropped with the lease: the renewal task ends.
    _stop: watch::Sender<()>,
    released: bool,
}

impl Lease {
    /// The fencing token.
    pub fn token(&self) -> u64 {
        self.with(|s| s.granted.token)
    }

    /// The lease as last granted or renewed (holder, token, expiry).
    pub fn granted(&self) -> LockResult {
        self.with(|s| s.granted.clone())
    }

    /// Why the lease is gone, if the relay told a renewal it was (taken
    /// over with force, or expired). Calls keep carrying the old token and
    /// get 409, so nothing runs unleased by mistake.
    pub fn lost(&self) -> Option<String> {
        self.with(|s| s.lost.clone())
    }

    /// The relay handle whose calls carry this lease.
    pub fn relay(&self) -> &RelayClient {
        &self.relay
    }

    fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        match self.state.lock() {
            Ok(g) => f(&g),
            Err(p) => f(&p.into_inner()),
        }
    }

    /// Renew now (the background task does this every `ttl / 3`).
    pub async fn renew(&self, ttl: Duration) -> Result<LockResult, ClientError> {
        let (token, holder) = self.with(|s| (s.granted.token, s.granted.holder.clone()));
        let r = renew(&self.relay, token, &holder, ttl).await;
        record(&self.state, &r);
        r
    }

    /// Release the lease now and stop attaching its token.
    pub async fn unlock(mut self) -> Result<(), ClientError> {
        self.released = true;
        self.relay.use_lease(None);
        self.relay.unlock_token(self.token()).await
    }

    /// Stop renewing and forget the lease *without* releasing it: it stays
    /// held until it expires or someone unlocks it with the returned token
    /// (`labmesh lock RELAY` without a command).
    pub fn keep(mut self) -> LockResult {
        self.released = true;
        self.relay.use_lease(None);
        self.granted()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.relay.use_lease(None);
        let relay = self.relay.clone();
        let token = self.token();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = relay.unlock_token(token).await {
                    tracing::debug!(relay_id = %relay.relay_id(), error = %e, "lease release on drop failed");
                }
            });
        }
    }
}

async fn renew(
    relay: &RelayClient,
    token: u64,
    holder: &str,
    ttl: Duration,
) -> Result<LockResult, ClientError> {
    let p = LockParams {
        token: Some(token),
        ..LockParams::new(ttl.as_secs_f64(), holder)
    };
    relay.lock_call(&p).await
}

fn record(state: &Mutex<State>, r: &Result<LockResult, ClientError>) {
    let Ok(mut s) = state.lock() else { return };
    match r {
        Ok(g) => s.granted = g.clone(),
        Err(e) if e.code() == Some(codes::CONFLICT) => s.lost = Some(e.to_string()),
        Err(_) => {}
    }
}

async fn renew_loop(
    relay: RelayClient,
    state: Arc<Mutex<State>>,
    ttl: Duration,
    mut stop: watch::Receiver<()>,
) {
    let period = (ttl / 3).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(period) => {}
        }
        let Some((token, holder)) = state
            .lock()
            .ok()
            .map(|s| (s.granted.token, s.granted.holder.clone()))
        else {
            break;
        };
        let r = tokio::select! {
            _ = stop.changed() => break,
            r = renew(&relay, token, &holder, ttl) => r,
        };
        record(&state, &r);
        match r {
            Ok(_) => {}
            Err(e) if e.code() == Some(codes::CONFLICT) => {
                tracing::warn!(relay_id = %relay.relay_id(), error = %e, "lease lost");
                break;
            }
            // A timeout or a lost connection: try again next period (the
            // lease lasts three of them).
            Err(e) => {
                tracing::warn!(relay_id = %relay.relay_id(), error = %e, "lease renewal failed")
            }
        }
    }
}

impl RelayClient {
    /// Take this instrument's lease for `ttl`, as [`default_holder`],
    /// renewed in the background while the [`Lease`] lives.
    pub async fn lock(&self, ttl: Duration) -> Result<Lease, ClientError> {
        self.lock_with(LockOptions::new(ttl)).await
    }

    /// Take this instrument's lease with `opts`.
    pub async fn lock_with(&self, opts: LockOptions) -> Result<Lease, ClientError> {
        let p = LockParams {
            force: opts.force,
            ..LockParams::new(opts.ttl.as_secs_f64(), &opts.holder)
        };
        let granted = self.lock_call(&p).await?;
        self.use_lease(Some(granted.token));
        let state = Arc::new(Mutex::new(State {
            granted,
            lost: None,
        }));
        let (stop, stop_rx) = watch::channel(());
        if opts.renew {
            tokio::spawn(renew_loop(self.clone(), state.clone(), opts.ttl, stop_rx));
        }
        Ok(Lease {
            relay: self.clone(),
            state,
            _stop: stop,
            released: false,
        })
    }

    async fn lock_call(&self, p: &LockParams) -> Result<LockResult, ClientError> {
        let params = serde_json::to_value(p).unwrap_or(Value::Null);
        let v = crate::rpc(&self.conn, &self.relay_id, lm::LOCK, params, &self.opts).await?;
        serde_json::from_value(v).map_err(|e| ClientError::Unexpected {
            target: self.relay_id.clone(),
            detail: format!("lm.lock result: {e}"),
        })
    }

    /// Release the lease `token` belongs to (`lm.unlock`).
    pub async fn unlock_token(&self, token: u64) -> Result<(), ClientError> {
        let params = serde_json::to_value(UnlockParams { token }).unwrap_or(Value::Null);
        crate::rpc(&self.conn, &self.relay_id, lm::UNLOCK, params, &self.opts)
            .await
            .map(|_| ())
    }

    /// Who holds this instrument's lease (`lm.who`): `None` when free.
    pub async fn who(&self) -> Result<Option<LeaseInfo>, ClientError> {
        let v = crate::rpc(&self.conn, &self.relay_id, lm::WHO, Value::Null, &self.opts).await?;
        serde_json::from_value(v).map_err(|e| ClientError::Unexpected {
            target: self.relay_id.clone(),
            detail: format!("lm.who result: {e}"),
        })
    }

    /// Attach `token` to every call through this handle and its clones
    /// (a lease taken elsewhere, e.g. `LABMESH_LEASE` from `labmesh lock
    /// RELAY -- CMD`), or stop attaching one.
    pub fn use_lease(&self, token: Option<u64>) {
        if let Ok(mut g) = self.lease.lock() {
            *g = token;
        }
    }

    /// The lease token calls carry now, if any.
    pub fn lease_token(&self) -> Option<u64> {
        self.lease.lock().ok().and_then(|g| *g)
    }
}

impl Client {
    /// [`RelayClient::lock`] on `relay_id`.
    pub async fn lock(&self, relay_id: &str, ttl: Duration) -> Result<Lease, ClientError> {
        self.relay(relay_id).await?.lock(ttl).await
    }

    /// [`RelayClient::who`] on `relay_id`.
    pub async fn who(&self, relay_id: &str) -> Result<Option<LeaseInfo>, ClientError> {
        self.relay(relay_id).await?.who().await
    }
}
