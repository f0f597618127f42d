//! Mounts: the classic mount(2) family and the new mount API (open_tree,
//! mount_setattr, move_mount) that idmapped mounts need.

use crate::{cvt, owned};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

fn ptr(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(std::ptr::null(), CStr::as_ptr)
}

/// mount(2). `None` arguments are passed as null (no source, no type, no
/// data), as bind mounts and remounts want.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    // SAFETY: every pointer is null or a NUL-terminated string that
    // outlives the call; the kernel copies what it keeps.
    cvt(unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    })?;
    Ok(())
}

/// Detaches the mount at `target` lazily (MNT_DETACH).
pub fn detach(target: &CStr) -> io::Result<()> {
    // SAFETY: `target` is NUL-terminated and outlives the call.
    cvt(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })?;
    Ok(())
}

/// pivot_root(2): `new_root` becomes the root, the old one is stacked at
/// `put_old`.
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: both are NUL-terminated strings that outlive the call.
    cvt(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })?;
    Ok(())
}

/// A detached copy of the mount tree at `path` (open_tree with
/// `OPEN_TREE_CLONE`), close-on-exec, to configure before attaching it.
pub fn clone_tree(path: &CStr) -> io::Result<OwnedFd> {
    let flags = (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint;
    // SAFETY: `path` is NUL-terminated and outlives the call; the result
    // is a new descriptor, checked and owned by `owned`.
    owned(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) })
}

/// Shows the detached tree `tree` through the id map of the user namespace
/// `userns` (MOUNT_ATTR_IDMAP), read-only if asked.
pub fn idmap_tree(tree: BorrowedFd<'_>, userns: BorrowedFd<'_>, read_only: bool) -> io::Result<()> {
    // SAFETY: mount_attr is plain data for which all zeroes is a value.
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    attr.attr_set = libc::MOUNT_ATTR_IDMAP
        | if read_only {
            libc::MOUNT_ATTR_RDONLY
        } else {
            0
        };
    attr.userns_fd = userns.as_raw_fd() as u64;
    // SAFETY: the empty path is NUL-terminated; `attr` is a live
    // mount_attr of the size given, which the kernel only reads.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })?;
    Ok(())
}

/// Attaches the detached tree `tree` at `target` (move_mount).
pub fn attach_tree(tree: BorrowedFd<'_>, target: &CStr) -> io::Result<()> {
    // SAFETY: both paths are NUL-terminated and outlive the call.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH as libc::c_uint,
        )
    })?;
    Ok(())
}
