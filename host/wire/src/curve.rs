//! CURVE encryption and authentication for every socket a node makes.
//!
//! A node's keys and allow-list are one [`Security`] value. [`install`]
//! attaches it to a `zmq::Context`; from then on every [`AsyncSocket`]
//! made in that context is secured where it is made: a socket that
//! **binds** becomes a CURVE server (the server secret key, ZAP domain
//! [`ZAP_DOMAIN`]), a socket that **connects** a CURVE client (its key pair
//! and the server's public key). Sockets outside `AsyncSocket` (the
//! broker's proxy pair) call [`prepare_bind`] / [`prepare_connect`]. So the
//! wire crate stays the one place sockets are made, and no node can forget
//! a socket.
//!
//! When the security has a server key, [`install`] also starts the
//! context's ZAP handler ([`crate::zap`]), which checks client keys against
//! the allow-list and labels each connection with its role
//! ([`labmesh_proto::security::UserId`], read per message with
//! [`AsyncSocket::recv_multipart_meta`]).
//!
//! Keys use labmesh's environment variables with labmesh's meaning
//! ([`Security::from_env`]): `ZMQ_SERVER_SECRETKEY` + `ZMQ_SERVER_PUBLICKEY`
//! for the sockets a node binds, `ZMQ_CLIENT_SECRETKEY` +
//! `ZMQ_CLIENT_PUBLICKEY` + `ZMQ_SERVER_PUBLICKEY` for the ones it connects.
//! Unlike labmesh, half a key pair is an error rather than a silent fall
//! back to plaintext, and a build without CURVE refuses a CURVE
//! configuration ([`check_available`]).
//!
//! [`AsyncSocket`]: crate::AsyncSocket
//! [`AsyncSocket::recv_multipart_meta`]: crate::AsyncSocket::recv_multipart_meta

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use labmesh_proto::security::{Role, FINGERPRINT_CHARS};

/// Server secret key (Z85), labmesh's variable.
pub const ENV_SERVER_SECRET: &str = "ZMQ_SERVER_SECRETKEY";
/// Server public key (Z85): servers serve it, clients expect it.
pub const ENV_SERVER_PUBLIC: &str = "ZMQ_SERVER_PUBLICKEY";
/// Client secret key (Z85).
pub const ENV_CLIENT_SECRET: &str = "ZMQ_CLIENT_SECRETKEY";
/// Client public key (Z85).
pub const ENV_CLIENT_PUBLIC: &str = "ZMQ_CLIENT_PUBLICKEY";

/// The ZAP domain every labmesh server socket uses.
pub const ZAP_DOMAIN: &str = "labmesh";

/// What a CURVE configuration in a build without CURVE is told.
pub const NOT_BUILT: &str = "this labmesh was built without CURVE (its libzmq has no libsodium), \
so it cannot encrypt: refusing to start rather than run in plaintext. Build it from the \
labmesh-rs workspace with a plain `cargo build` (the workspace patches zmq-sys to build libzmq \
with libsodium; see docs/SECURITY.md, Building with CURVE), or unset the ZMQ_*KEY variables \
and the [security] keys to run without encryption";

/// Why keys could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CurveError {
    /// A key is not 40 characters of Z85 (32 bytes).
    #[error("{what}: not a CURVE key (expected 40 characters of Z85, got {len})")]
    BadKey {
        /// Where the key came from (variable, config key, file).
        what: String,
        /// Length of what was given.
        len: usize,
    },
    /// One half of a key pair is set without the other.
    #[error("{set} is set but {missing} is not: set both or neither")]
    HalfPair {
        /// The one given.
        set: String,
        /// The one missing.
        missing: String,
    },
    /// CURVE is configured but this build has no CURVE.
    #[error("{NOT_BUILT}")]
    NotBuilt,
    /// Another ZAP handler is already bound in this context.
    #[error("a ZAP handler is already running in this zmq context")]
    ZapTaken,
    /// A libzmq call failed.
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
}

/// A CURVE key (public or secret), 32 bytes. `Debug` shows only the
/// fingerprint, so secret keys never reach a log.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CurveKey([u8; 32]);

