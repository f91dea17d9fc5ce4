//! A test certificate authority and a REST API server certificate for 127.0.0.1 signed by it
//! (rustls refuses a CA certificate used as the server's own), made with `openssl`.

use crate::proc::RunAs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `ca.crt`, `api.crt` and `api.key` into `secrets` (owned by `run_as`, mode 0600)
/// and returns the CA certificate for clients to trust.
pub fn api_certificate(secrets: &Path, run_as: RunAs) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let (ca, ca_key) = (secrets.join("ca.crt"), secrets.join("ca.key"));
    let (cert, key, csr) = (
        secrets.join("api.crt"),
        secrets.join("api.key"),
        secrets.join("api.csr"),
    );
    let ext = secrets.join("api.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )?;
    let openssl = |args: Vec<&std::ffi::OsStr>| -> anyhow::Result<()> {
        let out = std::process::Command::new("openssl").args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    openssl(vec![
        os("req"),
        os("-x509"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-days"),
        os("2"),
        os("-subj"),
        os("/CN=spilo-e2e-ca"),
        os("-keyout"),
        ca_key.as_os_str(),
        os("-out"),
        ca.as_os_str(),
    ])?;
    openssl(vec![
        os("req"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-subj"),
        os("/CN=127.0.0.1"),
        os("-keyout"),
        key.as_os_str(),
        os("-out"),
        csr.as_os_str(),
    ])?;
    openssl(vec![
        os("x509"),
        os("-req"),
        os("-in"),
        csr.as_os_str(),
        os("-CA"),
        ca.as_os_str(),
        os("-CAkey"),
        ca_key.as_os_str(),
        os("-CAcreateserial"),
        os("-days"),
        os("2"),
        os("-extfile"),
        ext.as_os_str(),
        os("-out"),
        cert.as_os_str(),
    ])?;
    for p in [&cert, &key, &ca] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
        run_as.own(p)?;
    }
    Ok(reqwest::Certificate::from_pem_bundle(&std::fs::read(&ca)?)?)
}
