//! `file:///dir`: objects as files under a directory (local disk, or a
//! shared filesystem mounted on every node).

use super::{Blobs, StoreError, StoreResult, check_key, check_prefix};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct FileBlobs {
    root: PathBuf,
    name: String,
}

impl FileBlobs {
    pub fn new(root: PathBuf) -> FileBlobs {
        let name = format!("file://{}", root.display());
        FileBlobs { root, name }
    }

    fn io(&self, what: String) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |e| StoreError::Other {
            store: self.name.clone(),
            what,
            detail: e.to_string(),
        }
    }

    /// Runs blocking file work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
        what: String,
    ) -> StoreResult<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(self.io(what))
    }
}

/// Writes `data` to a temporary file beside `path`, flushes it to disk and
/// renames it into place: a reader sees the old object, or the new one
/// whole.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_data()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Every file under `dir` as a key (relative to `root`), skipping
/// temporary files.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        r => r?,
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

impl Blobs for FileBlobs {
    fn describe(&self) -> &str {
        &self.name
    }

    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            check_key(&self.name, key)?;
            let path = self.root.join(key);
            self.blocking(
                move || write_atomically(&path, &data),
                format!("write {key}"),
            )
            .await
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Bytes>> {
        Box::pin(async move {
            check_key(&self.name, key)?;
            match tokio::fs::read(self.root.join(key)).await {
                Ok(data) => Ok(Bytes::from(data)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound {
                    store: self.name.clone(),
                    key: key.into(),
                }),
                Err(e) => Err(self.io(format!("read {key}"))(e)),
            }
        })
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'a, StoreResult<Bytes>> {
        Box::pin(async move {
            check_key(&self.name, key)?;
            let path = self.root.join(key);
            let read = self
                .blocking(
                    move || {
                        let file = match std::fs::File::open(&path) {
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                            r => r?,
                        };
                        let mut data = vec![0; range.end.saturating_sub(range.start) as usize];
                        let mut got = 0;
                        while got < data.len() {
                            match std::os::unix::fs::FileExt::read_at(
                                &file,
                                &mut data[got..],
                                range.start + got as u64,
                            )? {
                                0 => break,
                                n => got += n,
                            }
                        }
                        data.truncate(got);
                        Ok(Some(data))
                    },
                    format!("read {key}"),
                )
                .await?;
            read.map(Bytes::from).ok_or_else(|| StoreError::NotFound {
                store: self.name.clone(),
                key: key.into(),
            })
        })
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            check_key(&self.name, key)?;
            tokio::fs::try_exists(self.root.join(key))
                .await
                .map_err(self.io(format!("stat {key}")))
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        Box::pin(async move {
            check_prefix(&self.name, prefix)?;
            // Walk only the folder the prefix names, then filter.
            let folder = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
            let (root, dir) = (self.root.clone(), self.root.join(folder));
            let mut keys = self
                .blocking(
                    move || {
                        let mut keys = Vec::new();
                        walk(&root, &dir, &mut keys)?;
                        Ok(keys)
                    },
                    format!("list {prefix}"),
                )
                .await?;
            keys.retain(|k| k.starts_with(prefix));
            keys.sort();
            Ok(keys)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            check_key(&self.name, key)?;
            match tokio::fs::remove_file(self.root.join(key)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(self.io(format!("delete {key}"))(e))
                }
                _ => Ok(()),
            }
        })
    }

    fn probe(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            match tokio::fs::metadata(&self.root).await {
                Ok(m) if m.is_dir() => Ok(()),
                _ => Err(StoreError::NoSuchBucket {
                    store: self.name.clone(),
                    bucket: self.root.display().to_string(),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileBlobs::new(dir.path().into());
        store.probe().await.unwrap();
        store
            .put("a/b/c", Bytes::from_static(b"one"))
            .await
            .unwrap();
        store
            .put("a/b/c", Bytes::from_static(b"two"))
            .await
            .unwrap();
        store.put("a/bd", Bytes::from_static(b"x")).await.unwrap();
        store.put("z", Bytes::from_static(b"y")).await.unwrap();
        assert_eq!(&store.get("a/b/c").await.unwrap()[..], b"two");
        assert_eq!(&store.get_range("a/b/c", 1..3).await.unwrap()[..], b"wo");
        assert_eq!(&store.get_range("a/b/c", 2..9).await.unwrap()[..], b"o");
        let e = store.get_range("a/nope", 0..1).await.unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
        assert!(store.exists("a/bd").await.unwrap());
        assert!(!store.exists("a/nope").await.unwrap());
        assert_eq!(store.list("a/b").await.unwrap(), ["a/b/c", "a/bd"]);
        assert_eq!(store.list("a/b/").await.unwrap(), ["a/b/c"]);
        assert_eq!(store.list("").await.unwrap(), ["a/b/c", "a/bd", "z"]);
        assert_eq!(store.list("q/").await.unwrap(), Vec::<String>::new());
        assert_eq!(store.list_after("a/", "a/b/c").await.unwrap(), ["a/bd"]);
        store.delete("a/b/c").await.unwrap();
        store.delete("a/b/c").await.unwrap();
        let e = store.get("a/b/c").await.unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
        assert!(store.put("../x", Bytes::new()).await.is_err());
        // No temporary file is left beside the objects.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a")).unwrap().collect();
        assert_eq!(names.len(), 2);
        let missing = FileBlobs::new(dir.path().join("missing"));
        let e = missing.probe().await.unwrap_err();
        assert!(matches!(e, StoreError::NoSuchBucket { .. }), "{e}");
    }
}
