//! Terminals: pseudo-terminals, window sizes, raw mode.

use crate::cvt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A new pseudo-terminal: `(master, slave)`, both close-on-exec, neither
/// made the caller's controlling terminal.
pub fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: posix_openpt takes no pointers; the result is checked and
    // owned at once.
    let master = cvt(unsafe { libc::posix_openpt(flags) })?;
    // SAFETY: `master` is a new descriptor owned by nothing else.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: grantpt and unlockpt take a descriptor we own and no pointers.
    cvt(unsafe { libc::grantpt(master.as_raw_fd()) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r writes a NUL-terminated name of at most `len`
    // bytes into the live local buffer.
    let r = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    // SAFETY: `name` holds the NUL-terminated path ptsname_r wrote.
    let slave = cvt(unsafe { libc::open(name.as_ptr(), flags) })?;
    // SAFETY: `slave` is a new descriptor owned by nothing else.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// A terminal's size in `(rows, columns)`.
pub fn window_size(tty: BorrowedFd<'_>) -> io::Result<(u16, u16)> {
    // SAFETY: winsize is plain data for which all zeroes is a value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into the live `ws`.
    cvt(unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) })?;
    Ok((ws.ws_row, ws.ws_col))
}

/// Sets a terminal's size (and so signals its foreground group SIGWINCH).
pub fn set_window_size(tty: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the live `ws`.
    cvt(unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws) })?;
    Ok(())
}

/// Makes the terminal on standard input the caller's controlling terminal
/// (TIOCSCTTY; the caller leads a new session). Async-signal-safe.
pub fn take_controlling_terminal() -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
    cvt(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) })?;
    Ok(())
}

/// A terminal's settings, to restore later.
#[derive(Clone, Copy)]
pub struct TermSettings(libc::termios);

/// The settings of the terminal `tty` (an error if it is not one).
pub fn settings(tty: BorrowedFd<'_>) -> io::Result<TermSettings> {
    // SAFETY: termios is plain data for which all zeroes is a value.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a live termios tcgetattr writes into.
    cvt(unsafe { libc::tcgetattr(tty.as_raw_fd(), &mut t) })?;
    Ok(TermSettings(t))
}

/// Applies `settings` to `tty` at once.
pub fn apply(tty: BorrowedFd<'_>, settings: &TermSettings) -> io::Result<()> {
    // SAFETY: `settings.0` is a live termios tcsetattr reads.
    cvt(unsafe { libc::tcsetattr(tty.as_raw_fd(), libc::TCSANOW, &settings.0) })?;
    Ok(())
}

impl TermSettings {
    /// These settings in raw mode (cfmakeraw: no echo, no line editing, no
    /// signals from keys).
    pub fn raw(&self) -> TermSettings {
        let mut t = self.0;
        // SAFETY: `t` is a live termios cfmakeraw rewrites in place.
        unsafe { libc::cfmakeraw(&mut t) };
        TermSettings(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_pty_has_the_size_it_is_given() {
        let (master, slave) = open_pty().expect("pty");
        set_window_size(master.as_fd(), 33, 120).expect("set size");
        assert_eq!(window_size(slave.as_fd()).expect("size"), (33, 120));
        let s = settings(slave.as_fd()).expect("a terminal");
        apply(slave.as_fd(), &s.raw()).expect("raw");
        // A pipe is no terminal.
        let (r, _w) = crate::fd::pipe(libc::O_CLOEXEC).expect("pipe");
        assert!(settings(r.as_fd()).is_err());
    }
}
