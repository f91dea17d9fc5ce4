//! Certificates for every connection of a cluster: the cluster's certificate authority, the
//! certificates members issue themselves from it (one per member, for its PostgreSQL, its
//! REST API and as its etcd client identity), and the pure rule of when one is renewed.
//!
//! Keys are ECDSA P-256 in PKCS#8 PEM, which PostgreSQL (OpenSSL), etcd (Go) and rustls all
//! read. `spilo up` creates a CA with [`new_ca`]; a governor calls [`issue`] at start and
//! again when [`needs_renewal`] says so.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;

/// How far back a certificate's validity starts, for clocks of members that run behind: a
/// minute, or a tenth of a short lifetime (so the renewal point stays ahead).
pub const BACKDATE: Duration = Duration::from_secs(60);

fn backdate(lifetime: Duration) -> Duration {
    BACKDATE.min(lifetime / 10)
}

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused to make or sign it.
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The PEM text holds no certificate, or one that does not parse.
    #[error("not a PEM certificate: {0}")]
    Parse(String),
    /// A name is neither an IP address nor a DNS name.
    #[error("{0:?} is neither an IP address nor a DNS name")]
    Name(String),
    /// A CA file could not be read or holds no usable certificate.
    #[error("{path}: {message}")]
    Trust {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A TLS client configuration (rustls, aws-lc) that trusts exactly the CA certificates in the
/// PEM files `cas`: a server must chain to one of them and name the host connected to (libpq's
/// `verify-full`).
pub fn client_trusting(cas: &[&std::path::Path]) -> Result<rustls::ClientConfig, PkiError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        let trust = |message: String| PkiError::Trust {
            path: ca.to_path_buf(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(|i| i.collect::<Result<_, _>>())
            .map_err(|e| trust(e.to_string()))?;
        for c in certs {
            roots.add(c).map_err(|e| trust(e.to_string()))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Trust {
            path: Default::default(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CertAndKey {
    /// The certificate.
    pub cert: String,
    /// The PKCS#8 private key.
    pub key: String,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey")
            .field("cert", &self.cert)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A self-signed CA that may sign member certificates (and no further CAs).
pub fn new_ca(
    common_name: &str,
    lifetime: Duration,
    now: SystemTime,
) -> Result<CertAndKey, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, lifetime, now);
    let cert = params.self_signed(&key)?;
    Ok(CertAndKey {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate for `names` (IP addresses and DNS names, the first one also the common
/// name) signed by `ca`, good for both sides of TLS: a server (PostgreSQL, the REST API,
/// etcd) and a client (of etcd).
pub fn issue(
    ca: &CertAndKey,
    names: &[String],
    lifetime: Duration,
    now: SystemTime,
) -> Result<CertAndKey, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(names.first().map(String::as_str).unwrap_or("spilo"));
    params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, lifetime, now);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertAndKey {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// What renewal needs to know of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Subject alternative names, IP addresses in their usual text form.
    pub names: Vec<String>,
    /// The issuer's distinguished name, DER.
    pub issuer: Vec<u8>,
    /// The subject's distinguished name, DER.
    pub subject: Vec<u8>,
    /// The serial number, hex.
    pub serial: String,
    /// The subject key identifier (a CA's).
    pub key_id: Option<Vec<u8>>,
    /// The authority key identifier: which CA key signed it.
    pub issuer_key_id: Option<Vec<u8>>,
}

/// Reads the first certificate of a PEM text.
pub fn facts(pem: &str) -> Result<Facts, PkiError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    let cert = block
        .parse_x509()
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    let at = |t: &x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    let mut names = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*bytes) {
                        names.push(IpAddr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*bytes) {
                        names.push(IpAddr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let mut key_id = None;
    let mut issuer_key_id = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                key_id = Some(k.0.to_vec());
            }
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                issuer_key_id = a.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            _ => {}
        }
    }
    Ok(Facts {
        key_id,
        issuer_key_id,
        not_before: at(&cert.validity().not_before),
        not_after: at(&cert.validity().not_after),
        names,
        issuer: cert.issuer().as_raw().to_vec(),
        subject: cert.subject().as_raw().to_vec(),
        serial: cert.raw_serial_as_string(),
    })
}

/// Why a member's certificate is (re)issued; `None` keeps the one it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// A third of its lifetime or less remains (or it has expired).
    Expiring,
    /// It lacks one of the names the member needs (its address changed).
    NamesChanged,
    /// Another CA issued it (the cluster's CA was replaced).
    OtherIssuer,
}

/// Whether `cert` must be replaced at `now` for a member that needs `names`, under the CA
/// `ca` (same subject and, where both carry one, same key identifier). A certificate is renewed once a third of its lifetime
/// remains, so a member that cannot renew for a while still has time before it expires.
pub fn needs_renewal(
    cert: &Facts,
    ca: &Facts,
    names: &[String],
    now: SystemTime,
) -> Option<Renewal> {
    let other_key = matches!((&cert.issuer_key_id, &ca.key_id), (Some(a), Some(b)) if a != b);
    if cert.issuer != ca.subject || other_key {
        return Some(Renewal::OtherIssuer);
    }
    if names.iter().any(|n| !cert.names.contains(n)) {
        return Some(Renewal::NamesChanged);
    }
    let lifetime = cert
        .not_after
        .duration_since(cert.not_before)
        .unwrap_or_default();
    match cert.not_after.duration_since(now) {
        Ok(left) if left > lifetime / 3 => None,
        _ => Some(Renewal::Expiring),
    }
}

/// When [`needs_renewal`] will first say [`Renewal::Expiring`] for `cert`.
pub fn renew_at(cert: &Facts) -> SystemTime {
    let lifetime = cert
        .not_after
        .duration_since(cert.not_before)
        .unwrap_or_default();
    cert.not_after - lifetime / 3
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn san(n: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = n.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if n.len() > 253 || !n.split('.').all(label_ok) {
        return Err(PkiError::Name(n.to_string()));
    }
    n.to_string()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|_| PkiError::Name(n.to_string()))
}

fn validity(params: &mut CertificateParams, lifetime: Duration, now: SystemTime) {
    let back = backdate(lifetime);
    let start = now.checked_sub(back).unwrap_or(now);
    params.not_before = OffsetDateTime::from(start);
    params.not_after = OffsetDateTime::from(now + lifetime);
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn names() -> Vec<String> {
        vec!["127.0.0.1".to_string(), "db.example.org".to_string()]
    }

    #[test]
    fn a_member_certificate_names_its_addresses_and_its_issuer() -> Result<(), PkiError> {
        let now = SystemTime::now();
        let ca = new_ca("spilo test CA", 10 * DAY, now)?;
        let member = issue(&ca, &names(), DAY, now)?;
        let ca_facts = facts(&ca.cert)?;
        let f = facts(&member.cert)?;
        assert_eq!(f.names, names());
        assert_eq!(f.issuer, ca_facts.subject);
        assert_ne!(f.subject, ca_facts.subject);
        let lifetime = f.not_after.duration_since(f.not_before).unwrap_or_default();
        assert_eq!(lifetime, DAY + BACKDATE);
        assert!(member.key.starts_with("-----BEGIN PRIVATE KEY-----"));
        Ok(())
    }

    #[test]
    fn renewal_starts_when_a_third_of_the_lifetime_remains() -> Result<(), PkiError> {
        let now = SystemTime::now();
        let ca = new_ca("ca", 10 * DAY, now)?;
        let ca_facts = facts(&ca.cert)?;
        let f = facts(&issue(&ca, &names(), 3 * DAY, now)?.cert)?;
        let at = renew_at(&f);
        assert_eq!(needs_renewal(&f, &ca_facts, &names(), now), None);
        assert_eq!(
            needs_renewal(&f, &ca_facts, &names(), at - Duration::from_secs(2)),
            None
        );
        assert_eq!(
            needs_renewal(&f, &ca_facts, &names(), at + Duration::from_secs(1)),
            Some(Renewal::Expiring)
        );
        assert_eq!(
            needs_renewal(&f, &ca_facts, &names(), f.not_after + DAY),
            Some(Renewal::Expiring)
        );
        Ok(())
    }

    #[test]
    fn a_new_address_or_a_new_ca_means_a_new_certificate() -> Result<(), PkiError> {
        let now = SystemTime::now();
        let ca = new_ca("ca", 10 * DAY, now)?;
        // The same name, another key: a CA replaced under its old name.
        let other = new_ca("ca", 10 * DAY, now)?;
        let f = facts(&issue(&ca, &names(), DAY, now)?.cert)?;
        let moved = vec!["10.0.0.7".to_string()];
        assert_eq!(
            needs_renewal(&f, &facts(&ca.cert)?, &moved, now),
            Some(Renewal::NamesChanged)
        );
        assert_eq!(
            needs_renewal(&f, &facts(&other.cert)?, &names(), now),
            Some(Renewal::OtherIssuer)
        );
        Ok(())
    }

    #[test]
    fn a_short_lifetime_is_renewed_after_it_started_not_at_once() -> Result<(), PkiError> {
        let now = SystemTime::now();
        let ca = new_ca("ca", DAY, now)?;
        let f = facts(&issue(&ca, &names(), Duration::from_secs(20), now)?.cert)?;
        assert_eq!(needs_renewal(&f, &facts(&ca.cert)?, &names(), now), None);
        let after = renew_at(&f).duration_since(now).unwrap_or_default();
        assert!(
            after >= Duration::from_secs(10) && after < Duration::from_secs(20),
            "{after:?}"
        );
        Ok(())
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(matches!(facts("hello"), Err(PkiError::Parse(_))));
        let now = SystemTime::now();
        let Ok(ca) = new_ca("ca", DAY, now) else {
            panic!("CA");
        };
        assert!(matches!(
            issue(&ca, &["not a name!".to_string()], DAY, now),
            Err(PkiError::Name(n)) if n == "not a name!"
        ));
    }
}
