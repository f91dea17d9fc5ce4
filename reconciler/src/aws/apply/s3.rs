//! What apply makes in S3, outside the stack: the WAL bucket (kept when its cluster is
//! deleted, so deleting a cluster never deletes its backups) and the spilo image object that
//! plain Debian instances install at first boot.

use super::Log;
use crate::aws::clients::{RegionClients, describe};
use crate::aws::plan::ImageUpload;

/// Creates the WAL bucket, encrypted at rest and closed to public access. Outside the stack
/// on purpose: deleting the cluster must not delete its backups.
pub(super) async fn create_bucket(
    r: &RegionClients,
    cluster: &str,
    region: &str,
    name: &str,
    log: &Log,
) -> Result<(), String> {
    use aws_sdk_s3::types::{
        BucketLocationConstraint, CreateBucketConfiguration, PublicAccessBlockConfiguration,
        ServerSideEncryption, ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration,
        ServerSideEncryptionRule,
    };
    let mut req = r.s3.create_bucket().bucket(name);
    // us-east-1 is the one region that refuses its own name as a location constraint.
    if region != "us-east-1" {
        req = req.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region))
                .build(),
        );
    }
    match req.send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_bucket_already_owned_by_you()) => {}
        Err(e) => return Err(format!("create the WAL bucket {name}: {}", describe(&e))),
    }
    r.s3.put_public_access_block()
        .bucket(name)
        .public_access_block_configuration(
            PublicAccessBlockConfiguration::builder()
                .block_public_acls(true)
                .ignore_public_acls(true)
                .block_public_policy(true)
                .restrict_public_buckets(true)
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            format!(
                "close the WAL bucket {name} to public access: {}",
                describe(&e)
            )
        })?;
    let sse = ServerSideEncryptionByDefault::builder()
        .sse_algorithm(ServerSideEncryption::Aes256)
        .build()
        .map_err(|e| e.to_string())?;
    let config = ServerSideEncryptionConfiguration::builder()
        .rules(
            ServerSideEncryptionRule::builder()
                .apply_server_side_encryption_by_default(sse)
                .build(),
        )
        .build()
        .map_err(|e| e.to_string())?;
    r.s3.put_bucket_encryption()
        .bucket(name)
        .server_side_encryption_configuration(config)
        .send()
        .await
        .map_err(|e| format!("encrypt the WAL bucket {name}: {}", describe(&e)))?;
    log.line(
        cluster,
        &format!("+ S3 bucket {name} created (kept when the cluster is deleted)"),
    );
    Ok(())
}

/// Uploads the spilo image's tarball (encrypted at rest).
pub(super) async fn upload_image(
    r: &RegionClients,
    cluster: &str,
    u: &ImageUpload,
    log: &Log,
) -> Result<(), String> {
    let digest = crate::aws::image::sha256(&u.file)
        .map_err(|e| format!("read the spilo image {}: {e}", u.file.display()))?;
    if digest != u.sha256 {
        return Err(format!(
            "the spilo image {} is not the file the plan saw (SHA-256 {digest}, planned {}): plan again",
            u.file.display(),
            u.sha256
        ));
    }
    let body = aws_sdk_s3::primitives::ByteStream::from_path(&u.file)
        .await
        .map_err(|e| format!("read the spilo image {}: {e}", u.file.display()))?;
    r.s3.put_object()
        .bucket(&u.bucket)
        .key(&u.key)
        .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            format!(
                "upload the spilo image to s3://{}/{}: {}",
                u.bucket,
                u.key,
                describe(&e)
            )
        })?;
    log.line(
        cluster,
        &format!("+ spilo image uploaded to s3://{}/{}", u.bucket, u.key),
    );
    Ok(())
}
