//! Byte-level protocol tests with raw sockets: labmesh v0 replies byte for
//! byte, and every kind of bad input gets its documented error while the
//! bank keeps serving.

use labmesh_bank::{Bank, BankOptions};
use labmesh_transfer::{download_to_file, upload_reader, Query, UploadOptions};
use serde_json::json;

use crate::support::*;

async fn recv_raw(sock: &mut labmesh_wire::AsyncSocket) -> Vec<Vec<u8>> {
    tokio::time::timeout(T, sock.recv_multipart())
        .await
        .expect("reply in time")
        .expect("recv")
}

/// A labmesh v0 session (no token), message by message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_ingest_and_get_bytes_exact() {
    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().unwrap();
    let bank = start_bank(&ctx, tmp.path()).await;
    let mut up = raw_dealer(&ctx, bank.ingest_endpoint());
    let start = br#"{"type":"ingest_start","dataset_id":"d1","relay_id":"r","meta":{"a":1}}"#;
    up.send_multipart([&start[..]]).await.unwrap();
    assert_eq!(
        recv_raw(&mut up).await,
        [br#"{"type":"ingest_ack","dataset_id":"d1"}"#.to_vec()]
    );
    let c0 = br#"{"type":"ingest_chunk","dataset_id":"d1","seq":0,"eof":false}"#;
    up.send_multipart([&c0[..], b"hello "]).await.unwrap();
    assert_eq!(
        recv_raw(&mut up).await,
        [br#"{"type":"ingest_ack_chunk","dataset_id":"d1","next_seq":1}"#.to_vec()]
    );
    // Wrong seq: dropped, told where we are.
    let c5 = br#"{"type":"ingest_chunk","dataset_id":"d1","seq":5,"eof":false}"#;
    up.send_multipart([&c5[..], b"XXXX"]).await.unwrap();
    assert_eq!(
        recv_raw(&mut up).await,
        [br#"{"type":"ingest_ack_chunk","dataset_id":"d1","next_seq":1,"status":"out_of_order"}"#
            .to_vec()]
    );
    let c1 = br#"{"type":"ingest_chunk","dataset_id":"d1","seq":1,"eof":false}"#;
    up.send_multipart([&c1[..], b"world"]).await.unwrap();
    recv_raw(&mut up).await;
    // Eof at the wrong seq is refused, the session survives.
    let bad_eof = br#"{"type":"ingest_chunk","dataset_id":"d1","seq":7,"eof":true}"#;
    up.send_multipart([&bad_eof[..]]).await.unwrap();
    let r = recv_json(&mut up).await;
    assert_eq!(r["error"]["code"], 409, "{r}");
    let eof = br#"{"type":"ingest_chunk","dataset_id":"d1","seq":2,"eof":true}"#;
    up.send_multipart([&eof[..]]).await.unwrap();
    let sha = sha_hex(b"hello world");
    assert_eq!(
        recv_raw(&mut up).await,
        [
            format!(r#"{{"type":"ingest_done","dataset_id":"d1","size":11,"sha256":"{sha}"}}"#)
                .into_bytes()
        ]
    );

    let mut down = raw_dealer(&ctx, bank.retrieve_endpoint());
    down.send_multipart([br#"{"type":"get","dataset_id":"d1"}"#])
        .await
        .unwrap();
    assert_eq!(
        recv_raw(&mut down).await,
        [format!(
            r#"{{"type":"meta","dataset_id":"d1","size":11,"sha256":"{sha}","meta":{{"a":1}}}}"#
        )
        .into_bytes()]
    );
    assert_eq!(
        recv_raw(&mut down).await,
        [
            br#"{"type":"chunk","dataset_id":"d1","seq":0,"eof":false}"#.to_vec(),
            b"hello world".to_vec()
        ]
    );
    assert_eq!(
        recv_raw(&mut down).await,
        [br#"{"type":"chunk","dataset_id":"d1","seq":1,"eof":true}"#.to_vec()]
    );
    bank.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ingest_inputs_get_errors_and_bank_keeps_serving() {
    init_tracing();
    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = BankOptions::new("bank-t", tmp.path().join("b"));
    opts.max_chunk = 64 * 1024;
    opts.retrieve_chunk = 64 * 1024;
    let bank = Bank::start(&ctx, opts).await.unwrap();
    let mut s = raw_dealer(&ctx, bank.ingest_endpoint());
    let code = |v: &serde_json::Value| v["error"]["code"].as_i64().unwrap_or(0);

    // Garbage, non-objects, unknown types, mistyped fields, extra frames.
    for (frames, want) in [
        (vec![&b"\xff\xfe garbage"[..]], 400),
        (vec![&b"[1,2,3]"[..]], 400),
        (vec![&br#"{"no":"type"}"#[..]], 400),
        (vec![&br#"{"type":"launch_missiles"}"#[..]], 400),
        (vec![&br#"{"type":"ingest_chunk","seq":"zero"}"#[..]], 400),
        (vec![&b"{}"[..], b"a", b"b"], 400),
    ] {
        let r = request(&mut s, &frames).await;
        assert_eq!(r["type"], "error", "{r}");
        assert_eq!(code(&r), want, "{r}");
    }
    // Chunk without a session: labmesh's exact reply.
    s.send_multipart([
        &br#"{"type":"ingest_chunk","dataset_id":"x","seq":0,"eof":false}"#[..],
        b"zz",
    ])
    .await
    .unwrap();
    assert_eq!(
        recv_raw(&mut s).await,
        [br#"{"type":"error","error":{"code":409,"message":"no ingest_start"}}"#.to_vec()]
    );
    // Traversal and malformed ids.
    for id in [
        "../../etc/passwd",
        "a/b",
        "..",
        "",
        &"x".repeat(129),
        "sp ace",
        "nul\u{0}",
    ] {
        let start =
            serde_json::to_vec(&json!({"type":"ingest_start","dataset_id":id,"relay_id":"r"}))
                .unwrap();
        let r = request(&mut s, &[&start]).await;
        if id.is_empty() {
            // labmesh semantics: an empty id means "make one up".
            assert_eq!(r["type"], "ingest_ack", "{r}");
        } else {
            assert_eq!(code(&r), 400, "{id:?}: {r}");
        }
    }
    assert!(!tmp.path().join("etc").exists());
    // Oversize chunk: refused with 400, the session continues.
    let r = request(
        &mut s,
        &[br#"{"type":"ingest_start","dataset_id":"big","relay_id":"r"}"#],
    )
    .await;
    assert_eq!(r["type"], "ingest_ack");
    let big = vec![7u8; 100 * 1024];
    let r = request(
        &mut s,
        &[
            br#"{"type":"ingest_chunk","dataset_id":"big","seq":0,"eof":false}"#,
            &big,
        ],
    )
    .await;
    assert_eq!(code(&r), 400, "{r}");
    let r = request(
        &mut s,
        &[
            br#"{"type":"ingest_chunk","dataset_id":"big","seq":0,"eof":false}"#,
            b"ok",
        ],
    )
    .await;
    assert_eq!(r["next_seq"], 1, "{r}");

    // Declared size / sha wrong: 422 at eof, nothing stored.
    for (field, value, prefix) in [
        ("size", json!(3), "size mismatch: got 2, expected 3"),
        ("sha256", json!("00".repeat(32)), "sha mismatch: got "),
    ] {
        let mut start = json!({"type":"ingest_start","dataset_id":"liar","relay_id":"r","meta":{}});
        start[field] = value;
        let r = request(&mut s, &[&serde_json::to_vec(&start).unwrap()]).await;
        assert_eq!(r["type"], "ingest_ack");
        request(
            &mut s,
            &[
                br#"{"type":"ingest_chunk","dataset_id":"liar","seq":0,"eof":false}"#,
                b"ab",
            ],
        )
        .await;
        let r = request(
            &mut s,
            &[br#"{"type":"ingest_chunk","dataset_id":"liar","seq":1,"eof":true}"#],
        )
        .await;
        assert_eq!(r["type"], "error");
        assert_eq!(r["dataset_id"], "liar");
        assert_eq!(code(&r), 422);
        assert!(
            r["error"]["message"].as_str().unwrap().starts_with(prefix),
            "{r}"
        );
    }
    // Resume of an unknown session.
    let r = request(
        &mut s,
        &[br#"{"type":"ingest_resume","dataset_id":"q","token":"nope"}"#],
    )
    .await;
    assert_eq!(code(&r), 404, "{r}");

    // Still serving: a normal upload works, and only it is listed.
    let bytes = data(200_000, 4);
    let opts = UploadOptions {
        dataset_id: Some("good".into()),
        chunk_size: 50_000,
        ..Default::default()
    };
    upload_reader(&ctx, bank.ingest_endpoint(), &bytes[..], None, opts)
        .await
        .unwrap();
    let ids: Vec<String> = bank
        .list(Query::default())
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.dataset_id)
        .collect();
    assert_eq!(ids, ["good"]);
    bank.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_retrieve_inputs_get_errors_and_bank_keeps_serving() {
    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().unwrap();
    let bank = start_bank(&ctx, tmp.path()).await;
    let bytes = data(3_000_000, 5);
    let opts = UploadOptions {
        dataset_id: Some("ds".into()),
        ..Default::default()
    };
    upload_reader(&ctx, bank.ingest_endpoint(), &bytes[..], None, opts)
        .await
        .unwrap();
    let mut s = raw_dealer(&ctx, bank.retrieve_endpoint());
    s.send_multipart([br#"{"type":"get","dataset_id":"missing"}"#])
        .await
        .unwrap();
    assert_eq!(
        recv_raw(&mut s).await,
        [br#"{"type":"error","error":{"code":404,"message":"not found"}}"#.to_vec()]
    );
    s.send_multipart([br#"{"type":"put","dataset_id":"ds"}"#])
        .await
        .unwrap();
    assert_eq!(
        recv_raw(&mut s).await,
        [br#"{"type":"error","error":{"code":400,"message":"expected get"}}"#.to_vec()]
    );
    for frames in [
        vec![&b"\x00\x01\x02"[..]],
        vec![&b"42"[..]],
        vec![&br#"{"type":"get","dataset_id":"../catalogue.sqlite"}"#[..]],
        vec![&br#"{"type":"get","dataset_id":"ds","offset":99999999}"#[..]],
        vec![&br#"{"type":"get","dataset_id":"ds"}"#[..], b"extra"],
        vec![&br#"{"type":"list_datasets","limit":"many"}"#[..]],
    ] {
        let r = request(&mut s, &frames).await;
        assert_eq!(r["type"], "error", "{r}");
        let c = r["error"]["code"].as_i64().unwrap();
        assert!(c == 400 || c == 404, "{r}");
    }
    // Credit mode: exactly `credit` chunks arrive until more is granted.
    let mut c = raw_dealer(&ctx, bank.retrieve_endpoint());
    c.send_multipart([
        br#"{"type":"get","dataset_id":"ds","credit":2,"chunk_size":100000,"offset":1000}"#,
    ])
    .await
    .unwrap();
    let meta = recv_json(&mut c).await;
    assert_eq!(meta["offset"], 1000);
    assert_eq!(meta["credit"], 2);
    for k in 0..2u64 {
        let f = recv_raw(&mut c).await;
        let h: serde_json::Value = serde_json::from_slice(&f[0]).unwrap();
        assert_eq!(h["seq"], k);
        assert_eq!(h["offset"], 1000 + k * 100_000);
        assert!(f[1] == bytes[(1000 + k as usize * 100_000)..][..100_000]);
    }
    let quiet =
        tokio::time::timeout(std::time::Duration::from_millis(300), c.recv_multipart()).await;
    assert!(quiet.is_err(), "no chunk without credit");
    c.send_multipart([br#"{"type":"credit","dataset_id":"ds","credit":1}"#])
        .await
        .unwrap();
    let f = recv_raw(&mut c).await;
    let h: serde_json::Value = serde_json::from_slice(&f[0]).unwrap();
    assert_eq!(h["seq"], 2);
    c.send_multipart([br#"{"type":"cancel","dataset_id":"ds"}"#])
        .await
        .unwrap();

    // Still serving.
    let dest = tmp.path().join("ok.bin");
    download_to_file(
        &ctx,
        bank.retrieve_endpoint(),
        "ds",
        &dest,
        Default::default(),
    )
    .await
    .unwrap();
    assert!(std::fs::read(&dest).unwrap() == bytes);
    bank.shutdown().await;
}

/// Several downloads at once, one of them by a client that stops reading:
/// the others finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_downloads_with_a_stalled_reader() {
    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().unwrap();
    let bank = start_bank(&ctx, tmp.path()).await;
    let bytes = data(8_000_000, 6);
    let opts = UploadOptions {
        dataset_id: Some("ds".into()),
        ..Default::default()
    };
    upload_reader(&ctx, bank.ingest_endpoint(), &bytes[..], None, opts)
        .await
        .unwrap();
    // A legacy reader that never reads: its stream just waits.
    let mut stalled = raw_dealer(&ctx, bank.retrieve_endpoint());
    stalled.raw().set_rcvhwm(1).unwrap();
    stalled
        .send_multipart([br#"{"type":"get","dataset_id":"ds"}"#])
        .await
        .unwrap();
    let mut jobs = Vec::new();
    for i in 0..4 {
        let ctx = ctx.clone();
        let ep = bank.retrieve_endpoint().to_string();
        let dest = tmp.path().join(format!("c{i}.bin"));
        jobs.push(tokio::spawn(async move {
            let opts = labmesh_transfer::DownloadOptions {
                credit: if i % 2 == 0 { 4 } else { 0 },
                ..Default::default()
            };
            download_to_file(&ctx, &ep, "ds", &dest, opts)
                .await
                .map(|_| dest)
        }));
    }
    for j in jobs {
        let dest = tokio::time::timeout(T, j).await.unwrap().unwrap().unwrap();
        assert!(std::fs::read(&dest).unwrap() == bytes);
    }
    // The stalled client can still read everything, in order.
    let mut got = Vec::new();
    let meta = recv_json(&mut stalled).await;
    assert_eq!(meta["type"], "meta");
    loop {
        let f = recv_raw(&mut stalled).await;
        let h: serde_json::Value = serde_json::from_slice(&f[0]).unwrap();
        if h["eof"] == true {
            break;
        }
        got.extend_from_slice(&f[1]);
    }
    assert!(got == bytes, "nothing dropped at the high-water mark");
    bank.shutdown().await;
}
