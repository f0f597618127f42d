//! A sandbox's uploads directory (`config.uploads_dir`): files the API
//! hands a sandbox that nothing inside it can change. They live in the
//! volume's `uploads` directory on the host, beside `upper` and
//! `workspace` (so snapshots, forks and checkpoints carry them), and the
//! sandbox sees that directory through a read-only bind made before it is
//! hardened: its root has no `CAP_SYS_ADMIN` to remount it.
//!
//! Writes hold the sandbox's lock, so no pause (and its checkpoint) sees a
//! half-written file, and each file appears whole: written beside the
//! directory, then renamed into it.

use super::{Error, Lifecycle, Result, internal};
use axum::body::Body;
use futures_util::StreamExt;
use sandstone_api::UploadInfo;
use sandstone_db::SandboxStatus;
use sandstone_runtime::BindMount;
use sandstone_volumes::SandboxPaths;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

/// The host directory, inside the volume.
fn dir(paths: &SandboxPaths) -> PathBuf {
    paths.data.join("uploads")
}

/// Where a file is written before it is renamed into [`dir`]; emptied by
/// each upload, so a crash mid-write leaves nothing for long.
fn partial(paths: &SandboxPaths) -> PathBuf {
    paths.data.join(".uploads-partial")
}

/// The read-only bind of the uploads directory at `target`, made first
/// (on a sandbox's first start, or a volume made before it had one).
pub(super) fn bind(paths: &SandboxPaths, target: &str) -> Result<BindMount> {
    let source = dir(paths);
    std::fs::create_dir_all(&source).map_err(internal)?;
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o755)).map_err(internal)?;
    Ok(BindMount {
        source,
        target: target.to_string(),
        read_only: true,
        // Owned by the sandbox's root as it sees them, not `nobody`.
        idmap: true,
    })
}

/// 1 to 255 bytes, one path component.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || name.contains(['/', '\0'])
    {
        return Err(Error::Invalid(format!(
            "invalid path parameter `name`: {name:?} is not a file name of 1 to 255 bytes"
        )));
    }
    Ok(())
}

/// A write that ran out of room is the caller's to fix (507), not ours.
fn write_error(e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => {
            Error::NoSpace(format!("the sandbox's disk is full: {e}"))
        }
        _ => internal(e),
    }
}

impl Lifecycle {
    /// Mounts the uploads directory at `target` in the running sandbox
    /// `id`, whose init is `pid` (its config gains `uploads_dir`).
    pub(super) async fn bind_uploads(&self, id: &str, pid: i32, target: &str) -> Result<()> {
        let b = bind(&self.storage.paths(id), target)?;
        let init_bin = self.init_bin.clone();
        tokio::task::spawn_blocking(move || {
            sandstone_runtime::launch::bind_live(&init_bin, pid, std::slice::from_ref(&b))
        })
        .await
        .map_err(internal)?
        .map_err(internal)
    }

    /// The sandbox's uploads directory, once it is running with one.
    async fn uploads_of(&self, id: &str) -> Result<SandboxPaths> {
        let row = self.row(id).await?;
        if super::config_of(&row).uploads_dir.is_none() {
            return Err(Error::Conflict(format!(
                "sandbox {id} has no uploads directory: set config.uploads_dir when claiming it (or on a paused sandbox, before resuming it)"
            )));
        }
        if row.status != SandboxStatus::Running {
            return Err(Error::Conflict(format!(
                "sandbox {id} is {}; uploads change only while it runs",
                row.status
            )));
        }
        Ok(self.storage.paths(id))
    }

    /// Writes `name` (mode 0444) from `body`, replacing any file of that
    /// name; on failure the old file, if any, stays as it was.
    pub async fn upload(&self, id: &str, name: &str, body: Body) -> Result<UploadInfo> {
        check_name(name)?;
        self.check_free_space()?;
        let _guard = self.lock(id).await;
        let paths = self.uploads_of(id).await?;
        let staging = partial(&paths);
        // Only this upload runs (the lock): anything there is a leftover.
        let _ = tokio::fs::remove_dir_all(&staging).await;
        tokio::fs::create_dir(&staging).await.map_err(internal)?;
        let tmp = staging.join(name);
        let written = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(write_error)?;
            let mut size = 0u64;
            let mut stream = body.into_data_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| Error::Invalid(format!("reading the body: {e}")))?;
                file.write_all(&chunk).await.map_err(write_error)?;
                size += chunk.len() as u64;
            }
            file.sync_all().await.map_err(write_error)?;
            file.set_permissions(std::fs::Permissions::from_mode(0o444))
                .await
                .map_err(internal)?;
            tokio::fs::rename(&tmp, dir(&paths).join(name))
                .await
                .map_err(internal)?;
            Ok::<_, Error>(size)
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&staging).await;
        Ok(UploadInfo {
            name: name.to_string(),
            size: written?,
        })
    }

    /// The uploaded files, by name.
    pub async fn uploads(&self, id: &str) -> Result<Vec<UploadInfo>> {
        let paths = self.uploads_of(id).await?;
        let mut out = Vec::new();
        let mut entries = match tokio::fs::read_dir(dir(&paths)).await {
            Ok(e) => e,
            // Made at the sandbox's next start.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(internal(e)),
        };
        while let Some(e) = entries.next_entry().await.map_err(internal)? {
            let meta = e.metadata().await.map_err(internal)?;
            out.push(UploadInfo {
                name: e.file_name().to_string_lossy().into_owned(),
                size: meta.len(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes `name`; 404 when there is no such file.
    pub async fn remove_upload(&self, id: &str, name: &str) -> Result<()> {
        check_name(name)?;
        let _guard = self.lock(id).await;
        let paths = self.uploads_of(id).await?;
        match tokio::fs::remove_file(dir(&paths).join(name)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::not_found("upload", name))
            }
            Err(e) => Err(internal(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_components() {
        for bad in ["", ".", "..", "a/b", "/a", "a\0b", &"x".repeat(256)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["file_011CN", "data.csv", ".hidden", "with space"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }
}
