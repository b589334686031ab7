//! Endpoint strings: the `BROKER` placeholder, `*` wildcards and ephemeral
//! ports, as in labmesh's TOML.

/// Replace the `BROKER` placeholder with the broker's address.
pub fn resolve_broker(endpoint: &str, broker_address: &str) -> String {
    endpoint.replace("BROKER", broker_address)
}

/// Turn a bound endpoint into one other nodes can connect to.
///
/// `bound` is what libzmq reports after binding (`tcp://0.0.0.0:40123` for
/// `tcp://*:*`); the wildcard host becomes `advertise_host`.
pub fn public_endpoint(bound: &str, advertise_host: &str) -> String {
    for wildcard in ["tcp://0.0.0.0:", "tcp://*:", "tcp://[::]:"] {
        if let Some(port) = bound.strip_prefix(wildcard) {
            return format!("tcp://{advertise_host}:{port}");
        }
    }
    bound.replace('*', advertise_host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutions() {
        assert_eq!(
            resolve_broker("tcp://BROKER:5750", "10.0.0.2"),
            "tcp://10.0.0.2:5750"
        );
        assert_eq!(
            public_endpoint("tcp://0.0.0.0:40123", "127.0.0.1"),
            "tcp://127.0.0.1:40123"
        );
        assert_eq!(
            public_endpoint("tcp://127.0.0.1:5850", "x"),
            "tcp://127.0.0.1:5850"
        );
        assert_eq!(public_endpoint("tcp://*:5850", "h"), "tcp://h:5850");
    }
}
