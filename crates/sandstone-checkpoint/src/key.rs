//! The installation's master key and the two keys derived from it.
//!
//! The master key is 32 random bytes in a file only its owner may read
//! (created 0600 when missing; refused when group or other may read it).
//! Nothing is ever keyed with it directly: BLAKE3's `derive_key` with two
//! distinct contexts gives the chunk-id key and the encryption key, so a
//! chunk id (a keyed hash of plaintext) can never help an attacker with
//! the cipher, and neither reveals the master key. None of the three ever
//! reaches a manifest, an error or a log: the types here print as
//! `[redacted]`.

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{KeyInit, OsRng};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const ID_CONTEXT: &str = "sandstone checkpoint 2026-12 chunk id";
const CIPHER_CONTEXT: &str = "sandstone checkpoint 2026-12 encryption";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("checkpoint key file {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "checkpoint key file {path:?} is open to group or others (mode {mode:o}); \
         make it 0600 (chmod 600) and consider the key leaked"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("checkpoint key file {path:?} holds {len} bytes; a key is exactly 32")]
    WrongLength { path: PathBuf, len: usize },
    #[error("the system random source failed: {0}")]
    Random(String),
}

/// `N` bytes from the system's random source.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut b = [0u8; N];
    OsRng
        .try_fill_bytes(&mut b)
        .map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(b)
}

/// The master key. Its `Debug` shows no byte of it.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        MasterKey(bytes)
    }

    /// A fresh random key (for tests and for a first start).
    pub fn generate() -> Result<MasterKey, KeyError> {
        Ok(MasterKey(random()?))
    }

    /// The key in `path`, made (0600, random) when the file is missing.
    ///
    /// The new key is written to a private temporary file and hard-linked
    /// into place, so two processes starting at once end up with the same
    /// key and neither ever reads a half-written file.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = random::<32>()?;
                let tmp = path.with_file_name(format!(
                    ".{}.new-{}",
                    path.file_name()
                        .map_or("key".into(), |n| n.to_string_lossy()),
                    hex::encode(random::<8>()?)
                ));
                let written = (|| {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.write_all(&key)?;
                    f.sync_all()?;
                    match std::fs::hard_link(&tmp, path) {
                        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
                        _ => Ok(()),
                    }
                })();
                let _ = std::fs::remove_file(&tmp);
                written.map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        }
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let len = bytes.len();
        let key: [u8; 32] = bytes.try_into().map_err(|_| KeyError::WrongLength {
            path: path.to_path_buf(),
            len,
        })?;
        Ok(MasterKey(key))
    }
}

/// What the master key is used for: naming chunks and sealing objects.
pub(crate) struct Keys {
    id_key: [u8; 32],
    pub(crate) cipher: XChaCha20Poly1305,
}

impl Keys {
    pub(crate) fn derive(master: &MasterKey) -> Keys {
        let id_key = blake3::derive_key(ID_CONTEXT, &master.0);
        let cipher_key = blake3::derive_key(CIPHER_CONTEXT, &master.0);
        Keys {
            id_key,
            cipher: XChaCha20Poly1305::new(&cipher_key.into()),
        }
    }

    /// A chunk's id: keyed BLAKE3 of its plaintext, so that ids say
    /// nothing about contents to anyone without the key (no "is this
    /// well-known file in the bucket?" test).
    pub(crate) fn chunk_id(&self, plain: &[u8]) -> crate::ChunkId {
        crate::ChunkId(*blake3::keyed_hash(&self.id_key, plain).as_bytes())
    }

    /// A short tag naming this key among others (for the local index's
    /// file name), revealing nothing of it.
    pub(crate) fn tag(&self) -> String {
        hex::encode(&blake3::keyed_hash(&self.id_key, b"index tag").as_bytes()[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.key");
        let a = MasterKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(a.0, b.0);
        assert_eq!(format!("{a:?}"), "MasterKey([redacted])");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn loose_or_short_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        MasterKey::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = MasterKey::load_or_create(&path).unwrap_err();
        assert!(matches!(e, KeyError::TooOpen { mode: 0o640, .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        let e = MasterKey::load_or_create(&path).unwrap_err();
        assert!(matches!(e, KeyError::WrongLength { len: 5, .. }), "{e}");
    }

    #[test]
    fn derived_keys_differ_and_ids_are_keyed() {
        let k1 = Keys::derive(&MasterKey::from_bytes([1; 32]));
        let k2 = Keys::derive(&MasterKey::from_bytes([2; 32]));
        assert_ne!(k1.id_key, [1; 32]);
        assert_ne!(k1.chunk_id(b"x"), k2.chunk_id(b"x"));
        assert_ne!(k1.chunk_id(b"x").0, *blake3::hash(b"x").as_bytes());
        assert_eq!(k1.chunk_id(b"x"), k1.chunk_id(b"x"));
    }
}
