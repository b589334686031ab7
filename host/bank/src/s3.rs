//! Datasets on S3-compatible object storage (SeaweedFS, MinIO, Ceph RGW, a
//! cloud bucket) through the Apache Arrow `object_store` crate.
//!
//! Layout under `s3://<bucket>/<prefix>/`:
//!
//! ```text
//! <dataset_id>.bin    the content (a single PUT, or a multipart upload)
//! <dataset_id>.json   its sidecar: dataset_id, relay_id, size, sha256,
//!                     created, meta, written_by — written last, so a
//!                     dataset exists in the store exactly when its sidecar does
//! .labmesh/probe-<bank_id>  written and deleted at start (credential check)
//! ```
//!
//! The SQLite catalogue (and the records of open multipart uploads) stay in
//! the bank's local `data_dir`; `--reindex` and the periodic re-list rebuild
//! the catalogue from the sidecars. All functions here are async; the store
//! calls them from its blocking methods through the runtime handle it was
//! opened with.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use labmesh_proto::bank::{valid_dataset_id, DatasetInfo};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a bank keeps its datasets: local files (the default) or an
/// S3-compatible bucket.
#[derive(Debug, Clone, Default, PartialEq)]
// Built once per bank from its options: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Storage {
    /// `data_dir/objects/<id>.bin` (see [`crate::store`]).
    #[default]
    File,
    /// An S3-compatible bucket; the catalogue stays in `data_dir`.
    S3(S3Options),
}

/// How to reach the bucket. Credentials are not here: they come from
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`)
/// in the environment, and are never logged.
#[derive(Clone, PartialEq)]
pub struct S3Options {
    /// `http://127.0.0.1:8333`; empty = AWS itself (or `AWS_ENDPOINT`).
    pub endpoint: String,
    /// Bucket name.
    pub bucket: String,
    /// Key prefix (no leading or trailing `/` needed); empty = bucket root.
    pub prefix: String,
    /// Region (`us-east-1` for most S3-compatible servers).
    pub region: String,
    /// Bytes buffered before a multipart part is sent (at least 5 MiB, the
    /// S3 minimum; a part ends at a chunk boundary, so one may hold up to
    /// `part_size + max_chunk` bytes).
    pub part_size: usize,
    /// Connecting to the store gives up after this.
    pub connect_timeout: Duration,
    /// One request gives up after this.
    pub request_timeout: Duration,
    /// Retries of a failed request (the client's own backoff).
    pub max_retries: usize,
    /// No retry starts this long after the first attempt.
    pub retry_timeout: Duration,
    /// The catalogue re-lists the bucket this often (datasets written by
    /// other banks on the same prefix); zero = only at start with reindex.
    pub relist: Duration,
    /// Credentials for programs that keep their own secrets (tests,
    /// embedders): `(access key id, secret key)`. The CLI never sets this;
    /// `None` reads the environment. Never printed (`Debug` hides it).
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("part_size", &self.part_size)
            .field("relist", &self.relist)
            .field(
                "credentials",
                &self
                    .credentials
                    .as_ref()
                    .map(|_| "<given>")
                    .unwrap_or("<environment>"),
            )
            .finish_non_exhaustive()
    }
}

/// The S3 minimum part size (all parts but the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

impl S3Options {
    /// Defaults for `bucket` at `endpoint`: no prefix, `us-east-1`, 8 MiB
    /// parts, 5 s connect, 60 s request timeouts, 3 retries within 30 s,
    /// re-list every 30 s.
    pub fn new(endpoint: &str, bucket: &str) -> Self {
        S3Options {
            endpoint: endpoint.to_string(),
            bucket: bucket.to_string(),
            prefix: String::new(),
            region: "us-east-1".to_string(),
            part_size: 8 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            relist: Duration::from_secs(30),
            credentials: None,
        }
    }
}

/// An object-store failure, with what the bank was doing.
#[derive(Debug, thiserror::Error)]
#[error("object store s3://{bucket}/{key}: {op}: {source}")]
pub struct ObjectError {
    /// What was attempted (`put`, `upload part 3`, `complete`...).
    pub op: String,
    /// The bucket.
    pub bucket: String,
    /// The key concerned.
    pub key: String,
    /// The store's own error (its reason: status, code, message).
    #[source]
    pub source: Box<object_store::Error>,
}

impl ObjectError {
    /// Whether the store said the object does not exist.
    pub fn not_found(&self) -> bool {
        matches!(*self.source, object_store::Error::NotFound { .. })
    }

    /// Whether the store refused for lack of space or quota.
    pub fn quota(&self) -> bool {
        let s = format!("{:?}", self.source).to_ascii_lowercase();
        s.contains("quota") || s.contains("insufficient storage") || s.contains("entitytoolarge")
    }
}

