//! Filesystems: statfs, statvfs, inotify, ioctls, FIFOs.

use crate::{cvt, owned};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// The filesystem type (`f_type`, a magic number) of the one `path` is on.
pub fn filesystem_type(path: &CStr) -> io::Result<i64> {
    // SAFETY: statfs is plain data for which all zeroes is a value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` a live statfs, both
    // outliving the call.
    cvt(unsafe { libc::statfs(path.as_ptr(), &mut st) })?;
    Ok(st.f_type as i64)
}

/// `FS_NOCOW_FL` (linux/fs.h): files made in a directory with it are
/// written in place, without copy-on-write or data checksums (btrfs).
const FS_NOCOW_FL: libc::c_int = 0x0080_0000;

/// Marks directory `dir` so the files made in it are written in place: for
/// append-only data whose checksumming would cost more than it protects.
/// Filesystems without the flag answer `ENOTTY` or `EOPNOTSUPP`.
pub fn set_nocow(dir: BorrowedFd<'_>) -> io::Result<()> {
    let mut flags: libc::c_int = 0;
    // SAFETY: the ioctl writes one int to `flags`, which outlives the call.
    cvt(unsafe { libc::ioctl(dir.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) })?;
    flags |= FS_NOCOW_FL;
    // SAFETY: the ioctl reads one int from `flags`, which outlives the call.
    cvt(unsafe { libc::ioctl(dir.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) })?;
    Ok(())
}

/// What statvfs(2) says of a mounted filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Mount flags: `ST_NOSUID`, `ST_NODEV`, ...
    pub flags: libc::c_ulong,
    pub total_bytes: u64,
    /// Free to an unprivileged user.
    pub available_bytes: u64,
}

/// The filesystem `path` is on.
pub fn statvfs(path: &CStr) -> io::Result<FsStats> {
    // SAFETY: statvfs is plain data for which all zeroes is a value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` a live statvfs, both
    // outliving the call.
    cvt(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    Ok(FsStats {
        flags: st.f_flag,
        total_bytes: st.f_blocks * st.f_frsize,
        available_bytes: st.f_bavail * st.f_frsize,
    })
}

/// An ioctl whose argument is a pointer to a `T` the kernel reads and
/// writes.
///
/// # Safety
/// `request` must be one whose argument is a pointer to exactly a `T` (its
/// size encoded in the request, where it is), valid for `fd`'s kind of
/// file; the kernel writes through it.
pub unsafe fn ioctl_mut<T>(
    fd: BorrowedFd<'_>,
    request: libc::c_ulong,
    arg: &mut T,
) -> io::Result<libc::c_int> {
    // SAFETY: `arg` is live and exclusively borrowed for the call, and the
    // caller guarantees `request` reads and writes exactly one `T`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), request, arg as *mut T) })
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    cvt(unsafe { libc::mkfifo(path.as_ptr(), mode) })?;
    Ok(())
}

/// `struct open_how` of openat2(2) (libc's is `non_exhaustive`).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `path` (relative) beneath `dir` as an `O_PATH` descriptor
/// (nothing is read): resolution that would leave `dir` (`..` above it,
/// an absolute path or symlink) fails with `EXDEV`, and no magic link of
/// /proc is followed. `follow`: whether a symlink in the last component
/// is followed (still beneath `dir`) or opened itself.
pub fn open_beneath(dir: BorrowedFd<'_>, path: &CStr, follow: bool) -> io::Result<OwnedFd> {
    let mut flags = libc::O_PATH | libc::O_CLOEXEC;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `path` is NUL-terminated and `how` a live `open_how` of the
    // size passed; both outlive the call, which reads them only.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    owned(fd)
}

/// A close-on-exec inotify instance.
pub fn inotify_init() -> io::Result<OwnedFd> {
    // SAFETY: inotify_init1 takes no pointers; the result is checked and
    // owned.
    owned(unsafe { libc::inotify_init1(libc::IN_CLOEXEC) }.into())
}

/// Watches `path` for the events in `mask`; the watch descriptor.
pub fn inotify_add_watch(inotify: BorrowedFd<'_>, path: &CStr, mask: u32) -> io::Result<i32> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    cvt(unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), path.as_ptr(), mask) })
}

/// Removes watch `wd` from an inotify instance.
pub fn inotify_rm_watch(inotify: BorrowedFd<'_>, wd: i32) -> io::Result<()> {
    // SAFETY: inotify_rm_watch takes no pointers.
    cvt(unsafe { libc::inotify_rm_watch(inotify.as_raw_fd(), wd) })?;
    Ok(())
}

/// One inotify event, borrowed from the buffer it was read into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InotifyEvent<'a> {
    /// The watch descriptor it is about.
    pub wd: i32,
    pub mask: u32,
    /// The entry's name in the watched directory (empty for the watched
    /// path itself), without its NUL padding.
    pub name: &'a [u8],
}

