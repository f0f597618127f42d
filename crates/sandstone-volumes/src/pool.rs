//! The storage pool: where sandboxes' durable directories and snapshots live.
//!
//! `btrfs`: each sandbox is a subvolume with a qgroup cap; snapshot, fork and
//! restore are O(1) subvolume snapshots. The pool is the data directory's own
//! filesystem when that is btrfs, else a sparse loop-mounted image that
//! `sandstone setup` creates and the daemon re-attaches after a reboot.
//! `dir`: plain directories and recursive copies (`cp -a`, which keeps the
//! overlay's whiteouts and xattrs); no caps.
//!
//! Either way the volumes are mounted `nosuid,nodev`: layers are stored
//! unshifted, so a setuid file or a device node made inside a sandbox is
//! host root's on disk, and the host must never honour it.

use crate::{Result, btrfs, io};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Btrfs,
    Dir,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Btrfs => "btrfs",
            Driver::Dir => "dir",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub driver: Driver,
    /// Holds `sandboxes/` and `snapshots/`.
    pub root: PathBuf,
}

const IMAGE: &str = "pool.img";
const MOUNT: &str = "pool";

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(io(format!("run {what}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(io(what.to_string())(std::io::Error::other(msg)));
    }
    Ok(())
}

fn statvfs(p: &Path) -> Result<sandstone_sys::fs::FsStats> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io(format!("statvfs {p:?}"))(std::io::Error::other("NUL in path")))?;
    sandstone_sys::fs::statvfs(&c).map_err(io(format!("statvfs {p:?}")))
}

/// Makes the mount at `p` refuse setuid bits and device nodes, binding `p`
/// onto itself first when `bind` (a directory on the host's filesystem,
/// not a mount of ours). Nothing to do when it already does, so a restart
/// changes nothing and a reboot's lost mount is made again.
fn nosuid_nodev(p: &Path, bind: bool) -> Result<()> {
    let flags = statvfs(p)?.flags;
    if flags & libc::ST_NOSUID != 0 && flags & libc::ST_NODEV != 0 {
        return Ok(());
    }
    if bind {
        run(
            Command::new("mount").arg("--bind").arg(p).arg(p),
            "bind the pool onto itself",
        )?;
    }
    run(
        Command::new("mount")
            .args(["-o", "remount,bind,nosuid,nodev"])
            .arg(p),
        "remount the pool nosuid,nodev",
    )
}

/// Size and free space of the filesystem holding the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    /// Bytes unprivileged writers can still use.
    pub free: u64,
}

impl Space {
    /// Kept free for btrfs's own metadata and for the other sandboxes:
    /// below it new sandboxes, resumes and API writes are refused (507)
    /// while writes still succeed.
    pub fn reserve(&self) -> u64 {
        (self.total / 32).max(256 << 20)
    }

    /// The largest disk cap: one sandbox filled to it leaves the others
    /// more than the reserve (btrfs keeps up to a tenth of a small pool
    /// for metadata).
    pub fn max_cap(&self) -> u64 {
        self.total / 4 * 3
    }
}

fn is_mountpoint(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(p), p.parent().map(std::fs::metadata)) {
        (Ok(m), Some(Ok(parent))) => m.dev() != parent.dev(),
        _ => false,
    }
}

impl Pool {
    /// Opens the pool of `data_dir`, mounting its image when needed.
    pub fn open(data_dir: &Path, driver: Option<Driver>) -> Result<Pool> {
        let image = data_dir.join(IMAGE);
        let mount = data_dir.join(MOUNT);
        let pool = match driver {
            Some(Driver::Dir) => Pool {
                driver: Driver::Dir,
                root: data_dir.to_path_buf(),
            },
            _ if btrfs::is_btrfs(data_dir) => Pool {
                driver: Driver::Btrfs,
                root: data_dir.to_path_buf(),
            },
            _ if image.exists() => {
                if !is_mountpoint(&mount) {
                    std::fs::create_dir_all(&mount).map_err(io("create pool mount point"))?;
                    run(
                        Command::new("mount")
                            .args(["-o", "loop,nosuid,nodev"])
                            .arg(&image)
                            .arg(&mount),
                        "mount pool image",
                    )?;
                }
                // Mounted by hand or by an older version: fix its options.
                nosuid_nodev(&mount, false)?;
                // mkfs makes the root 0755; it is the data dir's, and as private.
                std::fs::set_permissions(
                    &mount,
                    std::os::unix::fs::PermissionsExt::from_mode(0o700),
                )
                .map_err(io("chmod the pool"))?;
                Pool {
                    driver: Driver::Btrfs,
                    root: mount,
                }
            }
            Some(Driver::Btrfs) => {
                return Err(io("btrfs pool")(std::io::Error::other(
                    "no btrfs pool: run `sandstone setup` to create one",
                )));
            }
            None => Pool {
                driver: Driver::Dir,
                root: data_dir.to_path_buf(),
            },
        };
        for d in [
            "sandboxes",
            "snapshots",
            "captures",
            "volumes",
            "volume-snapshots",
        ] {
            let dir = pool.root.join(d);
            std::fs::create_dir_all(&dir).map_err(io(format!("create {d}")))?;
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(io(format!("chmod {d}")))?;
            if pool.root == data_dir {
                nosuid_nodev(&dir, true)?;
            }
        }
        Ok(pool)
    }

