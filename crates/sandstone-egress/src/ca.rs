//! The installation CA: the certificate sandboxes trust so that the proxy
//! can terminate TLS where a credential must be injected. The key (0600)
//! never leaves the host's data directory; sandboxes get the certificate,
//! inside a bundle with the host's own roots.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub struct InstallationCa {
    pub cert_pem: String,
    /// The host roots plus this CA: what sandboxes are given.
    pub bundle: PathBuf,
    key_path: PathBuf,
}

/// Why the installation CA could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Making the CA directory or reading the certificate.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// `what`: the CA key, certificate or bundle.
    #[error("write {what}: {error}")]
    Write {
        what: &'static str,
        error: std::io::Error,
    },
    #[error("read the CA key: {0}")]
    ReadKey(std::io::Error),
    #[error("the CA key: {0}")]
    Key(rcgen::Error),
    /// Building the CA certificate.
    #[error(transparent)]
    Certificate(#[from] rcgen::Error),
}

pub(crate) const HOST_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

pub(crate) fn write(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The CA's parameters. Leaves are signed by an issuer rebuilt from these
/// and the key, so they must stay what the certificate was made with.
fn ca_params() -> Result<rcgen::CertificateParams, CaError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
    };
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Sandstone installation CA");
    dn.push(DnType::OrganizationName, "Sandstone");
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    Ok(params)
}

fn generate() -> Result<(String, String), CaError> {
    let key = rcgen::KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl InstallationCa {
    /// Loads the CA from `dir`, creating it (key 0600) the first time, and
    /// (re)writes the bundle sandboxes are given.
    pub fn load_or_create(dir: &Path) -> Result<InstallationCa, CaError> {
        let written = |what| move |error| CaError::Write { what, error };
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        if !cert_path.exists() || !key_path.exists() {
            let (cert, key) = generate()?;
            write(&key_path, key.as_bytes(), 0o600).map_err(written("CA key"))?;
            write(&cert_path, cert.as_bytes(), 0o644).map_err(written("CA certificate"))?;
        }
        let cert_pem = std::fs::read_to_string(&cert_path)?;
        let mut bundle = std::fs::read_to_string(HOST_ROOTS).unwrap_or_default();
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str(&cert_pem);
        let bundle_path = dir.join("ca-bundle.pem");
        // Replaced only when it changed: running sandboxes (and checkpoints
        // of their memory) are bound to this file, not to its name.
        if std::fs::read(&bundle_path).ok().as_deref() != Some(bundle.as_bytes()) {
            write(&bundle_path, bundle.as_bytes(), 0o644).map_err(written("CA bundle"))?;
        }
        Ok(InstallationCa {
            cert_pem,
            bundle: bundle_path,
            key_path,
        })
    }

    /// What signs leaf certificates: the CA's key and its name.
    pub fn issuer(&self) -> Result<rcgen::Issuer<'static, rcgen::KeyPair>, CaError> {
        let pem = std::fs::read_to_string(&self.key_path).map_err(CaError::ReadKey)?;
        let key = rcgen::KeyPair::from_pem(&pem).map_err(CaError::Key)?;
        Ok(rcgen::Issuer::new(ca_params()?, key))
    }
}

/// Where the bundle appears in a sandbox, and the variables that point
/// common tools at it.
pub const SANDBOX_BUNDLE: &str = "/etc/sandstone/ca-bundle.pem";
pub const TRUST_ENV: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
];

#[cfg(test)]
mod tests {
    #[test]
    fn created_once_with_a_private_key() {
        let dir = tempfile_dir();
        let a = super::InstallationCa::load_or_create(&dir).unwrap();
        let b = super::InstallationCa::load_or_create(&dir).unwrap();
        assert_eq!(a.cert_pem, b.cert_pem, "loaded, not regenerated");
        assert!(a.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir.join("ca.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let bundle = std::fs::read_to_string(&a.bundle).unwrap();
        assert!(bundle.ends_with(&a.cert_pem) && !bundle.contains("PRIVATE KEY"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sandstone-ca-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}