/// The events in `buf` (as read from an inotify descriptor), parsed
/// without assuming the buffer is aligned; a truncated tail is ignored.
pub fn inotify_events(buf: &[u8]) -> impl Iterator<Item = InotifyEvent<'_>> {
    // struct inotify_event: wd (i32), mask, cookie, len (u32), name[len].
    const HEADER: usize = 16;
    let mut rest = buf;
    std::iter::from_fn(move || {
        let word = |at: usize| -> Option<[u8; 4]> { rest.get(at..at + 4)?.try_into().ok() };
        let wd = i32::from_ne_bytes(word(0)?);
        let mask = u32::from_ne_bytes(word(4)?);
        let len = u32::from_ne_bytes(word(12)?) as usize;
        let name = rest.get(HEADER..HEADER + len)?;
        rest = &rest[HEADER + len..];
        let name = name.split(|b| *b == 0).next().unwrap_or_default();
        Some(InotifyEvent { wd, mask, name })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn nothing_beneath_a_directory_leads_out_of_it() {
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../..", dir.path().join("a/up")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("in")).unwrap();
        let root = std::fs::File::open(dir.path()).unwrap();
        let open = |p: &str, follow| {
            open_beneath(root.as_fd(), &std::ffi::CString::new(p).unwrap(), follow)
        };
        let exdev =
            |r: io::Result<OwnedFd>| r.err().and_then(|e| e.raw_os_error()) == Some(libc::EXDEV);
        assert!(open("a", true).is_ok());
        assert!(open("in/../a", true).is_ok());
        assert!(exdev(open("..", true)));
        assert!(exdev(open("a/../../x", true)));
        assert!(exdev(open("/etc", true)));
        assert!(exdev(open("abs", true)));
        assert!(exdev(open("a/up/x", true)));
        // The link itself, not what it names.
        assert!(open("abs", false).is_ok());
        let missing = open("a/missing", true).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn inotify_reports_a_created_file() {
        let dir = std::env::temp_dir().join(format!("sandstone-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
        let fd = inotify_init().expect("inotify");
        use std::os::fd::AsFd;
        let wd = inotify_add_watch(fd.as_fd(), &c, libc::IN_CREATE).expect("watch");
        std::fs::write(dir.join("a-file"), b"x").expect("create");
        let mut buf = [0u8; 4096];
        let n = std::fs::File::from(fd).read(&mut buf).expect("read");
        let events: Vec<_> = inotify_events(&buf[..n]).collect();
        assert_eq!(events[0].wd, wd);
        assert_ne!(events[0].mask & libc::IN_CREATE, 0);
        assert_eq!(events[0].name, b"a-file");
        std::fs::remove_dir_all(&dir).expect("clean up");
        // A cut-short buffer yields what is whole and stops.
        assert_eq!(inotify_events(&buf[..n - 1]).count(), events.len() - 1);
        assert!(statvfs(c"/").expect("statvfs").total_bytes > 0);
        assert!(filesystem_type(c"/").is_ok());
    }
}
