//! The file-system calls std lacks: extended attributes, device nodes,
//! data extents (SEEK_DATA/SEEK_HOLE) and times of symlinks.
//!
//! They go through `rustix`'s safe wrappers (already in the workspace's
//! tree) rather than `sandstone-sys`, which this crate leaves untouched;
//! none needs `unsafe`.

use crate::manifest::{OsBytes, Timestamp, Xattr};
use rustix::fs::{AtFlags, CWD, FileType, Mode, SeekFrom, Timespec, Timestamps, XattrFlags};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Whether a checkpoint keeps the attribute `name`: every `trusted.*`
/// (overlayfs's `trusted.overlay.*` among them) and `user.*`, file
/// capabilities (`security.capability`: `ping` and the like lose their
/// privileges without it) and POSIX ACLs. Other `security.*` attributes
/// (SELinux labels, IMA) belong to the host that wrote them.
fn kept(name: &[u8]) -> bool {
    name.starts_with(b"trusted.")
        || name.starts_with(b"user.")
        || name == b"security.capability"
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// Calls `f` with a buffer doubled until what it reads fits (ERANGE).
/// (The size query with an empty buffer does not survive rustix's
/// wrapper, which reports 0.) Names and values are at most 64 KiB.
fn read_sized(mut f: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    loop {
        match f(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) if buf.len() < 1 << 20 => {
                buf.resize(buf.len() * 2, 0);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The kept extended attributes of `path` (not following a symlink),
/// sorted by name.
pub(crate) fn xattrs(path: &Path) -> io::Result<Vec<Xattr>> {
    let names = match read_sized(|buf| rustix::fs::llistxattr(path, buf)) {
        // A file system without xattrs has none to keep.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => {
            return Ok(Vec::new());
        }
        r => r?,
    };
    let mut out = Vec::new();
    for name in names
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty() && kept(n))
    {
        let name_os = std::ffi::OsStr::from_bytes(name);
        let value = match read_sized(|buf| rustix::fs::lgetxattr(path, name_os, buf)) {
            // Removed since it was listed.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NODATA.raw_os_error()) => {
                continue;
            }
            r => r?,
        };
        out.push(Xattr {
            name: OsBytes(name.to_vec()),
            value,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub(crate) fn set_xattr(path: &Path, xattr: &Xattr) -> io::Result<()> {
    let name = std::ffi::OsStr::from_bytes(&xattr.name.0);
    rustix::fs::lsetxattr(path, name, &xattr.value, XattrFlags::empty())?;
    Ok(())
}

pub(crate) fn remove_xattr(path: &Path, name: &OsBytes) -> io::Result<()> {
    rustix::fs::lremovexattr(path, std::ffi::OsStr::from_bytes(&name.0))?;
    Ok(())
}

/// Makes `len` bytes at `offset` of `file` a hole (its size unchanged);
/// where the file system cannot punch holes, writes zeros there instead:
/// the same contents, only not sparse.
pub(crate) fn punch_hole(file: &std::fs::File, offset: u64, len: u64) -> io::Result<()> {
    use rustix::fs::FallocateFlags;
    match rustix::fs::fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    ) {
        Err(rustix::io::Errno::OPNOTSUPP) => {
            let zeros = vec![0u8; len.min(1 << 20) as usize];
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(zeros.len() as u64) as usize;
                std::os::unix::fs::FileExt::write_all_at(file, &zeros[..n], at)?;
                at += n as u64;
            }
            Ok(())
        }
        r => Ok(r?),
    }
}

/// The kinds of inode `mknod` makes here.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Node {
    Char,
    Block,
    Fifo,
    Socket,
}

pub(crate) fn mknod(path: &Path, node: Node, mode: u32, rdev: u64) -> io::Result<()> {
    let file_type = match node {
        Node::Char => FileType::CharacterDevice,
        Node::Block => FileType::BlockDevice,
        Node::Fifo => FileType::Fifo,
        Node::Socket => FileType::Socket,
    };
    rustix::fs::mknodat(CWD, path, file_type, Mode::from_raw_mode(mode), rdev)?;
    Ok(())
}

/// The data extents `(offset, length)` of a regular file of `size` bytes:
/// holes are skipped. A file system that cannot tell (no SEEK_DATA) gives
/// one extent, the whole file.
pub(crate) fn data_extents(file: &std::fs::File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut extents = Vec::new();
    let mut at = 0;
    while at < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(at)) {
            Ok(start) => start,
            // No data past `at`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) if at == 0 => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))?.min(size);
        extents.push((start, end - start));
        at = end;
    }
    Ok(extents)
}

/// Sets the access and modification times of `path`, not following a
/// symlink.
pub(crate) fn set_times(path: &Path, atime: Timestamp, mtime: Timestamp) -> io::Result<()> {
    let spec = |t: Timestamp| Timespec {
        tv_sec: t.secs,
        tv_nsec: t.nanos.into(),
    };
    let times = Timestamps {
        last_access: spec(atime),
        last_modification: spec(mtime),
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    #[test]
    fn extents_skip_holes() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = std::fs::File::create(dir.path().join("sparse")).unwrap();
        f.seek(io::SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[1; 4096]).unwrap();
        f.set_len(4 << 20).unwrap();
        let extents = data_extents(&f, 4 << 20).unwrap();
        assert_eq!(extents, [(1 << 20, 4096)]);
        let empty = std::fs::File::create(dir.path().join("empty")).unwrap();
        assert_eq!(data_extents(&empty, 0).unwrap(), []);
    }

    #[test]
    fn user_xattrs_are_read_and_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"").unwrap();
        let x = Xattr {
            name: OsBytes(b"user.test".to_vec()),
            value: vec![0, 1, 2, 255],
        };
        set_xattr(&p, &x).unwrap();
        assert_eq!(xattrs(&p).unwrap(), std::slice::from_ref(&x));
        // Larger than the first buffer: read whole after growing it.
        let big = Xattr {
            name: OsBytes(b"user.big".to_vec()),
            value: (0..3000u32).map(|i| i as u8).collect(),
        };
        set_xattr(&p, &big).unwrap();
        assert_eq!(xattrs(&p).unwrap(), [big, x]);
        assert!(kept(b"trusted.overlay.opaque") && !kept(b"security.selinux"));
    }
}
