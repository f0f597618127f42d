//! Descriptors: pipes, eventfds, flags, polling, and closing what a process
//! inherited.

use crate::{cvt, owned};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A pipe `(read end, write end)`; `flags` as for pipe2(2) (`O_CLOEXEC`,
/// `O_NONBLOCK`).
pub fn pipe(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the live two-int array.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) })?;
    // SAFETY: both descriptors were just made by pipe2 and are owned by
    // nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec, non-blocking eventfd with a zero counter.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; the result is checked and owned.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) }.into())
}

/// Adds one to an eventfd's counter.
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: an 8-byte write from a live buffer of 8 bytes.
    cvt(unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) })?;
    Ok(())
}

/// Reads (and so resets) an eventfd's counter.
pub fn eventfd_clear(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut count = [0u8; 8];
    // SAFETY: an 8-byte read into a live local buffer of 8 bytes.
    cvt(unsafe { libc::read(fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) })?;
    Ok(u64::from_ne_bytes(count))
}

/// An anonymous in-memory file (memfd), close-on-exec.
pub fn memfd(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and outlives the call; the result is
    // checked and owned.
    owned(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) }.into())
}

/// Clears close-on-exec, so the descriptor survives an exec under its
/// number.
pub fn set_inheritable(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_SETFD takes an int argument and touches no memory.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) })?;
    Ok(())
}

/// Sets close-on-exec.
pub fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_SETFD takes an int argument and touches no memory.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(())
}

/// Sets `O_NONBLOCK` on the descriptor (its open file description).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL takes no argument and touches no memory.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: F_SETFL takes an int argument and touches no memory.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// Asks for a pipe buffer of `bytes` (F_SETPIPE_SZ); the kernel may refuse.
pub fn set_pipe_size(fd: BorrowedFd<'_>, bytes: libc::c_int) -> io::Result<()> {
    // SAFETY: F_SETPIPE_SZ takes an int argument and touches no memory.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) })?;
    Ok(())
}

/// Closes every descriptor from `first` up. Only for a process that owns
/// none of them through a Rust object yet (at start, before any thread).
pub fn close_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range touches only this process's descriptor table; the
    // caller holds no owned object for these descriptors.
    cvt(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) })?;
    Ok(())
}

/// Marks every descriptor from `first` up close-on-exec. Async-signal-safe:
/// for a forked child about to exec (closing instead would also close the
/// pipe std reports a failed exec through).
pub fn cloexec_from(first: u32) -> io::Result<()> {
    let flags = libc::CLOSE_RANGE_CLOEXEC;
    // SAFETY: a bare system call on this process's descriptor table that
    // closes nothing.
    cvt(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, flags) })?;
    Ok(())
}

/// Makes `to` a copy of `from` (dup2). Async-signal-safe: for a child
/// between fork and exec placing descriptors at fixed numbers.
pub fn dup_to(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 touches only the descriptor table; whatever `to` held is
    // replaced, which is what the caller asks for.
    cvt(unsafe { libc::dup2(from, to) })?;
    Ok(())
}

/// Opens `path` read-only as descriptor number `fd`, inheritable (not
/// close-on-exec). Async-signal-safe: for a child between fork and exec.
pub fn open_read_only_as(path: &CStr, fd: RawFd) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    let opened = cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) })?;
    if opened != fd {
        dup_to(opened, fd)?;
        // SAFETY: `opened` is the descriptor just made here, owned by
        // nothing else; `fd` now holds its copy.
        unsafe { libc::close(opened) };
    }
    Ok(())
}

/// Points standard input, output and error at the given descriptors.
pub fn redirect_stdio(
    stdin: BorrowedFd<'_>,
    stdout: BorrowedFd<'_>,
    stderr: BorrowedFd<'_>,
) -> io::Result<()> {
    for (from, to) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
        dup_to(from.as_raw_fd(), to)?;
    }
    Ok(())
}

/// One descriptor to wait on in [`poll`]: `struct pollfd`, laid out as the
/// kernel reads it. It holds the descriptor's number, not a borrow (a
/// caller reads the descriptors it polled while the set is still in use);
/// one closed meanwhile is reported ready (POLLNVAL), never misread.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct PollFd(libc::pollfd);

impl PollFd {
    /// Waits for `fd` to be readable; `None` is a slot poll skips.
    pub fn readable(fd: Option<BorrowedFd<'_>>) -> PollFd {
        Self::new(fd, libc::POLLIN)
    }

    /// Waits for `fd` to be readable or its peer to hang up.
    pub fn readable_or_hangup(fd: BorrowedFd<'_>) -> PollFd {
        Self::new(Some(fd), libc::POLLIN | libc::POLLRDHUP)
    }

    fn new(fd: Option<BorrowedFd<'_>>, events: libc::c_short) -> PollFd {
        PollFd(libc::pollfd {
            fd: fd.map_or(-1, |f| f.as_raw_fd()),
            events,
            revents: 0,
        })
    }

    /// Whether [`poll`] reported anything for it.
    pub fn is_ready(&self) -> bool {
        self.0.revents != 0
    }
}

/// Waits until one of `fds` is ready or `timeout` passes (`None`: no
/// limit); the number of ready descriptors.
pub fn poll(fds: &mut [PollFd], timeout: Option<Duration>) -> io::Result<usize> {
    let timeout = timeout.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as libc::c_int);
    // SAFETY: PollFd is a transparent pollfd, and `fds` is a live,
    // exclusively borrowed array of `len` of them for the call.
    let n = cvt(unsafe {
        libc::poll(
            fds.as_mut_ptr().cast::<libc::pollfd>(),
            fds.len() as libc::nfds_t,
            timeout,
        )
    })?;
    Ok(n as usize)
}

/// Moves up to `len` bytes between two descriptors inside the kernel, one
/// of them a pipe, without blocking (splice with `SPLICE_F_MOVE |
/// SPLICE_F_NONBLOCK`).
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: null offsets (use the descriptors' own positions); no memory
    // of ours is touched.
    let n = cvt(unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            flags,
        )
    })?;
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn pipe_carries_bytes_and_poll_sees_them() {
        let (r, w) = pipe(libc::O_CLOEXEC).expect("pipe");
        let mut fds = [PollFd::readable(Some(r.as_fd())), PollFd::readable(None)];
        assert_eq!(poll(&mut fds, Some(Duration::ZERO)).expect("poll"), 0);
        std::fs::File::from(w).write_all(b"x").expect("write");
        assert_eq!(poll(&mut fds, None).expect("poll"), 1);
        assert!(fds[0].is_ready() && !fds[1].is_ready());
        let mut b = [0u8; 1];
        std::fs::File::from(r).read_exact(&mut b).expect("read");
        assert_eq!(&b, b"x");
    }

    #[test]
    fn eventfd_counts_and_clears() {
        let e = eventfd().expect("eventfd");
        eventfd_signal(e.as_fd()).expect("signal");
        eventfd_signal(e.as_fd()).expect("signal");
        assert_eq!(eventfd_clear(e.as_fd()).expect("clear"), 2);
        // Non-blocking: an empty counter is WouldBlock, not a wait.
        let err = eventfd_clear(e.as_fd()).expect_err("empty");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn nonblocking_read_of_an_empty_pipe_would_block() {
        let (r, _w) = pipe(libc::O_CLOEXEC).expect("pipe");
        set_nonblocking(r.as_fd()).expect("nonblocking");
        let err = std::fs::File::from(r)
            .read(&mut [0u8; 1])
            .expect_err("empty");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
