//! Where archived files live, behind one trait: a directory (the local target's "bucket") or
//! S3 through aws-sdk-s3 (region, endpoint, path-style addressing, server-side encryption).
//! Keys are `/`-separated paths under the archive's prefix.

use std::path::PathBuf;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Object storage.
#[allow(async_fn_in_trait)]
pub trait Store {
    /// The object at `key`, or `None` when there is none.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes the object at `key` (whole, or not at all).
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError>;
    /// The keys under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Deletes the objects at `keys`; a key already gone is not an error.
    async fn delete(&self, keys: &[String]) -> Result<(), StoreError>;
}

/// A directory.
pub struct Directory {
    /// Its root.
    pub root: PathBuf,
}

impl Store for Directory {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match tokio::fs::read(self.root.join(key)).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError(format!("read {key}: {e}"))),
        }
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        let path = self.root.join(key);
        let err = |e: std::io::Error| StoreError(format!("write {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(err)?;
        }
        // Written aside and renamed, so a reader never sees half a file.
        let tmp = path.with_extension("partial");
        tokio::fs::write(&tmp, &data).await.map_err(err)?;
        tokio::fs::rename(&tmp, &path).await.map_err(err)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut dirs = vec![self.root.join(prefix)];
        while let Some(dir) = dirs.pop() {
            let mut rd = match tokio::fs::read_dir(&dir).await {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError(format!("list {}: {e}", dir.display()))),
            };
            while let Some(e) = rd
                .next_entry()
                .await
                .map_err(|e| StoreError(format!("list {}: {e}", dir.display())))?
            {
                let path = e.path();
                if e.file_type().await.is_ok_and(|t| t.is_dir()) {
                    dirs.push(path);
                } else if let Ok(rel) = path.strip_prefix(&self.root) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            let path = self.root.join(key);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError(format!("delete {key}: {e}"))),
            }
            // Directories exist only for the keys under them, as in a bucket: remove the
            // ones left empty (removing a non-empty one fails, which ends the walk).
            for dir in path.ancestors().skip(1) {
                if dir == self.root || !dir.starts_with(&self.root) {
                    break;
                }
                if tokio::fs::remove_dir(dir).await.is_err() {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// An S3 bucket.
pub struct S3 {
    client: aws_sdk_s3::Client,
    bucket: String,
    sse: Option<String>,
}

/// How long connecting to S3 may take.
pub const S3_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long S3 may leave a call without a byte of its answer.
pub const S3_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl S3 {
    /// A client for `bucket` in `region`; `endpoint` (e.g. a test server) and path-style
    /// addressing are optional; `sse` is `AES256` or `aws:kms`.
    /// A client of `bucket` whose calls give up on a hung connection ([`S3_CONNECT_TIMEOUT`],
    /// [`S3_READ_TIMEOUT`]) rather than after a fixed time: a base backup's part may take
    /// long to upload, a stalled socket may not (the SDK then retries).
    pub async fn new(
        bucket: &str,
        region: &str,
        endpoint: Option<&str>,
        path_style: bool,
        sse: Option<&str>,
    ) -> Self {
        let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(S3_CONNECT_TIMEOUT)
                    .read_timeout(S3_READ_TIMEOUT)
                    .build(),
            )
            .load()
            .await;
        let mut conf = aws_sdk_s3::config::Builder::from(&base).force_path_style(path_style);
        if let Some(e) = endpoint {
            conf = conf.endpoint_url(e);
        }
        S3 {
            client: aws_sdk_s3::Client::from_conf(conf.build()),
            bucket: bucket.to_string(),
            sse: sse.map(str::to_string),
        }
    }
}

impl Store for S3 {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let body = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| StoreError(format!("read s3://{}/{key}: {e}", self.bucket)))?;
                Ok(Some(body.into_bytes().to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(StoreError(format!(
                "get s3://{}/{key}: {}",
                self.bucket,
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ))),
        }
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(data.into());
        if let Some(sse) = &self.sse {
            req = req.server_side_encryption(sse.as_str().into());
        }
        req.send().await.map_err(|e| {
            StoreError(format!(
                "put s3://{}/{key}: {}",
                self.bucket,
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ))
        })?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                StoreError(format!(
                    "list s3://{}/{prefix}: {}",
                    self.bucket,
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                ))
            })?;
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        out.sort();
        Ok(out)
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        let err = |e: String| StoreError(format!("delete from s3://{}: {e}", self.bucket));
        // DeleteObjects takes at most 1000 keys.
        for batch in keys.chunks(1000) {
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| err(e.to_string()))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| err(aws_sdk_s3::error::DisplayErrorContext(&e).to_string()))?;
            if let Some(first) = out.errors().first() {
                return Err(err(format!(
                    "{}: {}",
                    first.key().unwrap_or("?"),
                    first.message().unwrap_or("refused")
                )));
            }
        }
        Ok(())
    }
}