impl CurveKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(b: [u8; 32]) -> CurveKey {
        CurveKey(b)
    }

    /// Parse 40 characters of Z85 (surrounding whitespace and quotes are
    /// ignored, as they appear in env files). `what` names the source for
    /// the error.
    pub fn from_z85(text: &str, what: &str) -> Result<CurveKey, CurveError> {
        let t = text.trim().trim_matches('"').trim();
        let bad = || CurveError::BadKey {
            what: what.to_string(),
            len: t.len(),
        };
        if t.len() != 40 {
            return Err(bad());
        }
        let bytes = zmq::z85_decode(t).map_err(|_| bad())?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(CurveKey(arr))
    }

    /// The key's 32 bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key in Z85 (40 characters), as libzmq and labmesh print keys.
    pub fn z85(&self) -> String {
        // 32 bytes is a multiple of 4, the only thing z85_encode checks.
        zmq::z85_encode(&self.0).unwrap_or_default()
    }

    /// The first characters of the Z85 form: what logs and `User-Id` show.
    pub fn fingerprint(&self) -> String {
        self.z85().chars().take(FINGERPRINT_CHARS).collect()
    }
}

impl fmt::Debug for CurveKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}…)", self.fingerprint())
    }
}

/// A public key with its secret key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyPair {
    /// The public half.
    pub public: CurveKey,
    /// The secret half.
    pub secret: CurveKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({:?}, secret hidden)", self.public)
    }
}

impl KeyPair {
    /// A fresh key pair from libzmq (needs a build with CURVE).
    pub fn generate() -> Result<KeyPair, CurveError> {
        if !available() {
            return Err(CurveError::NotBuilt);
        }
        let p = zmq::CurveKeyPair::new()?;
        Ok(KeyPair {
            public: CurveKey(p.public_key),
            secret: CurveKey(p.secret_key),
        })
    }

    /// A pair from both halves in Z85; `names` are the halves' sources.
    pub fn from_z85(
        public: Option<&str>,
        secret: Option<&str>,
        names: (&str, &str),
    ) -> Result<Option<KeyPair>, CurveError> {
        match (public, secret) {
            (None, None) => Ok(None),
            (Some(p), Some(s)) => Ok(Some(KeyPair {
                public: CurveKey::from_z85(p, names.0)?,
                secret: CurveKey::from_z85(s, names.1)?,
            })),
            (Some(_), None) => Err(CurveError::HalfPair {
                set: names.0.into(),
                missing: names.1.into(),
            }),
            (None, Some(_)) => Err(CurveError::HalfPair {
                set: names.1.into(),
                missing: names.0.into(),
            }),
        }
    }
}

/// One allowed client key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    /// The client's public key.
    pub key: CurveKey,
    /// What it may do.
    pub role: Role,
    /// A name for logs (who this key belongs to).
    pub name: Option<String>,
    /// Per-instrument roles (relay id -> role) that replace `role` on
    /// those instruments (`instruments = { psu1 = "operator" }`).
    pub instruments: BTreeMap<String, Role>,
}

impl AllowEntry {
    /// An entry with the same role on every instrument.
    pub fn new(key: CurveKey, role: Role, name: Option<&str>) -> AllowEntry {
        AllowEntry {
            key,
            role,
            name: name.map(str::to_string),
            instruments: BTreeMap::new(),
        }
    }
}

/// A node's CURVE keys and allow-list. The default is "no CURVE".
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// The key pair the sockets this node binds serve with.
    pub server: Option<KeyPair>,
    /// The key pair the sockets this node connects authenticate with. If
    /// unset, a node with a server pair uses that; a node with neither but
    /// a server public key uses a fresh key pair made at [`install`].
    pub client: Option<KeyPair>,
    /// The servers' public key, for the sockets this node connects. If
    /// unset, the node's own server public key (one mesh key, as labmesh).
    pub server_public: Option<CurveKey>,
    /// Allowed client keys with their roles. Empty: labmesh's mode, any
    /// client key is accepted as [`Role::Operator`] (with a warning).
    pub allow: Vec<AllowEntry>,
}

