//! TLS 1.3 record protection for the interceptor, whose cost is the
//! AES-GCM of every byte twice (decrypted from one peer, encrypted for the
//! other). aws-lc (rustls' provider everywhere else) has AES-GCM with
//! VAES only for AVX-512; ring also has it for AVX2, which CPUs with VAES
//! but no AVX-512 (this project's machines among them) run at 1.8× the
//! speed (6.3 vs 3.6 GB/s per core, measured). Only the record cipher of
//! the two TLS 1.3 AES-GCM suites comes from ring: key exchange (with its
//! post-quantum group), signatures, the key schedule and every other suite
//! stay aws-lc's.

use ring::aead;
use rustls::crypto::CryptoProvider;
use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter, MessageEncrypter,
    Nonce, OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload, Tls13AeadAlgorithm,
    UnsupportedOperationError, make_tls13_aad,
};
use rustls::{
    CipherSuite, CipherSuiteCommon, ConnectionTrafficSecrets, ContentType, ProtocolVersion,
    SupportedCipherSuite, Tls13CipherSuite,
};
use std::sync::{Arc, LazyLock};

/// aws-lc's default provider with the TLS 1.3 AES-GCM record cipher
/// swapped for ring's.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> = LazyLock::new(|| {
        let mut p = rustls::crypto::aws_lc_rs::default_provider();
        for suite in &mut p.cipher_suites {
            if let SupportedCipherSuite::Tls13(s) = suite
                && let Some(aead_alg) = ring_aes_gcm(s.common.suite)
            {
                // Once per process: a suite is a `&'static` by rustls' design.
                *suite = SupportedCipherSuite::Tls13(Box::leak(Box::new(Tls13CipherSuite {
                    common: CipherSuiteCommon { ..s.common },
                    hkdf_provider: s.hkdf_provider,
                    aead_alg,
                    quic: None,
                })));
            }
        }
        Arc::new(p)
    });
    PROVIDER.clone()
}

fn ring_aes_gcm(suite: CipherSuite) -> Option<&'static AesGcm> {
    static AES_128: AesGcm = AesGcm(&aead::AES_128_GCM);
    static AES_256: AesGcm = AesGcm(&aead::AES_256_GCM);
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(&AES_128),
        CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(&AES_256),
        _ => None,
    }
}

struct AesGcm(&'static aead::Algorithm);

impl AesGcm {
    fn record_key(&self, key: &AeadKey, iv: Iv) -> RecordKey {
        RecordKey {
            // rustls derives `key_len()` bytes, the only length `new` refuses.
            key: aead::LessSafeKey::new(
                aead::UnboundKey::new(self.0, key.as_ref()).expect("a key of key_len bytes"),
            ),
            iv,
        }
    }
}

impl Tls13AeadAlgorithm for AesGcm {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(self.record_key(&key, iv))
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(self.record_key(&key, iv))
    }

    fn key_len(&self) -> usize {
        self.0.key_len()
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Ok(if self.0 == &aead::AES_128_GCM {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        } else {
            ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        })
    }
}

/// One direction's key: records are sealed or opened in place (RFC 8446
/// §5.2: the nonce is the IV xor the record's sequence number, the
/// additional data the record header).
struct RecordKey {
    key: aead::LessSafeKey,
    iv: Iv,
}

impl RecordKey {
    fn nonce(&self, seq: u64) -> aead::Nonce {
        aead::Nonce::assume_unique_for_key(Nonce::new(&self.iv, seq).0)
    }
}

impl MessageEncrypter for RecordKey {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, rustls::Error> {
        let total = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total);
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&msg.typ.to_array());
        self.key
            .seal_in_place_append_tag(
                self.nonce(seq),
                aead::Aad::from(make_tls13_aad(total)),
                &mut payload,
            )
            .map_err(|_| rustls::Error::EncryptError)?;
        // Every TLS 1.3 record says TLS 1.2 on the wire (RFC 8446 §5.1).
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        // The inner content type, then the tag.
        payload_len + 1 + self.key.algorithm().tag_len()
    }
}

impl MessageDecrypter for RecordKey {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, rustls::Error> {
        let payload = &mut msg.payload;
        if payload.len() < self.key.algorithm().tag_len() {
            return Err(rustls::Error::DecryptError);
        }
        let aad = aead::Aad::from(make_tls13_aad(payload.len()));
        let plain = self
            .key
            .open_in_place(self.nonce(seq), aad, payload)
            .map_err(|_| rustls::Error::DecryptError)?
            .len();
        payload.truncate(plain);
        msg.into_tls13_unpadded_message()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
    use std::io::{Read, Write};

    fn stock() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn configs(
        server: Arc<CryptoProvider>,
        client: Arc<CryptoProvider>,
    ) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["api.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der: CertificateDer<'static> = cert.der().clone();
        let s = ServerConfig::builder_with_provider(server)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let c = ClientConfig::builder_with_provider(client)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(s), Arc::new(c))
    }

