//! Malformed input from a raw ZeroMQ peer: every node answers what it can
//! in the protocol's error shape, and keeps serving.

use std::time::Duration;

use labmesh_tests::{Mesh, WAIT};
use labmesh_wire::{AsyncSocket, SocketOptions};
use serde_json::{json, Value};
use tokio::time::timeout;

async fn raw_dealer(ctx: &zmq::Context, endpoint: &str) -> anyhow::Result<AsyncSocket> {
    let mut s = AsyncSocket::new(
        ctx,
        zmq::DEALER,
        SocketOptions {
            max_msg_size: -1,
            ..SocketOptions::default()
        },
    )?;
    s.connect(endpoint)?;
    Ok(s)
}

async fn exchange(s: &mut AsyncSocket, frames: &[&[u8]]) -> anyhow::Result<Value> {
    s.send_multipart(frames.iter().copied()).await?;
    let reply = timeout(WAIT, s.recv_multipart()).await??;
    anyhow::ensure!(reply.len() == 1, "reply has {} frames", reply.len());
    Ok(serde_json::from_slice(&reply[0])?)
}

fn assert_error(v: &Value, kind: &str, code: i64, needle: &str) {
    assert_eq!(v["type"], json!(kind), "{v}");
    assert_eq!(v["error"]["code"], json!(code), "{v}");
    let m = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains(needle),
        "message {m:?} should mention {needle:?}"
    );
}

