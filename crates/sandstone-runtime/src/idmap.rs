//! Idmapped mounts: template files owned by host root appear owned by the
//! sandbox's root (and stay owned by host root on disk), so root inside can
//! manage them — install packages, edit /etc — through the overlay.

use crate::sys::{check, cstr};
use crate::{Error, Result};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// A user namespace that maps 0..count to base..base+count, held by an fd.
/// Made by a short-lived child (a process cannot map itself this way).
pub fn userns(base: u32, count: u32) -> Result<OwnedFd> {
    let mut fds = [0; 2];
    check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long,
        || "pipe2".into(),
    )?;
    let (r, w) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let pid = check(
        unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::CLONE_NEWUSER | libc::SIGCHLD,
                0,
                0,
                0,
                0,
            )
        },
        || "clone id-map namespace".into(),
    )? as i32;
    if pid == 0 {
        drop(w);
        let mut r = r;
        let _ = r.read(&mut [0u8; 1]);
        unsafe { libc::_exit(0) };
    }
    drop(r);
    let opened = (|| {
        let map = format!("0 {base} {count}\n");
        for f in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{f}"), &map)
                .map_err(|e| Error::sys(format!("write {f}"), e))?;
        }
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/user"))
            .map_err(|e| Error::sys("open userns", e))?;
        Ok(OwnedFd::from(ns))
    })();
    let mut w = w;
    let _ = w.write_all(b"x");
    drop(w);
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    opened
}

/// Mounts `src` at `dst` through the id map of `userns`, optionally read-only.
pub fn bind(src: &Path, dst: &Path, userns: &OwnedFd, read_only: bool) -> Result<()> {
    let src_c = cstr(src)?;
    let tree = check(
        unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                src_c.as_ptr(),
                (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint,
            )
        },
        || format!("open_tree {src:?}"),
    )?;
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    attr.attr_set = libc::MOUNT_ATTR_IDMAP
        | if read_only {
            libc::MOUNT_ATTR_RDONLY
        } else {
            0
        };
    attr.userns_fd = userns.as_raw_fd() as u64;
    check(
        unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint,
                &attr as *const libc::mount_attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        },
        || format!("idmap {src:?}"),
    )?;
    let dst_c = cstr(dst)?;
    check(
        unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                dst_c.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH as libc::c_uint,
            )
        },
        || format!("move idmapped {src:?} to {dst:?}"),
    )?;
    Ok(())
}
