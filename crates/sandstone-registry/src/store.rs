//! The daemon's own registry storage (`/v2/`, pushed to with the
//! credentials `POST /api/v1/registry/credentials` hands out): blobs by
//! digest, shared by every repository, manifests as blobs, and tags.
//!
//! ```text
//! <root>/blobs/sha256/<hex>              a blob (layer, config or manifest)
//! <root>/uploads/<id>                     an upload in progress
//! <root>/repositories/<name>/tags/<tag>   the manifest digest the tag names
//! <root>/repositories/<name>/types/<hex>  a manifest's media type
//! ```
//!
//! Every write lands under a temporary name and is renamed in whole, so a
//! reader sees a blob whole or not at all; a blob is kept only when its
//! bytes hash to its name.

use crate::{Error, Result, io};
use sandstone_oci::Digest;
use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest manifest accepted (as the puller reads them).
pub const MAX_MANIFEST: usize = 4 << 20;

/// What is wrong with a push, in the distribution spec's error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("NAME_INVALID: {0}")]
    NameInvalid(String),
    #[error("TAG_INVALID: {0}")]
    TagInvalid(String),
    #[error("DIGEST_INVALID: {0}")]
    DigestInvalid(String),
    #[error("BLOB_UPLOAD_UNKNOWN: upload {0}")]
    UploadUnknown(String),
    #[error("MANIFEST_INVALID: {0}")]
    ManifestInvalid(String),
    #[error("MANIFEST_BLOB_UNKNOWN: {0}")]
    ManifestBlobUnknown(String),
    #[error("SIZE_INVALID: {0}")]
    SizeInvalid(String),
}

impl PushError {
    /// The spec's code (`BLOB_UNKNOWN`, …).
    pub fn code(&self) -> &'static str {
        match self {
            PushError::NameInvalid(_) => "NAME_INVALID",
            PushError::TagInvalid(_) => "TAG_INVALID",
            PushError::DigestInvalid(_) => "DIGEST_INVALID",
            PushError::UploadUnknown(_) => "BLOB_UPLOAD_UNKNOWN",
            PushError::ManifestInvalid(_) => "MANIFEST_INVALID",
            PushError::ManifestBlobUnknown(_) => "MANIFEST_BLOB_UNKNOWN",
            PushError::SizeInvalid(_) => "SIZE_INVALID",
        }
    }
}

/// A manifest as stored: its bytes, media type and digest.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A repository name as the distribution spec has it: lowercase
/// components of `[a-z0-9]` joined by `.`, `_`, `__` or dashes, separated
/// by `/`; 255 characters at most.
pub fn check_name(name: &str) -> std::result::Result<(), PushError> {
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || b"._-".contains(x))
            && !c.contains("..")
            && !c.contains("___")
    };
    if name.is_empty() || name.len() > 255 || !name.split('/').all(component_ok) {
        return Err(PushError::NameInvalid(format!(
            "{name:?} is not a repository name (lowercase letters and digits, joined by . _ - and /)"
        )));
    }
    Ok(())
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn check_tag(tag: &str) -> std::result::Result<(), PushError> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|x| x.is_ascii_alphanumeric() || b"._-".contains(x));
    if !ok {
        return Err(PushError::TagInvalid(format!("{tag:?} is not a tag")));
    }
    Ok(())
}

fn digest_of(s: &str) -> std::result::Result<Digest, PushError> {
    s.parse()
        .map_err(|_| PushError::DigestInvalid(format!("{s:?} is not a sha256 digest")))
}