impl Security {
    /// Keys from labmesh's variables (see the module docs). Unset or empty
    /// variables count as unset.
    pub fn from_env() -> Result<Security, CurveError> {
        Security::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// [`Security::from_env`] over any lookup (tests, config layering).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Security, CurveError> {
        let sp = get(ENV_SERVER_PUBLIC);
        let ss = get(ENV_SERVER_SECRET);
        let server_public = match &sp {
            Some(p) => Some(CurveKey::from_z85(p, ENV_SERVER_PUBLIC)?),
            None => None,
        };
        let server = match ss {
            Some(s) => KeyPair::from_z85(
                sp.as_deref(),
                Some(&s),
                (ENV_SERVER_PUBLIC, ENV_SERVER_SECRET),
            )?,
            None => None,
        };
        let client = KeyPair::from_z85(
            get(ENV_CLIENT_PUBLIC).as_deref(),
            get(ENV_CLIENT_SECRET).as_deref(),
            (ENV_CLIENT_PUBLIC, ENV_CLIENT_SECRET),
        )?;
        if client.is_some() && server_public.is_none() {
            return Err(CurveError::HalfPair {
                set: format!("{ENV_CLIENT_PUBLIC}/{ENV_CLIENT_SECRET}"),
                missing: ENV_SERVER_PUBLIC.into(),
            });
        }
        Ok(Security {
            server,
            client,
            server_public,
            allow: Vec::new(),
        })
    }

    /// Whether any socket will use CURVE.
    pub fn is_on(&self) -> bool {
        self.server.is_some() || self.client.is_some() || self.server_public.is_some()
    }

    /// Labmesh's mode: serving CURVE without an allow-list.
    pub fn accepts_any_key(&self) -> bool {
        self.server.is_some() && self.allow.is_empty()
    }

    /// The role of a client key; `None`: refused. The mesh's own server
    /// key (held by the mesh's nodes) is always allowed, as `admin`.
    pub fn role_of(&self, key: &CurveKey) -> Option<Role> {
        if self.allow.is_empty() {
            return Some(Role::Operator);
        }
        if self.server.is_some_and(|p| p.public == *key) {
            return Some(Role::Admin);
        }
        self.allow.iter().find(|e| e.key == *key).map(|e| e.role)
    }

    /// The allow-list entry whose key has this fingerprint (what a
    /// `User-Id` carries). `None` when no entry or more than one has it
    /// (the config loader refuses lists where two keys share one).
    pub fn entry_by_fingerprint(&self, fingerprint: &str) -> Option<&AllowEntry> {
        let mut found = self
            .allow
            .iter()
            .filter(|e| e.key.fingerprint() == fingerprint);
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }

    /// The client side: (own pair, server public key), if connecting
    /// sockets use CURVE.
    fn client_side(&self) -> Option<(KeyPair, CurveKey)> {
        let server_public = self.server_public.or(self.server.map(|p| p.public))?;
        let pair = self.client.or(self.server)?;
        Some((pair, server_public))
    }
}

/// Whether this build's libzmq has CURVE.
pub fn available() -> bool {
    zmq::has("curve") == Some(true)
}

/// Refuse a CURVE configuration when `built_with_curve` is false (pass
/// [`available()`]; tests force the flag).
pub fn check_available(sec: &Security, built_with_curve: bool) -> Result<(), CurveError> {
    if sec.is_on() && !built_with_curve {
        return Err(CurveError::NotBuilt);
    }
    Ok(())
}

/// Make `sock` a CURVE server with `sec`'s server key (before it binds).
/// A security without a server key leaves the socket plaintext.
pub fn secure_server(sock: &zmq::Socket, sec: &Security) -> Result<(), zmq::Error> {
    if let Some(pair) = &sec.server {
        sock.set_zap_domain(ZAP_DOMAIN)?;
        sock.set_curve_server(true)?;
        sock.set_curve_secretkey(pair.secret.bytes())?;
    }
    Ok(())
}

/// Make `sock` a CURVE client (before it connects).
pub fn secure_client(sock: &zmq::Socket, sec: &Security) -> Result<(), zmq::Error> {
    if let Some((pair, server_public)) = sec.client_side() {
        sock.set_curve_serverkey(server_public.bytes())?;
        sock.set_curve_publickey(pair.public.bytes())?;
        sock.set_curve_secretkey(pair.secret.bytes())?;
    }
    Ok(())
}

