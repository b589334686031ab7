//! The ZAP handler: one per context, on its own thread.
//!
//! libzmq asks the handler bound at `inproc://zeromq.zap.01` (RFC 27, ZAP)
//! about every CURVE handshake on a server socket of the context. The
//! handler looks the client's public key up in the [`Security`] allow-list
//! and answers `200` with the `User-Id` `<role>:<fingerprint>`
//! ([`UserId`]), which libzmq attaches to every message from that
//! connection, or `400` (the connection is closed before any message of
//! it reaches the node). Refusals are logged, throttled, with the key's
//! fingerprint and the peer's address.
//!
//! The thread polls with a short timeout so that dropping the
//! [`Handle`] stops it; a zmq socket lives on exactly one thread, and this
//! one's is created here and then moved to it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use labmesh_proto::security::{UserId, KEY_PROPERTY};

use crate::curve::{CurveError, CurveKey, Security};

/// libzmq's fixed ZAP endpoint.
pub const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

const POLL_MS: i64 = 100;

/// The running handler; dropping it stops the thread.
pub(crate) struct Handle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bind the context's ZAP endpoint and serve it on a thread.
pub(crate) fn start(ctx: &zmq::Context, sec: Arc<Security>) -> Result<Handle, CurveError> {
    let sock = ctx.socket(zmq::REP)?;
    sock.set_linger(0)?;
    match sock.bind(ZAP_ENDPOINT) {
        Ok(()) => {}
        Err(zmq::Error::EADDRINUSE) => return Err(CurveError::ZapTaken),
        Err(e) => return Err(e.into()),
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("labmesh-zap".into())
        .spawn(move || serve(sock, &sec, &stop2))
        .map_err(|_| CurveError::Zmq(zmq::Error::ENOMEM))?;
    Ok(Handle {
        stop,
        thread: Some(thread),
    })
}

fn serve(sock: zmq::Socket, sec: &Security, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match sock.poll(zmq::POLLIN, POLL_MS) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(zmq::Error::EINTR) => continue,
            Err(e) => {
                tracing::error!("ZAP handler stops: {e}");
                return;
            }
        }
        let frames = match sock.recv_multipart(zmq::DONTWAIT) {
            Ok(f) => f,
            Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => continue,
            Err(e) => {
                tracing::error!("ZAP handler stops: {e}");
                return;
            }
        };
        let reply = decide(sec, &frames);
        if let Err(e) = sock.send_multipart(reply, 0) {
            tracing::error!("ZAP handler stops: {e}");
            return;
        }
    }
}

/// The reply to one ZAP request (RFC 27): version, request id, status
/// code, status text, user id, metadata.
pub fn decide(sec: &Security, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let request_id = frames.get(1).cloned().unwrap_or_default();
    let reply_meta = |code: &str, text: &str, user: &str, meta: Vec<u8>| -> Vec<Vec<u8>> {
        vec![
            b"1.0".to_vec(),
            request_id.clone(),
            code.as_bytes().to_vec(),
            text.as_bytes().to_vec(),
            user.as_bytes().to_vec(),
            meta,
        ]
    };
    let reply = |code: &str, text: &str, user: &str| reply_meta(code, text, user, Vec::new());
    if frames.len() < 6 || frames.first().map(Vec::as_slice) != Some(b"1.0") {
        return reply("500", "malformed ZAP request", "");
    }
    let address = String::from_utf8_lossy(&frames[3]).into_owned();
    let mechanism = frames[5].as_slice();
    if mechanism != b"CURVE" {
        crate::warn_throttled!(
            peer = %address,
            mechanism = %String::from_utf8_lossy(mechanism),
            "refused a connection without CURVE on a CURVE socket"
        );
        return reply("400", "CURVE required", "");
    }
    let Some(key) = frames
        .get(6)
        .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
        .map(CurveKey::from_bytes)
    else {
        return reply("500", "no client key", "");
    };
    match sec.role_of(&key) {
        Some(role) => {
            let user = UserId {
                role,
                fingerprint: key.fingerprint(),
            };
            tracing::debug!(peer = %address, user = %user, "CURVE client accepted");
            reply_meta("200", "OK", &user.to_string(), key_metadata(&key))
        }
        None => {
            crate::warn_throttled!(
                peer = %address,
                key = %key.fingerprint(),
                "refused a CURVE client key that is not in the allow-list"
            );
            reply("400", "key not allowed", "")
        }
    }
}

/// The ZAP metadata of an accepted key (ZMTP property encoding: name
/// length byte, name, 4-byte big-endian value length, value): the whole
/// public key as [`KEY_PROPERTY`], which libzmq attaches to every message
/// of the connection.
fn key_metadata(key: &CurveKey) -> Vec<u8> {
    let value = key.z85();
    let mut m = Vec::with_capacity(1 + KEY_PROPERTY.len() + 4 + value.len());
    // Both lengths are constants far below the fields' limits.
    m.push(KEY_PROPERTY.len() as u8);
    m.extend_from_slice(KEY_PROPERTY.as_bytes());
    m.extend_from_slice(&(value.len() as u32).to_be_bytes());
    m.extend_from_slice(value.as_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::{AllowEntry, KeyPair};
    use labmesh_proto::security::Role;

    fn request(key: &CurveKey) -> Vec<Vec<u8>> {
        vec![
            b"1.0".to_vec(),
            b"7".to_vec(),
            b"labmesh".to_vec(),
            b"127.0.0.1".to_vec(),
            Vec::new(),
            b"CURVE".to_vec(),
            key.bytes().to_vec(),
        ]
    }

    #[test]
    fn answers_allowed_keys_with_their_role_and_refuses_others() {
        let server = KeyPair::generate().unwrap();
        let viewer = KeyPair::generate().unwrap().public;
        let stranger = KeyPair::generate().unwrap().public;
        let sec = Security {
            server: Some(server),
            allow: vec![AllowEntry {
                key: viewer,
                role: Role::Viewer,
                name: None,
                instruments: Default::default(),
            }],
            ..Security::default()
        };
        let ok = decide(&sec, &request(&viewer));
        assert_eq!(ok[1], b"7");
        assert_eq!(ok[2], b"200");
        assert_eq!(
            String::from_utf8(ok[4].clone()).unwrap(),
            format!("viewer:{}", viewer.fingerprint())
        );
        let meta = key_metadata(&viewer);
        assert_eq!(ok[5], meta);
        assert_eq!(meta[0] as usize, KEY_PROPERTY.len());
        assert!(meta.ends_with(viewer.z85().as_bytes()));
        let no = decide(&sec, &request(&stranger));
        assert_eq!(no[2], b"400");
        assert_eq!(no[4], b"");
        let mut plain = request(&viewer);
        plain[5] = b"NULL".to_vec();
        plain.truncate(6);
        assert_eq!(decide(&sec, &plain)[2], b"400");
        assert_eq!(decide(&sec, &[b"junk".to_vec()])[2], b"500");
    }
}
