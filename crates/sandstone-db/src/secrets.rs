//! Secrets at rest: XChaCha20-Poly1305 with a key kept outside the
//! database — `SANDSTONE_SECRET_KEY` (64 hex digits) or a 0600 key file in
//! the data directory, created on first use. Decrypted values live in
//! [`Secret`], whose `Debug` and `Display` never show them.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use std::io::{Read, Write};
use std::path::Path;

pub use sandstone_api::Secret;

/// Seals and opens secrets with the installation's key.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    /// Kept to derive the installation's other keys from (`derive`); never
    /// shown, never written anywhere but the key file it came from.
    key: [u8; 32],
}

pub(crate) fn random<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

impl Sealer {
    /// The key from `SANDSTONE_SECRET_KEY`, else `key_file` (made 0600 with
    /// a fresh random key when missing).
    pub fn load(key_file: &Path) -> std::io::Result<Sealer> {
        let key: [u8; 32] = match std::env::var("SANDSTONE_SECRET_KEY") {
            Ok(hex_key) => hex::decode(hex_key.trim())
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| {
                    std::io::Error::other("SANDSTONE_SECRET_KEY must be 64 hex digits")
                })?,
            Err(_) => match std::fs::read(key_file) {
                Ok(k) => k
                    .try_into()
                    .map_err(|_| std::io::Error::other("the secret key file must hold 32 bytes"))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let k = random::<32>()?;
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(key_file)?;
                    f.write_all(&k)?;
                    f.sync_all()?;
                    k
                }
                Err(e) => return Err(e),
            },
        };
        Ok(Sealer::from_key(key))
    }

    /// A sealer over `key`, however it was obtained.
    pub fn from_key(key: [u8; 32]) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(&Key::from(key)),
            key,
        }
    }

    /// A key for one other purpose (`context` names it, e.g. `"sandstone
    /// node-to-node auth v1"`), derived from the sealing key with BLAKE3's
    /// key derivation: every node sharing the sealing key (as nodes on one
    /// database must) derives the same one, and none of them reveals the
    /// sealing key or another context's key.
    pub fn derive(&self, context: &'static str) -> [u8; 32] {
        blake3::derive_key(context, &self.key)
    }

    /// Nonce (24 bytes) followed by the ciphertext.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce = random::<24>().expect("/dev/urandom");
        let mut out = nonce.to_vec();
        out.extend(
            self.cipher
                .encrypt(&XNonce::from(nonce), plain)
                .expect("encryption cannot fail"),
        );
        out
    }

    /// `None` when the data was not sealed with this key or was altered.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 24 {
            return None;
        }
        let (nonce, body) = sealed.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().ok()?;
        self.cipher.decrypt(&XNonce::from(nonce), body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secret.key");
        let s = Sealer::load(&key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let sealed = s.seal(b"sk-live-123");
        assert!(!sealed.windows(11).any(|w| w == b"sk-live-123"));
        assert_eq!(s.open(&sealed).as_deref(), Some(&b"sk-live-123"[..]));
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(s.open(&bad).is_none());
        // The same key file opens it again; another key does not.
        assert_eq!(
            Sealer::load(&key).unwrap().open(&sealed).as_deref(),
            Some(&b"sk-live-123"[..])
        );
        let other = Sealer::load(&dir.path().join("other.key")).unwrap();
        assert!(other.open(&sealed).is_none());
        assert_eq!(
            format!("{:?} {}", Secret::new("x"), Secret::new("x")),
            "[redacted] [redacted]"
        );
    }
}
