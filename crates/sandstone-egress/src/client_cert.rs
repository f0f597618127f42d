//! The `tls_client_certificate` projection: on an intercepted TLS
//! connection to a host a rule names, the proxy presents a client
//! certificate upstream (mutual TLS) while the sandbox speaks ordinary TLS
//! to the proxy. The certificate is a property of the upstream connection,
//! not of a request, so it is chosen when the sandbox's connection opens
//! and such connections are pooled apart from all others.

use crate::credentials::{CLIENT_CERTIFICATE_VALUES, ProjectionError, SourceValues};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use sandstone_api::CredentialSourceKind;

/// A client certificate with its key, ready to present. Never printed.
pub struct ClientCertificate {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Extra roots for the upstream's own certificate (`caPem`).
    upstream_roots: Vec<CertificateDer<'static>>,
    /// SHA-256 of the chain and the extra roots: upstream connections made
    /// with different certificates are never shared.
    pub fingerprint: String,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientCertificate({})", &self.fingerprint[..12])
    }
}

/// Why a client certificate source is unusable; names the value at fault,
/// never its content.
#[derive(Debug, thiserror::Error)]
pub enum ClientCertError {
    #[error("holds no PEM certificate")]
    NoCertificate,
    #[error("holds no PEM private key")]
    NoKey,
    #[error("holds no PEM CA certificate")]
    NoCa,
    #[error("cannot be used with the certificate: {0}")]
    Key(rustls::Error),
}

impl ClientCertError {
    /// The source value at fault (`spec.staticTLSClientCertificate.<it>`).
    pub fn field(&self) -> &'static str {
        match self {
            ClientCertError::NoCertificate => "certificatePem",
            ClientCertError::NoKey | ClientCertError::Key(_) => "privateKeyPem",
            ClientCertError::NoCa => "caPem",
        }
    }
}

fn certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

impl ClientCertificate {
    /// Parses and checks a certificate chain, its key (which must match the
    /// first certificate) and optional upstream CA certificates.
    pub fn parse(
        certificate_pem: &str,
        private_key_pem: &str,
        ca_pem: Option<&str>,
    ) -> Result<ClientCertificate, ClientCertError> {
        let chain = certificates(certificate_pem);
        if chain.is_empty() {
            return Err(ClientCertError::NoCertificate);
        }
        let key = PrivateKeyDer::from_pem_slice(private_key_pem.as_bytes())
            .map_err(|_| ClientCertError::NoKey)?;
        let upstream_roots = match ca_pem {
            Some(pem) => {
                let roots = certificates(pem);
                if roots.is_empty() {
                    return Err(ClientCertError::NoCa);
                }
                roots
            }
            None => Vec::new(),
        };
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for c in chain.iter().chain(&upstream_roots) {
            digest.update(&(c.len() as u64).to_be_bytes());
            digest.update(c);
        }
        let fingerprint = digest
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let cert = ClientCertificate {
            chain,
            key,
            upstream_roots,
            fingerprint,
        };
        // Loads the key and checks it against the certificate.
        cert.config(RootCertStore::empty())
            .map_err(ClientCertError::Key)?;
        Ok(cert)
    }

    /// From a source's values, as the daemon sealed them.
    pub fn from_values(values: &SourceValues) -> Result<ClientCertificate, ProjectionError> {
        if values.kind != CredentialSourceKind::StaticTlsClientCertificate {
            return Err(ProjectionError::SourceKind {
                kind: values.kind,
                wanted: CredentialSourceKind::StaticTlsClientCertificate,
            });
        }
        let [cert, key, ca] = CLIENT_CERTIFICATE_VALUES.map(|k| values.values.get(k));
        let missing = |k: &str| ProjectionError::MissingValue(k.to_string());
        ClientCertificate::parse(
            cert.ok_or_else(|| missing(CLIENT_CERTIFICATE_VALUES[0]))?,
            key.ok_or_else(|| missing(CLIENT_CERTIFICATE_VALUES[1]))?,
            ca.map(String::as_str),
        )
        .map_err(|e| ProjectionError::ClientCertificate(e.field(), e.to_string()))
    }

    /// An upstream TLS configuration presenting this certificate, trusting
    /// `roots` and the source's own CA certificates.
    pub fn config(&self, mut roots: RootCertStore) -> Result<ClientConfig, rustls::Error> {
        for c in &self.upstream_roots {
            // One that is not a usable CA verifies nothing; the rest still do.
            let _ = roots.add(c.clone());
        }
        let mut cfg = ClientConfig::builder_with_provider(crate::aead::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_certificate_needs_its_own_key_and_errors_name_the_value() {
        let (cert, key) = pair();
        let (other_cert, other_key) = pair();
        let ok = ClientCertificate::parse(&cert, &key, Some(&other_cert)).unwrap();
        assert_eq!(ok.fingerprint.len(), 64);
        // The CA is part of the identity: connections with another are not shared.
        let without_ca = ClientCertificate::parse(&cert, &key, None).unwrap();
        assert_ne!(ok.fingerprint, without_ca.fingerprint);
        let e = ClientCertificate::parse(&cert, &other_key, None).unwrap_err();
        assert_eq!(e.field(), "privateKeyPem");
        assert!(matches!(e, ClientCertError::Key(_)), "{e}");
        let e = ClientCertificate::parse(&key, &key, None).unwrap_err();
        assert_eq!(e.field(), "certificatePem");
        let e = ClientCertificate::parse(&cert, &cert, None).unwrap_err();
        assert_eq!(e.field(), "privateKeyPem");
        let e = ClientCertificate::parse(&cert, &key, Some("not pem")).unwrap_err();
        assert_eq!(e.field(), "caPem");
        // Nothing of the key in any message or in Debug.
        let body: String = key.lines().nth(1).unwrap().to_string();
        for text in [
            format!("{e}"),
            format!("{ok:?}"),
            ClientCertificate::parse(&cert, &other_key, None)
                .unwrap_err()
                .to_string(),
        ] {
            assert!(!text.contains(&body), "{text}");
        }
    }
}
