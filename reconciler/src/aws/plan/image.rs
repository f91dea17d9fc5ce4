//! The images a stack's instances boot: the image they start from, resolved through its SSM
//! parameter, and the spilo image a plain Debian instance installs from the image bucket
//! (uploaded by the plan when this machine has it).

use super::*;

/// Where a stack's instances get their images: the image they start from (an id or an SSM
/// parameter) in `region`, and the bucket the spilo image is installed from (none for an AMI
/// that carries spilo).
pub(super) struct ImageSource {
    pub(super) region: String,
    pub(super) image: String,
    pub(super) bucket: Option<String>,
    pub(super) arch: spilo_model::spec::Architecture,
    /// Whether the plan may create the bucket (`backup.createBucket` of a PostgreSQL file).
    pub(super) creatable: bool,
}

/// The image the instances start from, and the spilo image a plain Debian instance installs
/// from the bucket: an image parameter that does not resolve blocks a stack change; a spilo
/// image missing from the bucket is uploaded when this machine has it, and blocks otherwise.
pub(super) fn plan_image(
    src: &ImageSource,
    obs: &ObservedCluster,
    p: &mut ClusterPlan,
) -> Result<(), String> {
    let region = src.region.as_str();
    if p.desired.is_some() {
        let param = &src.image;
        match &obs.image {
            Some(Observation::Absent) => {
                return Err(format!(
                    "the image parameter {param} does not exist in {region}: name an image in aws.image"
                ));
            }
            Some(Observation::Unknown(why)) => {
                return Err(format!("the image parameter {param}: {why}"));
            }
            _ => {}
        }
    }
    let Some(bucket) = src.bucket.clone() else {
        return Ok(());
    };
    let arch = src.arch;
    match &obs.image_object {
        Some(Observation::Unknown(why)) => Err(format!("the spilo image in the bucket: {why}")),
        Some(Observation::Absent)
            if matches!(obs.bucket, Some(Observation::Absent)) && p.bucket.is_none() =>
        {
            Err(format!(
                "the instances install the spilo image from s3://{bucket}, which does not exist: create it{}",
                if src.creatable {
                    ", or set spec.backup.createBucket: true"
                } else {
                    ""
                }
            ))
        }
        Some(Observation::Absent) => match &obs.image_file {
            Some((path, digest)) => {
                p.image_upload = Some(ImageUpload {
                    bucket,
                    key: crate::aws::image::key(arch),
                    file: path.clone(),
                    sha256: digest.clone(),
                });
                if p.action == Action::Noop {
                    p.action = Action::Update;
                }
                Ok(())
            }
            None => Err(format!(
                "the spilo image {} is not in s3://{bucket}/{} and not on this machine (looked in {}): build it with scripts/image, or set SPILO_IMAGE_DIR",
                crate::aws::image::file_name(arch),
                crate::aws::image::key(arch),
                crate::aws::image::search_dirs()
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        },
        _ => Ok(()),
    }
}