/// Secure a socket made outside [`crate::AsyncSocket`] that will bind, with
/// the security installed on `ctx` (none: left as is).
pub fn prepare_bind(ctx: &zmq::Context, sock: &zmq::Socket) -> Result<(), zmq::Error> {
    match for_context(ctx) {
        Some(sec) => secure_server(sock, &sec),
        None => Ok(()),
    }
}

/// Secure a socket made outside [`crate::AsyncSocket`] that will connect.
pub fn prepare_connect(ctx: &zmq::Context, sock: &zmq::Socket) -> Result<(), zmq::Error> {
    match for_context(ctx) {
        Some(sec) => secure_client(sock, &sec),
        None => Ok(()),
    }
}

struct Entry {
    id: u64,
    sec: Arc<Security>,
}

/// Installed securities. A context is recognised by an inproc endpoint
/// bound in it at [`install`] (inproc names are per context, so binding
/// the same name in the context again fails with EADDRINUSE): zmq exposes
/// no context identity, and this needs no unsafe code.
static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn marker(id: u64) -> String {
    format!("inproc://labmesh-security-{id}")
}

/// The security installed on `ctx`, if any. Costs nothing while no
/// security is installed anywhere in the process; otherwise one inproc
/// bind attempt per installed security.
pub fn for_context(ctx: &zmq::Context) -> Option<Arc<Security>> {
    let entries: Vec<(u64, Arc<Security>)> = {
        let reg = REGISTRY.lock().ok()?;
        if reg.is_empty() {
            return None;
        }
        reg.iter().map(|e| (e.id, e.sec.clone())).collect()
    };
    for (id, sec) in entries {
        let Ok(probe) = ctx.socket(zmq::PAIR) else {
            continue;
        };
        let _ = probe.set_linger(0);
        match probe.bind(&marker(id)) {
            Err(zmq::Error::EADDRINUSE) => return Some(sec),
            // Not this context's: give the name back now. Closing the probe
            // frees it only when libzmq's reaper gets to it, and until then
            // the next probe here would see EADDRINUSE and take another
            // context's security for this one's (seen with two CURVE
            // brokers in one process).
            Ok(()) => {
                let _ = probe.unbind(&marker(id));
            }
            Err(_) => {}
        }
    }
    None
}

/// A security attached to a context, and its ZAP handler. Keep it for as
/// long as the context's sockets live; dropping it stops the handler and
/// detaches the security (sockets made afterwards are plaintext).
pub struct Installed {
    id: u64,
    sec: Arc<Security>,
    _marker: zmq::Socket,
    _zap: Option<crate::zap::Handle>,
}

impl fmt::Debug for Installed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Installed")
            .field("security", &self.sec)
            .finish()
    }
}

impl Installed {
    /// The security in force (with any generated client pair filled in).
    pub fn security(&self) -> &Security {
        &self.sec
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Ok(mut reg) = REGISTRY.lock() {
            reg.retain(|e| e.id != self.id);
        }
    }
}

