//! Rust uploader -> Rust bank -> Rust downloader, catalogue, announcements,
//! broker registration.

use std::time::Duration;

use labmesh_bank::{Bank, BankOptions};
use labmesh_transfer::{
    download_to_file, list_datasets, upload_file, upload_reader, DownloadOptions, Query,
    TransferError, UploadOptions,
};
use labmesh_wire::{AsyncSocket, SocketOptions};
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_then_download_both_modes_identical_bytes() {
    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().unwrap();
    let bank = start_bank(&ctx, &tmp.path().join("bank")).await;
    let bytes = data(5_000_123, 1);
    let src = write_file(tmp.path(), "src.bin", &bytes);
    let opts = UploadOptions {
        dataset_id: Some("run-001.raw".into()),
        relay_id: "psu-1".into(),
        meta: json!({"kind": "scan", "n": 5}),
        chunk_size: 300_000,
        window: 4,
        ..Default::default()
    };
    let receipt = tokio::time::timeout(T, upload_file(&ctx, bank.ingest_endpoint(), &src, opts))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.dataset_id, "run-001.raw");
    assert_eq!(receipt.size, bytes.len() as u64);
    assert_eq!(receipt.sha256, sha_hex(&bytes));

    // Credit mode with a small chunk size, then the legacy `get`.
    for (credit, chunk) in [(3, Some(65_536)), (0, None)] {
        let dest = tmp.path().join(format!("out-{credit}.bin"));
        let opts = DownloadOptions {
            credit,
            chunk_size: chunk,
            ..Default::default()
        };
        let r = tokio::time::timeout(
            T,
            download_to_file(&ctx, bank.retrieve_endpoint(), "run-001.raw", &dest, opts),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(r.sha256, sha_hex(&bytes));
        assert_eq!(r.meta, json!({"kind": "scan", "n": 5}));
        assert!(std::fs::read(&dest).unwrap() == bytes, "credit {credit}");
    }

    let list = list_datasets(&ctx, bank.retrieve_endpoint(), Query::default())
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].relay_id, "psu-1");
    assert_eq!(list[0].bank_id, "bank-t");
    bank.shutdown().await;
}

