//! btrfs through its ioctls: subvolumes, snapshots, qgroup limits and usage.
//! Each is one kernel call (one transaction), whatever the data size.

use crate::{Error, Result, io};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const VOL_NAME_MAX: usize = 4087;

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

#[repr(C)]
#[derive(Default)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (0x94 << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0x94 << 8) | nr
}
const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0x94 << 8) | nr
}

const IOC_SNAP_DESTROY: u64 = iow(15, std::mem::size_of::<VolArgs>());
const IOC_SUBVOL_CREATE: u64 = iow(14, std::mem::size_of::<VolArgs>());
const IOC_SNAP_CREATE_V2: u64 = iow(23, std::mem::size_of::<VolArgsV2>());
const IOC_QUOTA_CTL: u64 = iowr(40, std::mem::size_of::<QuotaCtlArgs>());
const IOC_QGROUP_LIMIT: u64 = ior(43, std::mem::size_of::<QgroupLimitArgs>());
const SUBVOL_RDONLY: u64 = 1 << 1;
const QGROUP_LIMIT_MAX_RFER: u64 = 1 << 0;
const QUOTA_CTL_ENABLE: u64 = 1;
const QUOTA_CTL_ENABLE_SIMPLE: u64 = 4;
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;

fn open_dir(p: &Path) -> Result<File> {
    File::open(p).map_err(io(format!("open {p:?}")))
}

/// `req` is one of the `IOC_*` requests above, and `T` the struct that
/// request's size was built from.
fn ioctl<T>(f: &File, req: u64, arg: &mut T, what: impl FnOnce() -> String) -> Result<()> {
    // SAFETY: each call in this module passes an `IOC_*` request with the
    // argument struct it was defined for (its size is encoded in it), and
    // `f` is a directory of a btrfs filesystem, or the call fails.
    unsafe { sandstone_sys::fs::ioctl_mut(f.as_fd(), req as libc::c_ulong, arg) }
        .map_err(io(what()))?;
    Ok(())
}

fn name_bytes<const N: usize>(name: &str) -> Result<[u8; N]> {
    let c = CString::new(name).map_err(|_| Error::Io {
        what: "subvolume name".into(),
        source: std::io::Error::other("NUL in name"),
    })?;
    let b = c.as_bytes();
    if b.len() > VOL_NAME_MAX.min(N - 1) || name.contains('/') {
        return Err(io("subvolume name")(std::io::Error::other(
            "bad subvolume name",
        )));
    }
    let mut out = [0u8; N];
    out[..b.len()].copy_from_slice(b);
    Ok(out)
}

fn split(p: &Path) -> Result<(&Path, &str)> {
    let parent = p
        .parent()
        .ok_or_else(|| io("subvolume path")(std::io::Error::other("no parent")))?;
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io("subvolume path")(std::io::Error::other("no name")))?;
    Ok((parent, name))
}

/// Whether `p` is on a btrfs filesystem.
pub fn is_btrfs(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    sandstone_sys::fs::filesystem_type(&c).is_ok_and(|t| t == BTRFS_SUPER_MAGIC)
}

pub fn create_subvolume(path: &Path) -> Result<()> {
    let (parent, name) = split(path)?;
    let mut args = VolArgs {
        fd: 0,
        name: name_bytes(name)?,
    };
    ioctl(&open_dir(parent)?, IOC_SUBVOL_CREATE, &mut args, || {
        format!("create subvolume {path:?}")
    })
}