/// Malformed messages every ROUTER must answer with an error.
/// (case name, frames, expected reply type, code, message fragment)
type Case = (&'static str, Vec<Vec<u8>>, &'static str, i64, &'static str);

fn common_cases() -> Vec<Case> {
    vec![
        (
            "two frames",
            vec![b"{}".to_vec(), b"x".to_vec()],
            "error",
            400,
            "one frame",
        ),
        ("empty frame", vec![Vec::new()], "error", 400, "not JSON"),
        (
            "not utf-8",
            vec![b"\xff\xfe\x00".to_vec()],
            "error",
            400,
            "not JSON",
        ),
        (
            "truncated json",
            vec![br#"{"type":"rpc","#.to_vec()],
            "error",
            400,
            "not JSON",
        ),
        (
            "json array",
            vec![b"[1,2,3]".to_vec()],
            "error",
            400,
            "not a JSON object",
        ),
        (
            "json scalar",
            vec![b"42".to_vec()],
            "error",
            400,
            "not a JSON object",
        ),
        (
            "no type",
            vec![br#"{"method":"ping"}"#.to_vec()],
            "error",
            400,
            "missing message type",
        ),
        (
            "type not a string",
            vec![br#"{"type":5}"#.to_vec()],
            "error",
            400,
            "missing message type",
        ),
        (
            "unknown type",
            vec![br#"{"type":"launch"}"#.to_vec()],
            "error",
            400,
            "launch",
        ),
        (
            "method not a string",
            vec![br#"{"type":"rpc","rpc_uuid":"u1","method":7}"#.to_vec()],
            "rpc_error",
            400,
            "bad rpc",
        ),
        (
            "method missing",
            vec![br#"{"type":"rpc","rpc_uuid":"u2"}"#.to_vec()],
            "rpc_error",
            400,
            "method",
        ),
    ]
}

#[tokio::test]
async fn broker_survives_malformed_requests() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["Inst-0"], Duration::from_millis(200)).await?;
    let mut s = raw_dealer(&mesh.ctx, mesh.broker.rpc_endpoint()).await?;
    let mut cases = common_cases();
    cases.extend([
        (
            "relay hello without fields",
            vec![br#"{"type":"hello","role":"relay"}"#.to_vec()],
            "error",
            400,
            "missing relay_id/rpc_endpoint",
        ),
        (
            "relay hello with empty id",
            vec![
                br#"{"type":"hello","role":"relay","relay_id":"","rpc_endpoint":"tcp://x:1"}"#
                    .to_vec(),
            ],
            "error",
            400,
            "missing relay_id/rpc_endpoint",
        ),
        (
            "relay hello mistyped",
            vec![
                br#"{"type":"hello","role":"relay","relay_id":5,"rpc_endpoint":"tcp://x:1"}"#
                    .to_vec(),
            ],
            "error",
            400,
            "bad hello",
        ),
        (
            "role not a string",
            vec![br#"{"type":"hello","role":["relay"]}"#.to_vec()],
            "error",
            400,
            "bad hello",
        ),
        (
            "heartbeat mistyped",
            vec![br#"{"type":"heartbeat","relay_id":{}}"#.to_vec()],
            "error",
            400,
            "bad heartbeat",
        ),
        (
            "unknown method",
            vec![br#"{"type":"rpc","rpc_uuid":"u3","method":"shutdown","params":{}}"#.to_vec()],
            "rpc_error",
            400,
            "unknown method shutdown",
        ),
    ]);
    for (name, frames, kind, code, needle) in &cases {
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let v = exchange(&mut s, &refs)
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        assert_error(&v, kind, *code, needle);
        if *kind == "rpc_error" {
            assert!(v["rpc_uuid"].is_string(), "{name}: rpc_uuid echoed: {v}");
        }
    }
    // Valid messages with odd but harmless extras are served.
    let v = exchange(&mut s, &[br#"{"type":"rpc","rpc_uuid":"ok","method":"ping","params":null,"password":{"a":[1]},"extra":1}"#]).await?;
    assert_eq!(
        v,
        json!({"type": "rpc_result", "rpc_uuid": "ok", "result": {"ok": true}})
    );

    // Oversize: libzmq drops the message and the connection; the broker lives.
    let mut big = raw_dealer(&mesh.ctx, mesh.broker.rpc_endpoint()).await?;
    let huge = vec![b' '; 2 * 1024 * 1024];
    big.send_multipart([huge.as_slice()]).await?;
    assert!(
        timeout(Duration::from_millis(500), big.recv_multipart())
            .await
            .is_err(),
        "no reply to an oversize message"
    );

    // The broker still serves, and no junk was registered.
    let relays = mesh.client.list_relays().await?;
    assert_eq!(
        relays
            .iter()
            .map(|r| r.relay_id.as_str())
            .collect::<Vec<_>>(),
        ["Inst-0"]
    );
    mesh.client.ping().await?;
    let v = exchange(&mut s, &[br#"{"type":"hello","role":"client"}"#]).await?;
    assert_eq!(v, json!({"type": "hello", "ok": true, "role": "client"}));
    mesh.stop().await;
    Ok(())
}

#[tokio::test]
async fn relay_survives_malformed_requests() -> anyhow::Result<()> {
    let mesh = Mesh::start(&["Inst-0"], Duration::from_millis(200)).await?;
    let ep = mesh
        .relay
        .endpoint("Inst-0")
        .unwrap_or_default()
        .to_string();
    let mut s = raw_dealer(&mesh.ctx, &ep).await?;
    let mut cases = common_cases();
    cases.extend([
        ("hello to a relay", vec![br#"{"type":"hello","role":"client"}"#.to_vec()], "error", 400, "only serves rpc"),
        ("unknown method", vec![br#"{"type":"rpc","rpc_uuid":"a","method":"rm_rf","params":{}}"#.to_vec()], "rpc_error", 404, "unknown method: rm_rf"),
        ("wrong param type", vec![br#"{"type":"rpc","rpc_uuid":"b","method":"set_voltage","params":{"value":"lots"}}"#.to_vec()], "rpc_error", 400, "'value'"),
        ("missing param", vec![br#"{"type":"rpc","rpc_uuid":"c","method":"set_voltage","params":{}}"#.to_vec()], "rpc_error", 400, "'value'"),
        ("NaN-ish param", vec![br#"{"type":"rpc","rpc_uuid":"d","method":"set_voltage","params":{"value":1e999}}"#.to_vec()], "error", 400, "not JSON"),
        ("too many positional", vec![br#"{"type":"rpc","rpc_uuid":"e","method":"set_output","params":[true,1,2]}"#.to_vec()], "rpc_error", 400, "positional"),
    ]);
    for (name, frames, kind, code, needle) in &cases {
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let v = exchange(&mut s, &refs)
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        assert_error(&v, kind, *code, needle);
    }
    let mut big = raw_dealer(&mesh.ctx, &ep).await?;
    let huge = vec![b' '; 17 * 1024 * 1024];
    big.send_multipart([huge.as_slice()]).await?;
    assert!(timeout(Duration::from_millis(500), big.recv_multipart())
        .await
        .is_err());

    // Nothing was lost: the instrument state is untouched and it serves.
    let psu = mesh.client.relay("Inst-0").await?;
    assert_eq!(
        psu.call("get_state", json!({})).await?["voltage"],
        json!(0.0)
    );
    assert_eq!(
        psu.call("set_voltage", json!({"value": 2.0})).await?["voltage"],
        json!(2.0)
    );
    mesh.stop().await;
    Ok(())
}