impl Store {
    pub fn open(root: &Path) -> Result<Store> {
        for d in ["blobs/sha256", "uploads", "repositories"] {
            std::fs::create_dir_all(root.join(d))
                .map_err(io(format!("create {}", root.join(d).display())))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// Where blob `digest` is (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The size of blob `digest`, if it is here.
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        std::fs::metadata(self.blob_path(digest))
            .ok()
            .map(|m| m.len())
    }

    fn upload_path(&self, id: &str) -> std::result::Result<PathBuf, PushError> {
        // Ids are ours (hex); anything else names no upload.
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PushError::UploadUnknown(id.to_string()));
        }
        Ok(self.root.join("uploads").join(id))
    }

    /// Starts an upload named `id` (hex, the caller's random choice).
    pub fn begin_upload(&self, id: &str) -> Result<()> {
        let path = self
            .upload_path(id)
            .map_err(|e| io("start an upload")(std::io::Error::other(e.to_string())))?;
        std::fs::File::create(&path).map_err(io("start an upload"))?;
        Ok(())
    }

    /// Appends `bytes` to upload `id`; its size after.
    pub fn append(&self, id: &str, bytes: &[u8]) -> std::result::Result<u64, UploadError> {
        let path = self.upload_path(id)?;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|_| PushError::UploadUnknown(id.to_string()))?;
        f.write_all(bytes).map_err(io("write an upload"))?;
        Ok(f.metadata().map_err(io("write an upload"))?.len())
    }

    /// The size of upload `id` so far.
    pub fn upload_size(&self, id: &str) -> std::result::Result<u64, PushError> {
        let path = self.upload_path(id)?;
        std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(|_| PushError::UploadUnknown(id.to_string()))
    }

    /// Drops upload `id`.
    pub fn cancel(&self, id: &str) -> std::result::Result<(), PushError> {
        let path = self.upload_path(id)?;
        std::fs::remove_file(path).map_err(|_| PushError::UploadUnknown(id.to_string()))
    }

    /// Ends upload `id` as blob `digest`, which its bytes must hash to;
    /// either way the upload is gone.
    pub fn finish(&self, id: &str, digest: &str) -> std::result::Result<Digest, UploadError> {
        let path = self.upload_path(id)?;
        let want = digest_of(digest);
        let result = (|| {
            let want = want?;
            let mut f =
                std::fs::File::open(&path).map_err(|_| PushError::UploadUnknown(id.to_string()))?;
            let mut h = Sha256::new();
            std::io::copy(&mut f, &mut h).map_err(io("read an upload"))?;
            let got = hex::encode(h.finalize());
            if got != want.hex() {
                return Err(PushError::DigestInvalid(format!(
                    "the upload's bytes are sha256:{got}, not {want}"
                ))
                .into());
            }
            std::fs::rename(&path, self.blob_path(&want)).map_err(io("keep a blob"))?;
            Ok(want)
        })();
        let _ = std::fs::remove_file(&path);
        result
    }

    /// Stores a manifest pushed as `reference` (a tag or its own digest)
    /// in repository `name`: JSON that names only blobs (or, for an index,
    /// manifests) the registry has.
    pub fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> std::result::Result<Digest, UploadError> {
        check_name(name)?;
        if bytes.len() > MAX_MANIFEST {
            return Err(PushError::SizeInvalid(format!(
                "a manifest is {MAX_MANIFEST} bytes at most"
            ))
            .into());
        }
        let digest = Digest::of(bytes);
        let tag = if reference.starts_with("sha256:") {
            if digest_of(reference)? != digest {
                return Err(PushError::DigestInvalid(format!(
                    "the manifest's bytes are {digest}, not {reference}"
                ))
                .into());
            }
            None
        } else {
            check_tag(reference)?;
            Some(reference)
        };
        let doc: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| PushError::ManifestInvalid(format!("not JSON: {e}")))?;
        let named = descriptors(&doc);
        let mut count = 0;
        for desc in named {
            count += 1;
            let d = desc.get("digest").and_then(|d| d.as_str()).ok_or_else(|| {
                PushError::ManifestInvalid("a descriptor without a digest".into())
            })?;
            let d = digest_of(d)?;
            if self.blob_size(&d).is_none() {
                return Err(PushError::ManifestBlobUnknown(format!("{d} was not pushed")).into());
            }
        }
        if count == 0 {
            return Err(
                PushError::ManifestInvalid("names no config, layers or manifests".into()).into(),
            );
        }
        let repo = self.root.join("repositories").join(name);
        for d in ["tags", "types"] {
            std::fs::create_dir_all(repo.join(d)).map_err(io("make a repository"))?;
        }
        write_whole(&self.blob_path(&digest), bytes)?;
        write_whole(
            &repo.join("types").join(digest.hex()),
            media_type.as_bytes(),
        )?;
        if let Some(tag) = tag {
            write_whole(&repo.join("tags").join(tag), digest.to_string().as_bytes())?;
        }
        Ok(digest)
    }

    /// The manifest `reference` (a tag or a digest) names in `name`.
    pub fn manifest(&self, name: &str, reference: &str) -> Option<StoredManifest> {
        check_name(name).ok()?;
        let repo = self.root.join("repositories").join(name);
        let digest: Digest = if reference.starts_with("sha256:") {
            reference.parse().ok()?
        } else {
            check_tag(reference).ok()?;
            std::fs::read_to_string(repo.join("tags").join(reference))
                .ok()?
                .trim()
                .parse()
                .ok()?
        };
        let media_type = std::fs::read_to_string(repo.join("types").join(digest.hex())).ok()?;
        let bytes = std::fs::read(self.blob_path(&digest)).ok()?;
        Some(StoredManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Writes the image `reference` names in `name` as an OCI layout in
    /// `dir` (blobs hard-linked), for a template to be made of it as of
    /// one pulled.
    pub fn export(&self, name: &str, reference: &str, dir: &Path) -> Result<Option<Digest>> {
        let Some(top) = self.manifest(name, reference) else {
            return Ok(None);
        };
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io("make a layout"))?;
        let mut pending = vec![top.digest];
        while let Some(d) = pending.pop() {
            let to = blobs.join(d.hex());
            if !to.exists() {
                std::fs::hard_link(self.blob_path(&d), &to)
                    .or_else(|_| std::fs::copy(self.blob_path(&d), &to).map(drop))
                    .map_err(io(format!("link blob {d}")))?;
            }
            // Manifests and indexes name more blobs; layers do not parse.
            let Ok(bytes) = std::fs::read(&to) else {
                continue;
            };
            if bytes.len() > MAX_MANIFEST {
                continue;
            }
            let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            for desc in descriptors(&doc) {
                if let Some(d) = desc
                    .get("digest")
                    .and_then(|d| d.as_str())
                    .and_then(|d| d.parse().ok())
                    && self.blob_size(&d).is_some()
                {
                    pending.push(d);
                }
            }
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": top.media_type, "digest": top.digest.to_string(),
                "size": top.bytes.len()}],
        });
        std::fs::write(dir.join("index.json"), index.to_string()).map_err(io("write a layout"))?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(io("write a layout"))?;
        Ok(Some(top.digest))
    }
}