    /// Creates the btrfs pool for `data_dir` (a sparse image of `size` bytes
    /// unless the data dir is already on btrfs) with quotas on. Idempotent.
    pub fn create(data_dir: &Path, size: u64) -> Result<Pool> {
        if btrfs::is_btrfs(data_dir) {
            btrfs::enable_quota(data_dir)?;
            return Pool::open(data_dir, Some(Driver::Btrfs));
        }
        let image = data_dir.join(IMAGE);
        if !image.exists() {
            let tmp = data_dir.join(format!("{IMAGE}.tmp"));
            // Every sandbox's files are in it: host root's alone from the start.
            let f = std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true),
                0o600,
            )
            .open(&tmp)
            .map_err(io("create pool image"))?;
            f.set_len(size).map_err(io("size pool image"))?;
            drop(f);
            run(
                Command::new("mkfs.btrfs").arg("-q").arg("-f").arg(&tmp),
                "mkfs.btrfs (apt-get install btrfs-progs)",
            )?;
            std::fs::rename(&tmp, &image).map_err(io("install pool image"))?;
        }
        let pool = Pool::open(data_dir, Some(Driver::Btrfs))?;
        btrfs::enable_quota(&pool.root)?;
        Ok(pool)
    }

    /// Room on the pool's filesystem.
    pub fn space(&self) -> Result<Space> {
        let st = statvfs(&self.root)?;
        Ok(Space {
            total: st.total_bytes,
            free: st.available_bytes,
        })
    }

    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.root.join("sandboxes").join(id)
    }

    pub fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.root.join("snapshots").join(id)
    }

    /// A sandbox volume (`/api/v1/sandboxvolumes`): its files at its root.
    pub fn user_volume_dir(&self, id: &str) -> PathBuf {
        self.root.join("volumes").join(id)
    }

    /// A read-only snapshot of a sandbox volume.
    pub fn user_volume_snapshot_dir(&self, id: &str) -> PathBuf {
        self.root.join("volume-snapshots").join(id)
    }

    /// The read-only volume a template made from a sandbox keeps.
    pub fn capture_dir(&self, id: &str) -> PathBuf {
        self.root.join("captures").join(id)
    }

    /// A new, empty volume at `path` (capped at `limit` bytes where possible).
    pub fn create_volume(&self, path: &Path, limit: Option<u64>) -> Result<()> {
        match self.driver {
            Driver::Btrfs => {
                btrfs::create_subvolume(path)?;
                if let Err(e) = btrfs::set_limit(path, limit) {
                    let _ = btrfs::delete_subvolume(path);
                    return Err(e);
                }
                Ok(())
            }
            Driver::Dir => std::fs::create_dir(path).map_err(io(format!("create {path:?}"))),
        }
    }

    /// Bytes a volume uses: its qgroup on btrfs (O(1)), a bounded walk of
    /// allocated blocks otherwise.
    pub fn usage(&self, path: &Path) -> u64 {
        if self.driver == Driver::Btrfs
            && let Ok(b) = btrfs::referenced_bytes(path)
        {
            return b;
        }
        fn walk(p: &Path, budget: &mut u32) -> u64 {
            use std::os::unix::fs::MetadataExt;
            let Ok(m) = std::fs::symlink_metadata(p) else {
                return 0;
            };
            let mut total = m.blocks() * 512;
            if m.is_dir() {
                for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                    if *budget == 0 {
                        break;
                    }
                    *budget -= 1;
                    total += walk(&e.path(), budget);
                }
            }
            total
        }
        walk(path, &mut 200_000)
    }

    /// Changes a volume's cap (no-op with the `dir` driver).
    pub fn set_limit(&self, path: &Path, limit: Option<u64>) -> Result<()> {
        match self.driver {
            Driver::Btrfs => btrfs::set_limit(path, limit),
            Driver::Dir => Ok(()),
        }
    }

    /// A copy of volume `src` at `dst`: O(1) and copy-on-write on btrfs.
    pub fn copy_volume(
        &self,
        src: &Path,
        dst: &Path,
        read_only: bool,
        limit: Option<u64>,
    ) -> Result<()> {
        match self.driver {
            Driver::Btrfs => {
                btrfs::snapshot(src, dst, read_only)?;
                if !read_only && let Err(e) = btrfs::set_limit(dst, limit) {
                    let _ = btrfs::delete_subvolume(dst);
                    return Err(e);
                }
                Ok(())
            }
            Driver::Dir => {
                let done = run(
                    Command::new("cp").arg("-a").arg(src).arg(dst),
                    "copy volume",
                );
                if done.is_err() {
                    let _ = std::fs::remove_dir_all(dst);
                }
                done
            }
        }
    }

    /// Removes a volume. Idempotent.
    pub fn remove_volume(&self, path: &Path) -> Result<()> {
        if !path.exists() {
            return Ok(());
        }
        if self.driver == Driver::Btrfs && btrfs::delete_subvolume(path).is_ok() {
            return Ok(());
        }
        std::fs::remove_dir_all(path).map_err(io(format!("remove {path:?}")))
    }

    /// Names of the volumes under `sandboxes/` or `snapshots/`.
    pub fn volumes(&self, kind: &str) -> Vec<String> {
        std::fs::read_dir(self.root.join(kind))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}
