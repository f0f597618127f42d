//! The `host` template: a read-only view of the host's system directories.
//!
//! The lower layer is a small skeleton: the top-level directories, the host's
//! merged-/usr symlinks and a copy of the host's world-readable `/etc` files
//! (so `/etc/shadow`, private keys and other root-only files never appear).
//! `/usr` (and any non-merged `/bin`, `/lib*`, `/sbin`) is bind-mounted
//! read-only over the skeleton.

use crate::{Result, Template, io};
use sandstone_runtime::BindMount;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const DIRS: &[&str] = &[
    "usr",
    "etc",
    "proc",
    "dev",
    "sys",
    "tmp",
    "workspace",
    "root",
    "home",
    "run",
    "mnt",
    "opt",
    "srv",
    "var",
    "var/tmp",
    "var/lib",
    "var/cache",
    "var/log",
];
const SYSTEM: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];
const MARKER: &str = ".sandstone-template";

pub fn ensure(dir: &Path) -> Result<Template> {
    let rootfs = dir.join("rootfs");
    if !rootfs.join(MARKER).exists() {
        build(dir)?;
    }
    let mut binds = vec![BindMount {
        source: "/usr".into(),
        target: "/usr".into(),
        read_only: true,
        idmap: true,
    }];
    for d in SYSTEM {
        let host = Path::new("/").join(d);
        let is_real_dir = std::fs::symlink_metadata(&host)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if is_real_dir {
            binds.push(BindMount {
                source: host,
                target: format!("/{d}"),
                read_only: true,
                idmap: true,
            });
        }
    }
    Template::with_settings(
        "host",
        "read-only view of the host's system directories",
        vec![rootfs],
        binds,
        dir,
    )
}

/// Builds the skeleton in a temporary directory and renames it into place,
/// so a crash never leaves a half-built template.
fn build(dir: &Path) -> Result<()> {
    let tmp = dir.join(format!("rootfs.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for d in DIRS {
        std::fs::create_dir_all(tmp.join(d)).map_err(io(format!("create {d}")))?;
    }
    std::fs::set_permissions(tmp.join("tmp"), PermissionsExt::from_mode(0o1777))
        .map_err(io("chmod tmp"))?;
    for d in SYSTEM {
        let host = Path::new("/").join(d);
        match std::fs::read_link(&host) {
            Ok(target) => {
                std::os::unix::fs::symlink(target, tmp.join(d)).map_err(io(format!("link {d}")))?
            }
            Err(_) if host.is_dir() => {
                std::fs::create_dir_all(tmp.join(d)).map_err(io(format!("create {d}")))?
            }
            Err(_) => {}
        }
    }
    copy_public(Path::new("/etc"), &tmp.join("etc"))?;
    std::fs::write(tmp.join(MARKER), b"host\n").map_err(io("write marker"))?;
    let rootfs = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::rename(&tmp, &rootfs).map_err(io("install host template"))
}

/// Copies world-readable files, directories and symlinks only.
fn copy_public(src: &Path, dst: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(src) {
        Ok(e) => e,
        Err(_) => return Ok(()),
    };
    for e in entries.flatten() {
        let from = e.path();
        let to = dst.join(e.file_name());
        let Ok(meta) = std::fs::symlink_metadata(&from) else {
            continue;
        };
        let world_readable = meta.permissions().mode() & 0o004 != 0;
        if meta.file_type().is_symlink() {
            if let Ok(t) = std::fs::read_link(&from) {
                let _ = std::os::unix::fs::symlink(t, &to);
            }
        } else if meta.is_dir() && world_readable && meta.permissions().mode() & 0o001 != 0 {
            std::fs::create_dir_all(&to).map_err(io(format!("create {to:?}")))?;
            copy_public(&from, &to)?;
        } else if meta.is_file() && world_readable {
            std::fs::copy(&from, &to).map_err(io(format!("copy {from:?}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_public_skips_private_files() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("public"), "p").unwrap();
        std::fs::write(src.path().join("secret"), "s").unwrap();
        std::fs::set_permissions(src.path().join("secret"), PermissionsExt::from_mode(0o640))
            .unwrap();
        copy_public(src.path(), dst.path()).unwrap();
        assert!(dst.path().join("public").exists());
        assert!(!dst.path().join("secret").exists());
    }
}
