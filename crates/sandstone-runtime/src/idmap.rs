//! Idmapped mounts: template files owned by host root appear owned by the
//! sandbox's root (and stay owned by host root on disk), so root inside can
//! manage them — install packages, edit /etc — through the overlay.

use crate::sys::{Step, cstr};
use crate::{Error, Result};
use sandstone_sys::process::{self, Cloned};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// A user namespace that maps 0..count to base..base+count, held by an fd.
/// Made by a short-lived child (a process cannot map itself this way).
pub fn userns(base: u32, count: u32) -> Result<OwnedFd> {
    let (r, w) = sandstone_sys::fd::pipe(libc::O_CLOEXEC).step(|| "pipe2".into())?;
    let (r, w) = (std::fs::File::from(r), std::fs::File::from(w));
    // SAFETY: only the spawn helper, single-threaded, makes sandboxes (see
    // `spawn`), so the child may do anything; it only waits on the pipe.
    let cloned = unsafe { process::clone_process(libc::CLONE_NEWUSER) }
        .step(|| "clone id-map namespace".into())?;
    let pid = match cloned {
        Cloned::Child => {
            drop(w);
            let mut r = r;
            let _ = r.read(&mut [0u8; 1]);
            process::exit_immediately(0);
        }
        Cloned::Parent(pid) => pid,
    };
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
    // It exits as soon as it reads the byte (or sees the pipe close).
    let _ = process::wait(pid);
    opened
}

/// Mounts `src` at `dst` through the id map of `userns`, optionally read-only.
pub fn bind(src: &Path, dst: &Path, userns: &OwnedFd, read_only: bool) -> Result<()> {
    use sandstone_sys::mount;
    let tree = mount::clone_tree(&cstr(src)?).step(|| format!("open_tree {src:?}"))?;
    mount::idmap_tree(tree.as_fd(), userns.as_fd(), read_only).step(|| format!("idmap {src:?}"))?;
    mount::attach_tree(tree.as_fd(), &cstr(dst)?)
        .step(|| format!("move idmapped {src:?} to {dst:?}"))
}