/// Regression: a `DownloadStream` asking for more credit than the bank
/// grants (32 x 1 MiB against the default 8 MiB download buffer: the bank
/// caps it at 8) waited for 16 chunks before granting more, while the bank
/// had sent its 8: the download stalled until the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_stream_grants_the_credit_the_bank_gave() {
    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().unwrap();
    let bank = start_bank(&ctx, &tmp.path().join("bank")).await;
    let bytes = data(20 << 20, 7);
    let src = write_file(tmp.path(), "src.bin", &bytes);
    let opts = UploadOptions {
        dataset_id: Some("big".into()),
        chunk_size: 1 << 20,
        ..Default::default()
    };
    tokio::time::timeout(T, upload_file(&ctx, bank.ingest_endpoint(), &src, opts))
        .await
        .unwrap()
        .unwrap();
    let opts = DownloadOptions {
        credit: 32,
        chunk_size: Some(1 << 20),
        timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let got = tokio::time::timeout(T, async {
        let mut s =
            labmesh_transfer::DownloadStream::open(&ctx, bank.retrieve_endpoint(), "big", opts)
                .await
                .unwrap();
        assert_eq!(s.meta().credit, Some(8), "the bank caps the credit");
        let mut got = Vec::new();
        while let Some(c) = s.next_chunk().await.unwrap() {
            got.extend_from_slice(&c);
        }
        got
    })
    .await
    .expect("the stream finishes");
    assert!(got == bytes, "same bytes");
    bank.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reupload_is_idempotent_and_different_content_conflicts() {
    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().unwrap();
    let bank = start_bank(&ctx, &tmp.path().join("bank")).await;
    let a = data(700_000, 2);
    let b = data(700_000, 3);
    let opts = UploadOptions {
        dataset_id: Some("same".into()),
        chunk_size: 100_000,
        ..Default::default()
    };
    let up = |bytes: Vec<u8>| {
        let ctx = ctx.clone();
        let ep = bank.ingest_endpoint().to_string();
        let opts = opts.clone();
        async move {
            tokio::time::timeout(
                T,
                upload_reader(&ctx, &ep, std::io::Cursor::new(bytes), None, opts),
            )
            .await
            .unwrap()
        }
    };
    let first = up(a.clone()).await.unwrap();
    let again = up(a.clone()).await.unwrap();
    assert_eq!(first, again);
    match up(b).await {
        Err(TransferError::Remote(e)) => assert_eq!(e.code, 409, "{e}"),
        other => panic!("expected 409, got {other:?}"),
    }
    // The stored content is still the first upload.
    let dest = tmp.path().join("got");
    download_to_file(
        &ctx,
        bank.retrieve_endpoint(),
        "same",
        &dest,
        Default::default(),
    )
    .await
    .unwrap();
    assert!(std::fs::read(&dest).unwrap() == a);
    assert_eq!(
        bank.list(Query::default()).await.unwrap().len(),
        1,
        "one dataset"
    );
    bank.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_filters_newest_first() {
    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().unwrap();
    let bank = start_bank(&ctx, &tmp.path().join("bank")).await;
    let mut mid = 0.0;
    for (i, (relay, kind)) in [("r1", "a"), ("r2", "b"), ("r1", "b")].iter().enumerate() {
        let opts = UploadOptions {
            dataset_id: Some(format!("d{i}")),
            relay_id: relay.to_string(),
            meta: json!({"kind": kind, "i": i}),
            ..Default::default()
        };
        let bytes = data(1000 + i, i as u64);
        upload_reader(&ctx, bank.ingest_endpoint(), &bytes[..], None, opts)
            .await
            .unwrap();
        if i == 0 {
            mid = bank.list(Query::default()).await.unwrap()[0].created;
        }
    }
    let ep = bank.retrieve_endpoint();
    let ids = |v: Vec<labmesh_transfer::DatasetInfo>| {
        v.into_iter().map(|d| d.dataset_id).collect::<Vec<_>>()
    };
    let all = list_datasets(&ctx, ep, Query::default()).await.unwrap();
    assert_eq!(ids(all), ["d2", "d1", "d0"]);
    let q = Query {
        relay_id: Some("r1".into()),
        ..Default::default()
    };
    assert_eq!(ids(list_datasets(&ctx, ep, q).await.unwrap()), ["d2", "d0"]);
    let q = Query {
        meta: vec![("kind".into(), "b".into())],
        limit: Some(1),
        ..Default::default()
    };
    assert_eq!(ids(list_datasets(&ctx, ep, q).await.unwrap()), ["d2"]);
    let q = Query {
        meta: vec![("i".into(), "1".into())],
        ..Default::default()
    };
    assert_eq!(ids(list_datasets(&ctx, ep, q).await.unwrap()), ["d1"]);
    let q = Query {
        since: Some(mid),
        until: Some(mid + 3600.0),
        relay_id: Some("r1".into()),
        ..Default::default()
    };
    assert_eq!(ids(list_datasets(&ctx, ep, q).await.unwrap()), ["d2", "d0"]);
    let q = Query {
        until: Some(mid),
        ..Default::default()
    };
    assert!(list_datasets(&ctx, ep, q).await.unwrap().is_empty());
    bank.shutdown().await;
}

/// The bank retries hello until the broker says ok, heartbeats, and
/// announces committed datasets on `dataset.<bank_id>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_heartbeats_and_announces() {
    init_tracing();
    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut router = AsyncSocket::new(&ctx, zmq::ROUTER, SocketOptions::default()).unwrap();
    let rpc = router.bind("tcp://127.0.0.1:*").unwrap();
    let mut sub = AsyncSocket::new(&ctx, zmq::SUB, SocketOptions::default()).unwrap();
    sub.raw().set_subscribe(b"dataset.").unwrap();
    let xsub = sub.bind("tcp://127.0.0.1:*").unwrap();
    let mut opts = BankOptions::new("bank-9", tmp.path());
    opts.broker_rpc = Some(rpc);
    opts.broker_xsub = Some(xsub);
    opts.heartbeat = Duration::from_millis(50);
    let bank = Bank::start(&ctx, opts).await.unwrap();

    // First hello: refuse it; the bank must ask again.
    let f = tokio::time::timeout(T, router.recv_multipart())
        .await
        .unwrap()
        .unwrap();
    let hello: serde_json::Value = serde_json::from_slice(&f[1]).unwrap();
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["role"], "bank");
    assert_eq!(hello["bank_id"], "bank-9");
    assert_eq!(hello["ingest"], bank.ingest_endpoint());
    assert_eq!(hello["retrieve"], bank.retrieve_endpoint());
    router
        .send_multipart([
            f[0].clone(),
            br#"{"type":"hello","ok":false,"error":"nope"}"#.to_vec(),
        ])
        .await
        .unwrap();
    let f = tokio::time::timeout(T, router.recv_multipart())
        .await
        .unwrap()
        .unwrap();
    let again: serde_json::Value = serde_json::from_slice(&f[1]).unwrap();
    assert_eq!(again["type"], "hello", "retried after a refusal");
    router
        .send_multipart([
            f[0].clone(),
            br#"{"type":"hello","ok":true,"role":"bank","bank_id":"bank-9"}"#.to_vec(),
        ])
        .await
        .unwrap();
    let f = tokio::time::timeout(T, router.recv_multipart())
        .await
        .unwrap()
        .unwrap();
    let beat: serde_json::Value = serde_json::from_slice(&f[1]).unwrap();
    assert_eq!(beat["type"], "heartbeat", "{beat}");
    assert_eq!(beat["role"], "bank");
    assert_eq!(beat["bank_id"], "bank-9");

    // The PUB may still be connecting: upload until an announcement arrives.
    let bytes = data(10_000, 9);
    let mut n = 0;
    let announced = loop {
        let opts = UploadOptions {
            dataset_id: Some(format!("ann-{n}")),
            relay_id: "r-ann".into(),
            ..Default::default()
        };
        upload_reader(&ctx, bank.ingest_endpoint(), &bytes[..], None, opts)
            .await
            .unwrap();
        n += 1;
        match tokio::time::timeout(Duration::from_secs(1), sub.recv_multipart()).await {
            Ok(f) => break f.unwrap(),
            Err(_) => assert!(n < 20, "no announcement"),
        }
    };
    assert_eq!(announced[0], b"dataset.bank-9");
    let body: serde_json::Value = serde_json::from_slice(&announced[1]).unwrap();
    assert_eq!(
        body,
        json!({"dataset_id": body["dataset_id"], "bank_id": "bank-9", "size": 10_000,
               "sha256": sha_hex(&bytes), "relay_id": "r-ann"})
    );
    assert!(body["dataset_id"].as_str().unwrap().starts_with("ann-"));
    bank.shutdown().await;
}
