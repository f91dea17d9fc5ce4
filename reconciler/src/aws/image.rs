//! How the spilo image reaches an AWS account. By default an instance starts from Debian 12's
//! own AMI (the public SSM parameter Debian maintains), and its user data installs the spilo
//! image of the CLI's version from the cluster's bucket, where `spilo apply` uploaded the root
//! filesystem `scripts/image` built: PostgreSQL, the governor and the boot layer, pinned to the
//! CLI that rendered the configuration. The image then runs in a chroot on the instance (as the
//! test tier runs it in a namespace). `aws.image` may name another SSM parameter (a Debian 12
//! image of one's own), or an AMI id: an image that carries spilo already (built from the same
//! root filesystem), for which nothing is uploaded.

use spilo_model::spec::{Architecture, ClusterFile, is_image_parameter};
use std::path::PathBuf;

/// The CLI's version, which the image must carry.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The public SSM parameter of Debian 12's latest AMI for `arch`.
pub fn base_image_parameter(arch: Architecture) -> String {
    format!("/aws/service/debian/release/12/latest/{}", arch.as_str())
}

/// The root filesystem tarball's file name.
pub fn file_name(arch: Architecture) -> String {
    format!("spilo-{VERSION}-{}.rootfs.tar.gz", arch.as_str())
}

/// Where the images of this version go in the cluster's bucket: `spilo/images/<version>/`.
pub fn prefix() -> String {
    format!("spilo/images/{VERSION}/")
}

/// Its key in the cluster's bucket.
pub fn key(arch: Architecture) -> String {
    format!("{}{}", prefix(), file_name(arch))
}

/// The architecture the cluster's instances run.
pub fn architecture(file: &ClusterFile) -> Architecture {
    Architecture::of_instance_type(
        file.spec
            .aws
            .as_ref()
            .map_or("", |a| a.instance_type.as_str()),
    )
}

/// Whether the instances install the spilo image from the cluster's bucket: they start from
/// an image given by an SSM parameter (Debian's public one by default); an AMI id names an
/// image that carries spilo already.
pub fn from_bucket(file: &ClusterFile) -> bool {
    file.spec
        .aws
        .as_ref()
        .is_some_and(|a| a.image.as_deref().is_none_or(is_image_parameter))
}

/// Where `spilo` looks for the tarball: `$SPILO_IMAGE_DIR`, then `image/` beside the
/// directory of the `spilo` binary (`target/image` for `target/debug/spilo`, where
/// `scripts/image` writes), then `share/spilo/images` of an installation prefix.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("SPILO_IMAGE_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(bin) = exe.parent()
        && let Some(up) = bin.parent()
    {
        dirs.push(up.join("image"));
        dirs.push(up.join("share/spilo/images"));
    }
    dirs
}

/// The SHA-256 of a file, in hex.
pub fn sha256(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The tarball for `arch` on this machine and its SHA-256 (what an upload needs, which the
/// plan pins), if any.
pub fn find_local_with_digest(arch: Architecture) -> Option<(PathBuf, String)> {
    let path = find_local(arch)?;
    let digest = sha256(&path).ok()?;
    Some((path, digest))
}

/// The tarball for `arch` on this machine, if any.
pub fn find_local(arch: Architecture) -> Option<PathBuf> {
    search_dirs()
        .into_iter()
        .map(|d| d.join(file_name(arch)))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_version_and_the_architecture() {
        assert_eq!(
            base_image_parameter(Architecture::Arm64),
            "/aws/service/debian/release/12/latest/arm64"
        );
        assert_eq!(
            key(Architecture::Amd64),
            format!("spilo/images/{VERSION}/spilo-{VERSION}-amd64.rootfs.tar.gz")
        );
    }
}