    /// Plaintext each side has received.
    #[derive(Default)]
    struct Received {
        client: Vec<u8>,
        server: Vec<u8>,
    }

    /// Moves every pending TLS byte from one side to the other until both
    /// are quiet, draining what each side decrypts into `got` (rustls holds
    /// only 16 KiB of it); `tamper` may change the bytes in flight.
    fn pump(
        c: &mut ClientConnection,
        s: &mut ServerConnection,
        got: &mut Received,
        tamper: &dyn Fn(&mut Vec<u8>),
    ) -> Result<(), rustls::Error> {
        fn deliver<D>(
            to: &mut rustls::ConnectionCommon<D>,
            wire: &[u8],
            got: &mut Vec<u8>,
        ) -> Result<(), rustls::Error> {
            let mut rest = wire;
            while !rest.is_empty() {
                to.read_tls(&mut rest).unwrap();
                to.process_new_packets()?;
                let mut buf = [0; 4096];
                while let Ok(n @ 1..) = to.reader().read(&mut buf) {
                    got.extend_from_slice(&buf[..n]);
                }
            }
            Ok(())
        }
        fn take<D>(from: &mut rustls::ConnectionCommon<D>) -> Vec<u8> {
            let mut wire = Vec::new();
            while from.wants_write() {
                from.write_tls(&mut wire).unwrap();
            }
            wire
        }
        loop {
            let mut up = take(c);
            tamper(&mut up);
            deliver(s, &up, &mut got.server)?;
            let mut down = take(s);
            tamper(&mut down);
            deliver(c, &down, &mut got.client)?;
            if up.is_empty() && down.is_empty() {
                return Ok(());
            }
        }
    }

    fn connect(
        (server, client): (Arc<ServerConfig>, Arc<ClientConfig>),
    ) -> (ClientConnection, ServerConnection) {
        let name = ServerName::try_from("api.test").unwrap();
        let mut c = ClientConnection::new(client, name).unwrap();
        let mut s = ServerConnection::new(server).unwrap();
        pump(&mut c, &mut s, &mut Received::default(), &|_| ()).unwrap();
        (c, s)
    }

    #[test]
    fn records_interoperate_with_aws_lc_both_ways_for_both_aes_suites() {
        for suite in [
            CipherSuite::TLS13_AES_256_GCM_SHA384,
            CipherSuite::TLS13_AES_128_GCM_SHA256,
        ] {
            // The stock side offers only `suite`, so that one is negotiated.
            let only = |mut p: CryptoProvider| {
                p.cipher_suites.retain(|s| s.suite() == suite);
                Arc::new(p)
            };
            let stock_only = only(rustls::crypto::aws_lc_rs::default_provider());
            for (server, client) in [
                (provider(), stock_only.clone()),
                (stock_only.clone(), provider()),
            ] {
                let (mut c, mut s) = connect(configs(server, client));
                assert_eq!(c.negotiated_cipher_suite().unwrap().suite(), suite);
                // Three records each way (at most 16 KiB each), the last one short.
                let up: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
                let down: Vec<u8> = up.iter().rev().copied().collect();
                c.writer().write_all(&up).unwrap();
                s.writer().write_all(&down).unwrap();
                let mut got = Received::default();
                pump(&mut c, &mut s, &mut got, &|_| ()).unwrap();
                assert!(got.server == up && got.client == down, "{suite:?}");
            }
        }
    }

    #[test]
    fn a_record_changed_in_flight_is_refused() {
        let (mut c, mut s) = connect(configs(provider(), stock()));
        c.writer().write_all(b"Authorization: Bearer x").unwrap();
        // Flip one bit of the ciphertext (past the 5-byte record header).
        let err = pump(&mut c, &mut s, &mut Received::default(), &|wire| {
            if let Some(b) = wire.get_mut(9) {
                *b ^= 1;
            }
        })
        .unwrap_err();
        assert_eq!(err, rustls::Error::DecryptError);
    }

    #[test]
    fn only_the_aes_gcm_record_cipher_is_swapped() {
        let ours = provider();
        let stock = stock();
        let names = |p: &CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| s.suite())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&ours), names(&stock));
        for (o, s) in ours.cipher_suites.iter().zip(&stock.cipher_suites) {
            let (SupportedCipherSuite::Tls13(o), SupportedCipherSuite::Tls13(s)) = (o, s) else {
                continue;
            };
            let swapped = ring_aes_gcm(o.common.suite).is_some();
            assert_eq!(
                !std::ptr::addr_eq(o.aead_alg, s.aead_alg),
                swapped,
                "{:?}",
                o.common.suite
            );
            assert!(std::ptr::addr_eq(o.hkdf_provider, s.hkdf_provider));
        }
        assert_eq!(
            format!("{:?}", ours.kx_groups),
            format!("{:?}", stock.kx_groups),
            "key exchange (the post-quantum group included) is aws-lc's"
        );
    }
}
