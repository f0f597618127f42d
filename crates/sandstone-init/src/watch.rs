//! File watch through inotify, streamed until the daemon hangs up.

use crate::serve::io_error;
use sandstone_init::proto::{Response, write_frame};
use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

const MASK: u32 = libc::IN_CREATE
    | libc::IN_MODIFY
    | libc::IN_CLOSE_WRITE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB;

struct Watcher {
    fd: OwnedFd,
    dirs: HashMap<i32, PathBuf>,
    recursive: bool,
}

impl Watcher {
    fn add(&mut self, path: &Path) -> std::io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), MASK) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.dirs.insert(wd, path.to_path_buf());
        if self.recursive && path.is_dir() {
            for e in std::fs::read_dir(path)?.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let _ = self.add(&e.path());
                }
            }
        }
        Ok(())
    }
}

/// Everything below `dir` (bounded), parents first.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if out.len() >= 10_000 {
                return out;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
            out.push(e.path());
        }
    }
    out
}

fn event_name(mask: u32) -> &'static str {
    if mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
        "create"
    } else if mask & (libc::IN_DELETE | libc::IN_MOVED_FROM) != 0 {
        "remove"
    } else if mask & libc::IN_ATTRIB != 0 {
        "chmod"
    } else {
        "write"
    }
}

pub fn run(
    path: &str,
    recursive: bool,
    out: &mut std::io::BufWriter<UnixStream>,
) -> std::io::Result<()> {
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return write_frame(out, &io_error(&std::io::Error::last_os_error()), &[]).and(out.flush());
    }
    let mut w = Watcher {
        fd: unsafe { OwnedFd::from_raw_fd(fd) },
        dirs: HashMap::new(),
        recursive,
    };
    if let Err(e) = w.add(Path::new(path)) {
        return write_frame(out, &io_error(&e), &[]).and(out.flush());
    }
    // An Ok frame tells the daemon the watch is live.
    write_frame(out, &Response::Ok, &[])?;
    out.flush()?;
    let sock = out.get_ref().as_raw_fd();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: w.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sock,
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            },
        ];
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if fds[1].revents != 0 {
            return Ok(()); // the daemon hung up (or sent anything): stop watching
        }
        let n = unsafe { libc::read(w.fd.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len()) };
        if n <= 0 {
            continue;
        }
        let mut off = 0usize;
        while off + std::mem::size_of::<libc::inotify_event>() <= n as usize {
            let ev = unsafe { &*(buf.as_ptr().add(off) as *const libc::inotify_event) };
            let name_start = off + std::mem::size_of::<libc::inotify_event>();
            let name_bytes = &buf[name_start..name_start + ev.len as usize];
            let name = name_bytes.split(|b| *b == 0).next().unwrap_or(&[]);
            off = name_start + ev.len as usize;
            let Some(dir) = w.dirs.get(&ev.wd).cloned() else {
                continue;
            };
            let full = if name.is_empty() {
                dir
            } else {
                dir.join(std::ffi::OsStr::from_bytes(name))
            };
            let new_dir =
                recursive && ev.mask & libc::IN_ISDIR != 0 && ev.mask & libc::IN_CREATE != 0;
            if new_dir {
                let _ = w.add(&full);
            }
            if ev.mask & libc::IN_CLOSE_WRITE != 0 && ev.mask & libc::IN_MODIFY == 0 {
                continue; // a close after writes: the writes were reported already
            }
            let r = Response::Event {
                event: event_name(ev.mask).into(),
                path: full.display().to_string(),
            };
            write_frame(out, &r, &[])?;
            if new_dir {
                // Entries made before the new directory's watch existed
                // would be missed: report them as created.
                for entry in walk(&full) {
                    let r = Response::Event {
                        event: "create".into(),
                        path: entry.display().to_string(),
                    };
                    write_frame(out, &r, &[])?;
                }
            }
        }
        out.flush()?;
    }
}
