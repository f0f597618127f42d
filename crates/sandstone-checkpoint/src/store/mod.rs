//! Object storage: whole objects under `/`-separated keys, behind the
//! [`Blobs`] trait, with two backends: a directory ([`FileBlobs`],
//! `file:///path`) and S3 or any S3-compatible server ([`S3Blobs`],
//! `s3://bucket/prefix`).
//!
//! Every object this crate writes is at most a few MiB (a pack about
//! 8 MiB, a manifest a few MiB), so objects move as whole [`Bytes`] and a
//! put is one request: no multipart uploads. Reads may take a byte range
//! of an object (a restore reads the chunks it lacks out of packs).

mod file;
mod s3;
mod sigv4;

pub use file::FileBlobs;
pub use s3::{S3Blobs, S3Options};
pub use sigv4::Credentials;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{store}: object {key} not found")]
    NotFound { store: String, key: String },
    #[error(
        "{store}: access denied ({detail}); check the access key and secret \
         (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the bucket's policy"
    )]
    AccessDenied { store: String, detail: String },
    #[error("{store}: bucket {bucket} does not exist")]
    NoSuchBucket { store: String, bucket: String },
    #[error("{store}: cannot reach {endpoint}: {reason}")]
    Unreachable {
        store: String,
        endpoint: String,
        reason: String,
    },
    #[error("{store}: {what}: {detail}")]
    Other {
        store: String,
        what: String,
        detail: String,
    },
    #[error("object store setting {field}: {reason}")]
    Config { field: &'static str, reason: String },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A store of whole objects. Keys are `/`-separated, relative, and made of
/// `[A-Za-z0-9._-]` segments not starting with a dot; every backend
/// refuses others. A reader never sees half an object.
pub trait Blobs: Send + Sync {
    /// Where it is, for messages (`s3://bucket/prefix`, `file:///dir`).
    fn describe(&self) -> &str;
    /// Writes (or replaces) the object `key`.
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, StoreResult<()>>;
    /// The object `key`; [`StoreError::NotFound`] when there is none.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Bytes>>;
    /// Bytes `range` of the object `key` (fewer if the object ends
    /// first); [`StoreError::NotFound`] when there is none. The default
    /// reads the whole object.
    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'a, StoreResult<Bytes>> {
        Box::pin(async move {
            let all = self.get(key).await?;
            let end = (range.end.min(all.len() as u64)) as usize;
            let start = (range.start as usize).min(end);
            Ok(all.slice(start..end))
        })
    }
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<bool>>;
    /// Every key starting with `prefix`, sorted.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, StoreResult<Vec<String>>>;
    /// Every key starting with `prefix` that sorts after `after`, sorted
    /// (S3's `start-after`: the store skips the rest). The default lists
    /// all and filters.
    fn list_after<'a>(
        &'a self,
        prefix: &'a str,
        after: &'a str,
    ) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        Box::pin(async move {
            let mut keys = self.list(prefix).await?;
            keys.retain(|k| k.as_str() > after);
            Ok(keys)
        })
    }
    /// Removes `key`; removing what is not there is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<()>>;
    /// Checks that the store exists and these credentials may use it, so a
    /// wrong bucket or key is reported at start, not at the first pause.
    fn probe(&self) -> BoxFuture<'_, StoreResult<()>>;
}

/// The store a URL names: `file:///absolute/dir` or
/// `s3://bucket[/prefix]` (with `s3`'s endpoint, region and credentials).
pub fn open(url: &str, s3: S3Options) -> StoreResult<Arc<dyn Blobs>> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(StoreError::Config {
                field: "object store URL",
                reason: format!("{url:?}: a file:// URL takes an absolute path (file:///dir)"),
            });
        }
        Ok(Arc::new(FileBlobs::new(path.into())))
    } else if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        Ok(Arc::new(S3Blobs::new(bucket, prefix, s3)?))
    } else {
        Err(StoreError::Config {
            field: "object store URL",
            reason: format!("{url:?}: expected s3://bucket/prefix or file:///dir"),
        })
    }
}

/// Refuses a key that could leave its folder or be mistaken for a
/// backend's temporary file.
pub(crate) fn check_key(store: &str, key: &str) -> StoreResult<()> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if key.split('/').all(segment_ok) {
        Ok(())
    } else {
        Err(StoreError::Other {
            store: store.into(),
            what: format!("object key {key:?}"),
            detail: "not a valid key (segments of [A-Za-z0-9._-], none starting with a dot)".into(),
        })
    }
}

/// A prefix: keys' segments, possibly ending in `/` or mid-segment.
pub(crate) fn check_prefix(store: &str, prefix: &str) -> StoreResult<()> {
    match prefix.trim_end_matches('/') {
        "" => Ok(()),
        p => check_key(store, p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_keys_are_checked() {
        for bad in ["http://x", "file://relative", "s3:/x"] {
            let e = open(bad, S3Options::default()).err().expect(bad);
            assert!(e.to_string().contains("object store URL"), "{e}");
        }
        assert!(check_key("s", "chunks/ab/abcd").is_ok());
        for bad in ["", "/x", "a//b", "a/../b", "a/.tmp", "a/b c", "a/"] {
            assert!(check_key("s", bad).is_err(), "{bad}");
        }
        assert!(check_prefix("s", "").is_ok());
        assert!(check_prefix("s", "manifests/sb/").is_ok());
        assert!(check_prefix("s", "../").is_err());
    }
}