/// The sidecar object stored next to each dataset (`<id>.json`): what a
/// catalogue row needs, so a fresh bank can rebuild its catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// Dataset id (also the key).
    pub dataset_id: String,
    /// Uploading relay.
    pub relay_id: String,
    /// Content size, bytes.
    pub size: u64,
    /// Content SHA-256, hex.
    pub sha256: String,
    /// Unix time of the commit.
    pub created: f64,
    /// Metadata from ingest_start.
    pub meta: Value,
    /// The bank that wrote it.
    pub written_by: String,
}

impl Sidecar {
    /// The catalogue row this bank serves it as.
    pub fn record(&self, bank_id: &str) -> DatasetInfo {
        DatasetInfo {
            dataset_id: self.dataset_id.clone(),
            bank_id: bank_id.to_string(),
            relay_id: self.relay_id.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
            created: self.created,
            meta: self.meta.clone(),
        }
    }
}

/// A bucket (and prefix) the bank stores datasets in.
#[derive(Debug)]
pub struct S3Objects {
    store: AmazonS3,
    bucket: String,
    prefix: String,
    /// Multipart part size.
    pub part_size: usize,
    /// Re-list period (zero: none).
    pub relist: Duration,
}

/// Sidecars bigger than this are not datasets of ours.
const MAX_SIDECAR: u64 = 1024 * 1024;

