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

/// A cluster CA for a test: made with `spilo-pki` the way `spilo up` makes one, its key owned by
/// the servers' user (the governors issue their certificates with it), its certificate added to
/// what this test process's SQL clients trust ([`trust`]).
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA certificate.
    pub cert: std::path::PathBuf,
    /// The CA key.
    pub key: std::path::PathBuf,
}

impl TestCa {
    /// Creates the CA under `dir/tls`.
    pub fn create(dir: &Path, run_as: RunAs) -> anyhow::Result<Self> {
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls)?;
        run_as.own(&tls)?;
        let ca = spilo_pki::new_ca(
            "spilo e2e CA",
            std::time::Duration::from_secs(86_400),
            std::time::SystemTime::now(),
        )?;
        let me = Self {
            cert: tls.join("ca.crt"),
            key: tls.join("ca.key"),
        };
        std::fs::write(&me.cert, &ca.cert)?;
        std::fs::write(&me.key, &ca.key)?;
        std::fs::set_permissions(&me.key, std::fs::Permissions::from_mode(0o600))?;
        run_as.own(&me.key)?;
        run_as.own(&me.cert)?;
        trust(&me.cert)?;
        Ok(me)
    }

    /// A certificate for `names` (server and client use), written as `<stem>.crt`/`.key`
    /// beside the CA, readable by `run_as`.
    pub fn issue(
        &self,
        stem: &str,
        names: &[String],
        run_as: RunAs,
    ) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
        let ca = spilo_pki::CertAndKey {
            cert: std::fs::read_to_string(&self.cert)?,
            key: std::fs::read_to_string(&self.key)?,
        };
        let issued = spilo_pki::issue(
            &ca,
            names,
            std::time::Duration::from_secs(86_400),
            std::time::SystemTime::now(),
        )?;
        let dir = self.cert.parent().unwrap_or(Path::new("."));
        let (cert, key) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert, issued.cert)?;
        std::fs::write(&key, issued.key)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        run_as.own(&key)?;
        run_as.own(&cert)?;
        Ok((cert, key))
    }
}

fn trusted() -> &'static std::sync::Mutex<Vec<std::path::PathBuf>> {
    static TRUSTED: std::sync::OnceLock<std::sync::Mutex<Vec<std::path::PathBuf>>> =
        std::sync::OnceLock::new();
    TRUSTED.get_or_init(Default::default)
}

/// Adds a CA certificate to what this process's SQL clients ([`client_config`]) trust.
pub fn trust(ca: &Path) -> anyhow::Result<()> {
    let mut t = trusted()
        .lock()
        .map_err(|_| anyhow::anyhow!("trust store poisoned"))?;
    if !t.iter().any(|p| p == ca) {
        t.push(ca.to_path_buf());
    }
    Ok(())
}

/// A rustls client configuration trusting exactly the CA certificates in `cas` whose files
/// still exist (a finished test's CA is gone).
pub fn client_config_for(cas: &[std::path::PathBuf]) -> anyhow::Result<rustls::ClientConfig> {
    let present: Vec<&Path> = cas
        .iter()
        .map(|p| p.as_path())
        .filter(|p| p.exists())
        .collect();
    Ok(spilo_pki::client_trusting(&present)?)
}

/// [`client_config_for`] every CA this process trusts.
pub fn client_config() -> anyhow::Result<rustls::ClientConfig> {
    let cas = trusted()
        .lock()
        .map_err(|_| anyhow::anyhow!("trust store poisoned"))?
        .clone();
    client_config_for(&cas)
}
