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

pub(crate) const HOST_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

fn write(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
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
fn ca_params() -> Result<rcgen::CertificateParams, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
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

fn generate() -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = ca_params()?.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl InstallationCa {
    /// Loads the CA from `dir`, creating it (key 0600) the first time, and
    /// (re)writes the bundle sandboxes are given.
    pub fn load_or_create(dir: &Path) -> Result<InstallationCa, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| e.to_string())?;
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        if !cert_path.exists() || !key_path.exists() {
            let (cert, key) = generate()?;
            write(&key_path, key.as_bytes(), 0o600).map_err(|e| format!("write CA key: {e}"))?;
            write(&cert_path, cert.as_bytes(), 0o644)
                .map_err(|e| format!("write CA certificate: {e}"))?;
        }
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| e.to_string())?;
        let mut bundle = std::fs::read_to_string(HOST_ROOTS).unwrap_or_default();
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str(&cert_pem);
        let bundle_path = dir.join("ca-bundle.pem");
        write(&bundle_path, bundle.as_bytes(), 0o644)
            .map_err(|e| format!("write CA bundle: {e}"))?;
        Ok(InstallationCa {
            cert_pem,
            bundle: bundle_path,
            key_path,
        })
    }

    /// What signs leaf certificates: the CA's key and its name.
    pub fn issuer(&self) -> Result<rcgen::Issuer<'static, rcgen::KeyPair>, String> {
        let pem =
            std::fs::read_to_string(&self.key_path).map_err(|e| format!("read the CA key: {e}"))?;
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| format!("the CA key: {e}"))?;
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