/// An upload that failed: the pusher's fault, or the disk's.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Push(#[from] PushError),
    #[error(transparent)]
    Store(#[from] Error),
}

/// The descriptors a manifest (its config and layers) or an index (its
/// manifests) names.
fn descriptors(
    doc: &serde_json::Value,
) -> impl Iterator<Item = &serde_json::Map<String, serde_json::Value>> {
    let list = |key: &'static str| {
        doc[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_object())
    };
    doc["config"]
        .as_object()
        .into_iter()
        .chain(list("layers"))
        .chain(list("manifests"))
}

fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io(format!("write {}", path.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags_follow_the_spec() {
        for ok in ["a", "team/app", "a.b_c--d/e__f"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "-a", "a/", "a//b", "a/../b", "a:b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_tag("v1.2_x-y").is_ok());
        for bad in ["", ".v", "a/b", &"x".repeat(129)] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_upload_is_kept_only_under_the_digest_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.begin_upload("ab12").unwrap();
        s.append("ab12", b"hello ").unwrap();
        assert_eq!(s.append("ab12", b"world").unwrap(), 11);
        let wrong = Digest::of(b"other").to_string();
        assert!(matches!(
            s.finish("ab12", &wrong),
            Err(UploadError::Push(PushError::DigestInvalid(_)))
        ));
        assert!(s.upload_size("ab12").is_err(), "a failed upload is gone");
        s.begin_upload("cd34").unwrap();
        s.append("cd34", b"hello world").unwrap();
        let d = s
            .finish("cd34", &Digest::of(b"hello world").to_string())
            .unwrap();
        assert_eq!(s.blob_size(&d), Some(11));
        assert!(matches!(
            s.append("../x", b""),
            Err(UploadError::Push(PushError::UploadUnknown(_)))
        ));
    }

    #[test]
    fn a_manifest_must_name_pushed_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let config = Digest::of(b"{}");
        let m = serde_json::json!({"schemaVersion": 2, "config": {"digest": config.to_string(), "size": 2}, "layers": []});
        let bytes = m.to_string().into_bytes();
        let mt = "application/vnd.oci.image.manifest.v1+json";
        assert!(matches!(
            s.put_manifest("app", "v1", mt, &bytes),
            Err(UploadError::Push(PushError::ManifestBlobUnknown(_)))
        ));
        s.begin_upload("01").unwrap();
        s.append("01", b"{}").unwrap();
        s.finish("01", &config.to_string()).unwrap();
        let d = s.put_manifest("app", "v1", mt, &bytes).unwrap();
        let got = s.manifest("app", "v1").unwrap();
        assert_eq!((got.digest, got.media_type.as_str()), (d, mt));
        assert!(s.manifest("app", &d.to_string()).is_some());
        let out = tempfile::tempdir().unwrap();
        assert_eq!(s.export("app", "v1", out.path()).unwrap(), Some(d));
        assert!(out.path().join("blobs/sha256").join(config.hex()).exists());
        assert!(s.put_manifest("app", "bad tag", mt, &bytes).is_err());
        assert!(
            s.put_manifest("app", &config.to_string(), mt, &bytes)
                .is_err()
        );
    }
}
