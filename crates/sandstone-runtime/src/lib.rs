//! Linux isolation for Sandstone sandboxes.
//!
//! The daemon side ([`launch`]) runs the static `sandstone-init` binary in its
//! `spawn` mode; that short-lived helper ([`spawn`]) builds the sandbox's mount
//! and network namespaces as host root, clones PID 1 into new user, pid, mount,
//! ipc, uts and cgroup namespaces, writes the id maps and exits. PID 1 finishes
//! the rootfs ([`rootfs`]), hardens itself ([`harden`], [`seccomp`]) and serves
//! the init protocol. Resource limits live in [`cgroup`].

pub mod cgroup;
pub mod fault;
pub mod harden;
pub mod idmap;
pub mod launch;
pub mod net;
pub mod rootfs;
pub mod seccomp;
pub mod spawn;
mod sys;

pub use launch::{Launched, launch};
pub use spawn::{BindMount, SpawnSpec};

/// Errors from isolation primitives; each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step}: {source}")]
    Sys {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn sys(step: impl Into<String>, source: std::io::Error) -> Self {
        Error::Sys {
            step: step.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A pidfd for `pid` (readable once the process has ended): how the
/// daemon learns that a sandbox's init died, though it is not its child.
pub fn pidfd_open(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open returns a new descriptor (close-on-exec) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor is new and owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Closes every descriptor from `first` up: what a process inherited from
/// whatever started it (a shell's redirection, a service manager's pipe)
/// must never reach a sandbox. Call it before any thread exists.
pub fn close_descriptors_from(first: u32) -> Result<()> {
    // SAFETY: close_range touches only this process's descriptor table;
    // nothing else owns these descriptors yet.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
    sys::check(r, || format!("close descriptors from {first}"))?;
    Ok(())
}

/// Marks every descriptor from `first` up close-on-exec. For a forked
/// child about to exec (async-signal-safe): closing instead would also
/// close the pipe std reports a failed exec through.
pub fn cloexec_descriptors_from(first: u32) -> std::io::Result<()> {
    let flags = libc::CLOSE_RANGE_CLOEXEC;
    // SAFETY: a bare syscall on this process's descriptor table.
    if unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
