//! Sandstone's system calls: the one place the workspace calls `libc`.
//!
//! Each wrapper takes typed arguments (descriptors as [`BorrowedFd`] or
//! [`OwnedFd`], paths as [`CStr`], processes as [`Pid`]) and returns
//! [`std::io::Result`], so the crates above it hold no `unsafe` for plain
//! system calls. What cannot be made safe here stays `unsafe fn` with its
//! contract spelled out ([`process::clone_process`], [`fs::ioctl_mut`]),
//! and the few raw calls that must run between fork and exec are the
//! `async-signal-safe` functions of [`process`] and [`fd`].
//!
//! Callers still name `libc`'s constants (flags, signal and errno numbers)
//! and plain-data types (seccomp's `sock_filter`), but call none of its
//! functions. It depends on nothing but `libc`: the statically linked
//! `sandstone-init` (PID 1 of every sandbox) uses it.
//!
//! [`BorrowedFd`]: std::os::fd::BorrowedFd
//! [`OwnedFd`]: std::os::fd::OwnedFd
//! [`CStr`]: std::ffi::CStr

pub mod fd;
pub mod fs;
pub mod mount;
pub mod net;
pub mod process;
pub mod security;
pub mod term;

pub use process::Pid;

use std::io;

/// `Ok(ret)` for a non-negative return, else the thread's errno.
pub(crate) fn cvt<T: Copy + PartialOrd + Default>(ret: T) -> io::Result<T> {
    if ret < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A descriptor a call returned (checked non-negative), owned from here on.
pub(crate) fn owned(ret: libc::c_long) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let fd = cvt(ret)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor of this
    // process; nothing else holds it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
