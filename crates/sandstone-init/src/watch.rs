//! File watch through inotify, streamed until the daemon hangs up.

use crate::proto::{Response, write_frame};
use crate::serve::io_error;
use sandstone_sys::fd::PollFd;
use std::collections::HashMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::AsFd;
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
    /// The inotify instance (a File, to read events from).
    fd: std::fs::File,
    dirs: HashMap<i32, PathBuf>,
    recursive: bool,
}

impl Watcher {
    fn add(&mut self, path: &Path) -> std::io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
        let wd = sandstone_sys::fs::inotify_add_watch(self.fd.as_fd(), &c, MASK)?;
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
    let fd = match sandstone_sys::fs::inotify_init() {
        Ok(fd) => fd,
        Err(e) => return write_frame(out, &io_error(&e), &[]).and(out.flush()),
    };
    let mut w = Watcher {
        fd: fd.into(),
        dirs: HashMap::new(),
        recursive,
    };
    if let Err(e) = w.add(Path::new(path)) {
        return write_frame(out, &io_error(&e), &[]).and(out.flush());
    }
    // An Ok frame tells the daemon the watch is live.
    write_frame(out, &Response::Ok, &[])?;
    out.flush()?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let sock = out.get_ref().as_fd();
        let mut fds = [
            PollFd::readable(Some(w.fd.as_fd())),
            PollFd::readable_or_hangup(sock),
        ];
        if sandstone_sys::fd::poll(&mut fds, None).is_err() {
            continue;
        }
        if fds[1].is_ready() {
            return Ok(()); // the daemon hung up (or sent anything): stop watching
        }
        let n = match (&w.fd).read(&mut buf) {
            Ok(n) if n > 0 => n,
            _ => continue,
        };
        for ev in sandstone_sys::fs::inotify_events(&buf[..n]) {
            let name = ev.name;
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