/// Attach `sec` to `ctx` (see the module docs). A security with no keys
/// is accepted and changes nothing. Fails in a build without CURVE when
/// keys are given ([`NOT_BUILT`]), and when the context already has a ZAP
/// handler.
pub fn install(ctx: &zmq::Context, mut sec: Security) -> Result<Installed, CurveError> {
    check_available(&sec, available())?;
    if sec.server_public.is_some() && sec.client.is_none() && sec.server.is_none() {
        // A client with only the server's key: labmesh needs a client pair
        // too; any fresh pair will do for a server that takes any key.
        sec.client = Some(KeyPair::generate()?);
    }
    if sec.accepts_any_key() {
        tracing::warn!(
            "CURVE on without an allow-list: any client key is accepted as operator \
             (labmesh's mode); list keys under [security] allow to restrict who may connect"
        );
    }
    let sec = Arc::new(sec);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let marker_sock = ctx.socket(zmq::PAIR)?;
    marker_sock.set_linger(0)?;
    marker_sock.bind(&marker(id))?;
    let zap = if sec.server.is_some() {
        Some(crate::zap::start(ctx, sec.clone())?)
    } else {
        None
    };
    if let Ok(mut reg) = REGISTRY.lock() {
        reg.push(Entry {
            id,
            sec: sec.clone(),
        });
    }
    Ok(Installed {
        id,
        sec,
        _marker: marker_sock,
        _zap: zap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_build_has_curve() {
        // The workspace's zmq-sys patch (third_party/zmq-sys) builds libzmq
        // with libsodium; upstream zmq-sys answers false here.
        assert_eq!(zmq::has("curve"), Some(true));
        assert!(available());
    }

    #[test]
    fn keys_round_trip_z85_and_hide_secrets() {
        let p = KeyPair::generate().unwrap();
        let text = p.secret.z85();
        assert_eq!(text.len(), 40);
        assert_eq!(
            CurveKey::from_z85(&format!(" \"{text}\"\n"), "x").unwrap(),
            p.secret
        );
        assert!(!format!("{p:?}").contains(&text));
        assert!(matches!(
            CurveKey::from_z85("short", "ZMQ_SERVER_SECRETKEY"),
            Err(CurveError::BadKey { len: 5, .. })
        ));
    }

    #[test]
    fn env_meaning_matches_labmesh() {
        let s = KeyPair::generate().unwrap();
        let c = KeyPair::generate().unwrap();
        let (sp, ss, cp, cs) = (
            s.public.z85(),
            s.secret.z85(),
            c.public.z85(),
            c.secret.z85(),
        );
        let env = |pairs: Vec<(&'static str, String)>| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        };
        let none = Security::from_lookup(env(vec![])).unwrap();
        assert!(!none.is_on());
        let server = Security::from_lookup(env(vec![
            (ENV_SERVER_PUBLIC, sp.clone()),
            (ENV_SERVER_SECRET, ss.clone()),
        ]))
        .unwrap();
        assert_eq!(server.server, Some(s));
        assert!(server.accepts_any_key());
        assert_eq!(server.role_of(&c.public), Some(Role::Operator));
        let client = Security::from_lookup(env(vec![
            (ENV_SERVER_PUBLIC, sp.clone()),
            (ENV_CLIENT_PUBLIC, cp),
            (ENV_CLIENT_SECRET, cs.clone()),
        ]))
        .unwrap();
        assert_eq!(client.client_side(), Some((c, s.public)));
        assert!(client.server.is_none());
        // Half a pair is an error, not plaintext.
        let half = Security::from_lookup(env(vec![(ENV_SERVER_SECRET, ss)]));
        assert!(matches!(half, Err(CurveError::HalfPair { .. })), "{half:?}");
        let half = Security::from_lookup(env(vec![(ENV_CLIENT_SECRET, cs)]));
        assert!(matches!(half, Err(CurveError::HalfPair { .. })), "{half:?}");
    }

    #[test]
    fn curve_config_in_a_build_without_curve_refuses() {
        let sec = Security {
            server_public: Some(CurveKey::from_bytes([7; 32])),
            ..Security::default()
        };
        // The flag is forced: this build has CURVE, a second build without
        // it would cost minutes; the check is the same function.
        let err = check_available(&sec, false).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("built without CURVE"), "{msg}");
        assert!(msg.contains("docs/SECURITY.md"), "{msg}");
        assert!(check_available(&sec, true).is_ok());
        assert!(check_available(&Security::default(), false).is_ok());
    }

    #[test]
    fn allow_list_maps_keys_to_roles() {
        let server = KeyPair::generate().unwrap();
        let v = KeyPair::generate().unwrap().public;
        let stranger = KeyPair::generate().unwrap().public;
        let sec = Security {
            server: Some(server),
            allow: vec![AllowEntry::new(v, Role::Viewer, Some("alice"))],
            ..Security::default()
        };
        assert!(!sec.accepts_any_key());
        assert_eq!(
            sec.entry_by_fingerprint(&v.fingerprint())
                .and_then(|e| e.name.as_deref()),
            Some("alice")
        );
        assert!(sec.entry_by_fingerprint(&stranger.fingerprint()).is_none());
        assert_eq!(sec.role_of(&v), Some(Role::Viewer));
        assert_eq!(sec.role_of(&stranger), None);
        assert_eq!(sec.role_of(&server.public), Some(Role::Admin));
    }
}