/// Snapshots subvolume `src` as `dst` (read-only when asked).
pub fn snapshot(src: &Path, dst: &Path, read_only: bool) -> Result<()> {
    let (parent, name) = split(dst)?;
    let source = open_dir(src)?;
    let mut args = VolArgsV2 {
        fd: source.as_raw_fd() as i64,
        transid: 0,
        flags: if read_only { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: name_bytes(name)?,
    };
    ioctl(&open_dir(parent)?, IOC_SNAP_CREATE_V2, &mut args, || {
        format!("snapshot {src:?} to {dst:?}")
    })
}

pub fn delete_subvolume(path: &Path) -> Result<()> {
    let (parent, name) = split(path)?;
    let mut args = VolArgs {
        fd: 0,
        name: name_bytes(name)?,
    };
    ioctl(&open_dir(parent)?, IOC_SNAP_DESTROY, &mut args, || {
        format!("delete subvolume {path:?}")
    })
}

/// Turns quotas on: simple quotas where the kernel has them (6.7+), full
/// qgroups otherwise. A filesystem with quotas already on keeps its mode.
///
/// Why simple: full qgroups find, for every extent a new snapshot shares,
/// every subvolume that shares it, inside the snapshot's transaction, so a
/// snapshot or fork costs more the bigger the source and the more copies of
/// it exist (a fork of a 10 MiB volume took 2.5 ms, of a 1 GiB one 5 ms; the
/// snapshot call alone 15 ms after a few hundred copies). Simple quotas charge each extent to the subvolume that
/// wrote it, which a snapshot does not change: O(1). What that means for a
/// cap (a copy is charged only for what it writes itself; bytes a snapshot
/// still holds stay charged to their writer) is in `docs/operations.md`.
pub fn enable_quota(path: &Path) -> Result<()> {
    let dir = open_dir(path)?;
    let mut simple = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE_SIMPLE,
        status: 0,
    };
    match ioctl(&dir, IOC_QUOTA_CTL, &mut simple, || {
        format!("enable simple quotas on {path:?}")
    }) {
        // A kernel without simple quotas calls the command unknown.
        Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {}
        done => return done,
    }
    let mut args = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE,
        status: 0,
    };
    ioctl(&dir, IOC_QUOTA_CTL, &mut args, || {
        format!("enable quota on {path:?}")
    })
}

/// Caps what the subvolume at `path` may reference (`None` lifts the cap).
pub fn set_limit(path: &Path, bytes: Option<u64>) -> Result<()> {
    let mut args = QgroupLimitArgs {
        qgroupid: 0, // the subvolume `path` itself
        lim: QgroupLimit {
            flags: QGROUP_LIMIT_MAX_RFER,
            max_rfer: bytes.unwrap_or(u64::MAX),
            ..Default::default()
        },
    };
    ioctl(&open_dir(path)?, IOC_QGROUP_LIMIT, &mut args, || {
        format!("limit {path:?}")
    })
}

#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

#[repr(C)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused_tail: [u64; 4],
}

#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; 4096 - std::mem::size_of::<SearchKey>()],
}

const IOC_TREE_SEARCH: u64 = iowr(17, std::mem::size_of::<SearchArgs>());
const IOC_INO_LOOKUP: u64 = iowr(18, std::mem::size_of::<InoLookupArgs>());
const FIRST_FREE_OBJECTID: u64 = 256;
const QUOTA_TREE_OBJECTID: u64 = 8;
const QGROUP_INFO_KEY: u32 = 242;
const SEARCH_HEADER: usize = 32;

/// Bytes the subvolume at `path` references, from its qgroup (updated at
/// each transaction commit, so up to a commit interval behind).
pub fn referenced_bytes(path: &Path) -> Result<u64> {
    let dir = open_dir(path)?;
    let mut lookup = InoLookupArgs {
        treeid: 0,
        objectid: FIRST_FREE_OBJECTID,
        name: [0; 4080],
    };
    ioctl(&dir, IOC_INO_LOOKUP, &mut lookup, || {
        format!("subvolume id of {path:?}")
    })?;
    let mut args = SearchArgs {
        key: SearchKey {
            tree_id: QUOTA_TREE_OBJECTID,
            min_objectid: 0,
            max_objectid: 0,
            min_offset: lookup.treeid,
            max_offset: lookup.treeid,
            min_transid: 0,
            max_transid: u64::MAX,
            min_type: QGROUP_INFO_KEY,
            max_type: QGROUP_INFO_KEY,
            nr_items: 1,
            unused: 0,
            unused_tail: [0; 4],
        },
        buf: [0; 4096 - std::mem::size_of::<SearchKey>()],
    };
    ioctl(&dir, IOC_TREE_SEARCH, &mut args, || {
        format!("qgroup of {path:?}")
    })?;
    if args.key.nr_items == 0 {
        return Err(io(format!("qgroup of {path:?}"))(std::io::Error::from(
            std::io::ErrorKind::NotFound,
        )));
    }
    // After the search header: generation, then referenced bytes.
    let at = SEARCH_HEADER + 8;
    Ok(u64::from_le_bytes(
        args.buf[at..at + 8].try_into().expect("8 bytes"),
    ))
}
