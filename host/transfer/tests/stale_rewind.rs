//! A bank that asks again for a chunk it already acknowledged (a stale or
//! contradictory `out_of_order` rewind) makes the upload fail with a
//! protocol error naming the chunks; it never makes the uploader's chunk
//! arithmetic wrap (before the fix: "attempt to subtract with overflow" in
//! a debug build, a bogus index in release).
//!
//! The bank here is a scripted ZeroMQ ROUTER on loopback speaking the
//! labmesh v0 ingest protocol (no token echo, so acknowledged chunks are
//! released at once).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use labmesh_proto::bank::{decode_ingest, IngestAck, IngestAckChunk, IngestReply, IngestRequest};
use labmesh_proto::mesh::{encode, ChunkStatus};
use labmesh_transfer::{TransferError, UploadOptions, Uploader};

#[tokio::test]
async fn rewind_below_acknowledged_chunks_is_a_protocol_error() {
    let ctx = zmq::Context::new();
    let router = ctx.socket(zmq::ROUTER).unwrap();
    router.set_rcvtimeo(10_000).unwrap();
    router.set_linger(0).unwrap();
    router.bind("tcp://127.0.0.1:*").unwrap();
    let endpoint = router.get_last_endpoint().unwrap().unwrap();

    let bank = std::thread::spawn(move || {
        let reply = |id: &[u8], r: &IngestReply| {
            router
                .send_multipart([id, encode(r).as_slice()], 0)
                .unwrap();
        };
        let recv = || {
            let frames = router.recv_multipart(0).expect("a request within 10 s");
            (frames[0].clone(), decode_ingest(&frames[1]).unwrap())
        };
        let (id, start) = recv();
        let IngestRequest::IngestStart(start) = start else {
            panic!("expected ingest_start, got {start:?}")
        };
        let dataset_id = start.dataset_id.unwrap();
        // A v0 bank's ack: no token echo.
        reply(
            &id,
            &IngestReply::IngestAck(IngestAck {
                dataset_id: dataset_id.clone(),
                token: None,
                next_seq: None,
                offset: None,
                max_chunk: None,
            }),
        );
        let ack = |next_seq, status| {
            IngestReply::IngestAckChunk(IngestAckChunk {
                dataset_id: dataset_id.clone(),
                next_seq,
                status,
                durable_seq: None,
            })
        };
        // Chunks 0 and 1 acknowledged (the uploader drops them)...
        for seq in 0..2 {
            let (id, c) = recv();
            assert!(
                matches!(c, IngestRequest::IngestChunk(ref c) if c.seq == seq),
                "{c:?}"
            );
            reply(&id, &ack(seq + 1, None));
        }
        // ... then the bank asks for chunk 1 again.
        reply(&id, &ack(1, Some(ChunkStatus::OutOfOrder)));
    });

    let opts = UploadOptions {
        chunk_size: 4,
        window: 2,
        timeout: Duration::from_secs(5),
        retries: 0,
        ..UploadOptions::default()
    };
    let up = Uploader::new(&ctx, &endpoint, opts);
    let data: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        up.upload_reader(data, Some(data.len() as u64)),
    )
    .await
    .expect("the upload ends within 20 s");
    match r {
        Err(TransferError::Protocol(m)) => {
            assert!(m.contains("chunk 1 again"), "{m}");
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    bank.join().unwrap();
}
