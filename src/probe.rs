//! A short first probe of the broker's endpoint, so a client command with
//! no broker running fails at once, naming the endpoint, instead of waiting
//! for the whole request timeout.

use std::time::Duration;

/// How long the probe waits for a TCP connection (a host that drops
/// packets); a refused connection fails at once.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `Ok` when something accepts TCP connections at `ep` (`tcp://host:port`);
/// an exit-code-4 error naming `ep` otherwise. Endpoints that are not TCP
/// (`ipc://`) are not probed.
pub async fn broker_listening(ep: &str) -> anyhow::Result<()> {
    let Some(rest) = ep.strip_prefix("tcp://") else {
        return Ok(());
    };
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Ok(());
    };
    let Ok(port) = port.parse::<u16>() else {
        return Ok(());
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(crate::exit::unreachable(format!(
            "no broker at {ep}: {e} (is `labmesh broker` running there? --broker HOST or \
             [client] broker_rpc say where)"
        ))),
        Err(_) => Err(crate::exit::unreachable(format!(
            "no broker at {ep}: no TCP answer within {PROBE_TIMEOUT:?}"
        ))),
    }
}