impl S3Objects {
    /// Build the client (credentials from the environment). Nothing is
    /// sent yet: see [`S3Objects::probe`].
    pub fn new(o: &S3Options) -> Result<S3Objects, ObjectError> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&o.bucket)
            .with_region(&o.region)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_connect_timeout(o.connect_timeout)
                    .with_timeout(o.request_timeout),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: o.max_retries,
                retry_timeout: o.retry_timeout,
            });
        if let Some((id, secret)) = &o.credentials {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        }
        if !o.endpoint.is_empty() {
            b = b
                .with_endpoint(&o.endpoint)
                .with_virtual_hosted_style_request(false);
        }
        let store = b.build().map_err(|source| ObjectError {
            op: "configure".to_string(),
            bucket: o.bucket.clone(),
            key: String::new(),
            source: Box::new(source),
        })?;
        Ok(S3Objects {
            store,
            bucket: o.bucket.clone(),
            prefix: o.prefix.trim_matches('/').to_string(),
            part_size: o.part_size.max(MIN_PART_SIZE),
            relist: o.relist,
        })
    }

    fn key(&self, name: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(name)
        } else {
            ObjPath::from(format!("{}/{name}", self.prefix))
        }
    }

    /// The content object of a dataset.
    pub fn object_key(&self, dataset_id: &str) -> ObjPath {
        self.key(&format!("{dataset_id}.bin"))
    }

    fn sidecar_key(&self, dataset_id: &str) -> ObjPath {
        self.key(&format!("{dataset_id}.json"))
    }

    fn err(
        &self,
        op: impl Into<String>,
        key: &ObjPath,
    ) -> impl FnOnce(object_store::Error) -> ObjectError {
        let (op, bucket, key) = (op.into(), self.bucket.clone(), key.to_string());
        move |source| ObjectError {
            op,
            bucket,
            key,
            source: Box::new(source),
        }
    }

    /// `s3://bucket/prefix`, for logs and errors.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// Write and delete a small object: fails at start on a bad credential,
    /// a missing bucket or an unreachable endpoint.
    pub async fn probe(&self, bank_id: &str) -> Result<(), ObjectError> {
        let key = self.key(&format!(".labmesh/probe-{bank_id}"));
        self.store
            .put(&key, PutPayload::from_static(b"labmesh bank probe"))
            .await
            .map_err(self.err("probe (write)", &key))?;
        self.store
            .delete(&key)
            .await
            .map_err(self.err("probe (delete)", &key))?;
        Ok(())
    }

    /// Store a small dataset's content in one request.
    pub async fn put_object(&self, dataset_id: &str, data: Bytes) -> Result<(), ObjectError> {
        let key = self.object_key(dataset_id);
        self.store
            .put(&key, PutPayload::from_bytes(data))
            .await
            .map_err(self.err("put", &key))?;
        Ok(())
    }

    /// Start a multipart upload of a dataset's content.
    pub async fn create_multipart(&self, dataset_id: &str) -> Result<String, ObjectError> {
        let key = self.object_key(dataset_id);
        self.store
            .create_multipart(&key)
            .await
            .map_err(self.err("create multipart upload", &key))
    }

    /// Upload part `idx` (0-based).
    pub async fn put_part(
        &self,
        dataset_id: &str,
        upload: &str,
        idx: usize,
        data: Bytes,
    ) -> Result<PartId, ObjectError> {
        let key = self.object_key(dataset_id);
        let upload = upload.to_string();
        self.store
            .put_part(&key, &upload, idx, PutPayload::from_bytes(data))
            .await
            .map_err(self.err(format!("upload part {}", idx + 1), &key))
    }

    /// Complete a multipart upload: the object appears whole.
    pub async fn complete(
        &self,
        dataset_id: &str,
        upload: &str,
        parts: Vec<PartId>,
    ) -> Result<(), ObjectError> {
        let key = self.object_key(dataset_id);
        let upload = upload.to_string();
        self.store
            .complete_multipart(&key, &upload, parts)
            .await
            .map_err(self.err("complete multipart upload", &key))?;
        Ok(())
    }

    /// Abort a multipart upload (its parts are freed).
    pub async fn abort(&self, key: &str, upload: &str) -> Result<(), ObjectError> {
        let key = ObjPath::from(key);
        let upload = upload.to_string();
        self.store
            .abort_multipart(&key, &upload)
            .await
            .map_err(self.err("abort multipart upload", &key))
    }

    /// Size of a stored object, `None` when there is none.
    pub async fn size(&self, dataset_id: &str) -> Result<Option<u64>, ObjectError> {
        let key = self.object_key(dataset_id);
        match self.store.head(&key).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("head", &key)(e)),
        }
    }

    /// Delete a content object (a commit that could not finish).
    pub async fn delete_object(&self, dataset_id: &str) -> Result<(), ObjectError> {
        let key = self.object_key(dataset_id);
        self.store
            .delete(&key)
            .await
            .map_err(self.err("delete", &key))
    }

    /// Delete a dataset's sidecar (a commit that could not finish).
    pub async fn delete_sidecar(&self, dataset_id: &str) -> Result<(), ObjectError> {
        let key = self.sidecar_key(dataset_id);
        self.store
            .delete(&key)
            .await
            .map_err(self.err("delete sidecar", &key))
    }

    /// Write a dataset's sidecar (the commit point in the store).
    pub async fn put_sidecar(&self, s: &Sidecar) -> Result<(), ObjectError> {
        let key = self.sidecar_key(&s.dataset_id);
        let body = serde_json::to_vec(s).unwrap_or_default();
        self.store
            .put(&key, PutPayload::from(body))
            .await
            .map_err(self.err("put sidecar", &key))?;
        Ok(())
    }

    /// Read a dataset's sidecar; `None` when the store has no such dataset
    /// (or the sidecar is not one of ours).
    pub async fn sidecar(&self, dataset_id: &str) -> Result<Option<Sidecar>, ObjectError> {
        let key = self.sidecar_key(dataset_id);
        let got = match self.store.get(&key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.err("get sidecar", &key)(e)),
        };
        if got.meta.size > MAX_SIDECAR {
            tracing::warn!(key = %key, size = got.meta.size, "sidecar too large; ignored");
            return Ok(None);
        }
        let bytes = got.bytes().await.map_err(self.err("get sidecar", &key))?;
        match serde_json::from_slice::<Sidecar>(&bytes) {
            Ok(s) if s.dataset_id == dataset_id => Ok(Some(s)),
            _ => {
                tracing::warn!(key = %key, "sidecar is not a labmesh dataset; ignored");
                Ok(None)
            }
        }
    }

    /// Ids of every dataset with a sidecar under the prefix (not below it).
    pub async fn list_ids(&self) -> Result<Vec<String>, ObjectError> {
        let prefix = if self.prefix.is_empty() {
            None
        } else {
            Some(ObjPath::from(self.prefix.as_str()))
        };
        let listed = self
            .store
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(self.err("list", &prefix.clone().unwrap_or_default()))?;
        Ok(listed
            .objects
            .iter()
            .filter_map(|m| m.location.filename())
            .filter_map(|n| n.strip_suffix(".json"))
            .filter(|id| valid_dataset_id(id))
            .map(str::to_string)
            .collect())
    }

    /// Stream a dataset's content from `offset`.
    pub async fn read_from(
        &self,
        dataset_id: &str,
        offset: u64,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes, ObjectError>>, ObjectError> {
        let key = self.object_key(dataset_id);
        let opts = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..Default::default()
        };
        let got = self
            .store
            .get_opts(&key, opts)
            .await
            .map_err(self.err(format!("get from byte {offset}"), &key))?;
        let (bucket, k) = (self.bucket.clone(), key.to_string());
        Ok(got
            .into_stream()
            .map(move |r| {
                r.map_err(|source| ObjectError {
                    op: "read".to_string(),
                    bucket: bucket.clone(),
                    key: k.clone(),
                    source: Box::new(source),
                })
            })
            .boxed())
    }
}
