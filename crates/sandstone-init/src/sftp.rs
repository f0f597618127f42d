//! `sandstone-init sftp-server`: an SFTP server (protocol version 3, what
//! OpenSSH's `sftp` and `scp` speak) on standard input and output, for the
//! daemon's SSH gateway. It runs as a context in the sandbox (a
//! [`crate::proto::ProcKind::Sftp`]: init's own program, executed as the
//! sandbox's account, in its namespaces and under its limits), so it
//! reaches exactly what a shell there would, and what it writes is owned
//! as a shell's writes are. Relative paths start at its working directory,
//! `/workspace`.
//!
//! One request is answered before the next is read: the client's
//! pipelining fills the pipe, and replies keep their order.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, ReadDir};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const VERSION: u32 = 3;

// Packet types (draft-ietf-secsh-filexfer-02).
const INIT: u8 = 1;
const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const LSTAT: u8 = 7;
const FSTAT: u8 = 8;
const SETSTAT: u8 = 9;
const FSETSTAT: u8 = 10;
const OPENDIR: u8 = 11;
const READDIR: u8 = 12;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const REALPATH: u8 = 16;
const STAT: u8 = 17;
const RENAME: u8 = 18;
const READLINK: u8 = 19;
const SYMLINK: u8 = 20;
const EXTENDED: u8 = 200;
const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const DATA: u8 = 103;
const NAME: u8 = 104;
const ATTRS: u8 = 105;

// Status codes.
const OK: u32 = 0;
const EOF: u32 = 1;
const NO_SUCH_FILE: u32 = 2;
const PERMISSION_DENIED: u32 = 3;
const FAILURE: u32 = 4;
const BAD_MESSAGE: u32 = 5;
const OP_UNSUPPORTED: u32 = 8;

// Attribute flags.
const ATTR_SIZE: u32 = 0x1;
const ATTR_UIDGID: u32 = 0x2;
const ATTR_PERMISSIONS: u32 = 0x4;
const ATTR_ACMODTIME: u32 = 0x8;
const ATTR_EXTENDED: u32 = 0x8000_0000;

// Open flags.
const OPEN_READ: u32 = 0x1;
const OPEN_WRITE: u32 = 0x2;
const OPEN_APPEND: u32 = 0x4;
const OPEN_CREAT: u32 = 0x8;
const OPEN_TRUNC: u32 = 0x10;
const OPEN_EXCL: u32 = 0x20;

/// OpenSSH's client sends at most 256 KiB of data per write; a packet
/// much larger is not one a client meant.
const MAX_PACKET: usize = 1 << 20;
/// The most a read answers with (OpenSSH asks for 32 KiB at a time).
const MAX_READ: u32 = 256 * 1024;
/// Entries per READDIR answer.
const DIR_BATCH: usize = 100;
/// Handles one session may hold open.
const MAX_HANDLES: usize = 1024;
/// OpenSSH's rename that replaces the target (rename(2)), which its
/// client uses when offered.
const POSIX_RENAME: &str = "posix-rename@openssh.com";

/// Runs the server until the client closes its end.
pub fn serve(input: impl Read, output: impl Write) -> io::Result<()> {
    let mut input = BufReader::with_capacity(MAX_READ as usize, input);
    let mut output = BufWriter::with_capacity(MAX_READ as usize + 64, output);
    let mut server = Server::default();
    while let Some(packet) = read_packet(&mut input)? {
        let reply = server.handle(&packet);
        output.write_all(&(reply.len() as u32).to_be_bytes())?;
        output.write_all(&reply)?;
        // Flushed unless a whole next request is already here: a
        // pipelined burst is answered in few writes, and the client, which
        // may wait for these answers before it sends the rest of a request
        // begun, is never left waiting on them.
        if !holds_whole_packet(input.buffer()) {
            output.flush()?;
        }
    }
    output.flush()
}

/// Whether `buf` begins with a whole packet (its length and its bytes).
fn holds_whole_packet(buf: &[u8]) -> bool {
    buf.get(..4)
        .map(|len| u32::from_be_bytes(len.try_into().expect("four bytes")) as usize)
        .is_some_and(|len| buf.len() >= 4 + len)
}

fn read_packet(input: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        r => r?,
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_PACKET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("an SFTP packet of {len} bytes"),
        ));
    }
    let mut packet = vec![0u8; len];
    input.read_exact(&mut packet)?;
    Ok(Some(packet))
}

/// A packet's fields, read in order.
struct Fields<'a>(&'a [u8]);

/// A packet ended before a field it must have.
struct Malformed;

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().map_err(|_| Malformed)?,
        ))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().map_err(|_| Malformed)?,
        ))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn path(&mut self) -> Result<PathBuf, Malformed> {
        let b = self.bytes()?;
        // An empty path is the working directory, as OpenSSH takes it.
        let b: &[u8] = if b.is_empty() { b"." } else { b };
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(b)))
    }

    fn attrs(&mut self) -> Result<Attrs, Malformed> {
        let flags = self.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            a.owner = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.permissions = Some(self.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            a.times = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_EXTENDED != 0 {
            for _ in 0..self.u32()? {
                self.bytes()?;
                self.bytes()?;
            }
        }
        Ok(a)
    }
}

/// File attributes as a SETSTAT or an OPEN gives them.
#[derive(Default)]
struct Attrs {
    size: Option<u64>,
    owner: Option<(u32, u32)>,
    permissions: Option<u32>,
    /// (atime, mtime), Unix seconds.
    times: Option<(u32, u32)>,
}

/// An answer being written.
struct Reply(Vec<u8>);

impl Reply {
    fn new(kind: u8, id: u32) -> Reply {
        let mut v = Vec::with_capacity(64);
        v.push(kind);
        v.extend_from_slice(&id.to_be_bytes());
        Reply(v)
    }

    fn u32(mut self, n: u32) -> Reply {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    fn u64(mut self, n: u64) -> Reply {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    fn bytes(mut self, b: &[u8]) -> Reply {
        self = self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self
    }

    /// Every attribute v3 has, from `m`.
    fn attrs(self, m: &std::fs::Metadata) -> Reply {
        self.u32(ATTR_SIZE | ATTR_UIDGID | ATTR_PERMISSIONS | ATTR_ACMODTIME)
            .u64(m.size())
            .u32(m.uid())
            .u32(m.gid())
            .u32(m.mode())
            .u32(m.atime().clamp(0, u32::MAX as i64) as u32)
            .u32(m.mtime().clamp(0, u32::MAX as i64) as u32)
    }

    fn status(id: u32, code: u32, message: &str) -> Vec<u8> {
        Reply::new(STATUS, id)
            .u32(code)
            .bytes(message.as_bytes())
            .bytes(b"")
            .0
    }

    fn error(id: u32, e: &io::Error) -> Vec<u8> {
        let code = match e.kind() {
            io::ErrorKind::NotFound => NO_SUCH_FILE,
            io::ErrorKind::PermissionDenied => PERMISSION_DENIED,
            _ => FAILURE,
        };
        Reply::status(id, code, &e.to_string())
    }
}

enum Handle {
    File(File),
    Dir { path: PathBuf, entries: ReadDir },
}

#[derive(Default)]
struct Server {
    handles: HashMap<u32, Handle>,
    next_handle: u32,
}

impl Server {
    fn handle(&mut self, packet: &[u8]) -> Vec<u8> {
        let mut f = Fields(packet);
        let Ok(kind) = f.u8() else {
            return Reply::status(0, BAD_MESSAGE, "empty packet");
        };
        if kind == INIT {
            // The client's version follows; v3 is what it gets. Extensions
            // offered: name, version.
            return Reply(vec![2])
                .u32(VERSION)
                .bytes(POSIX_RENAME.as_bytes())
                .bytes(b"1")
                .0;
        }
        let Ok(id) = f.u32() else {
            return Reply::status(0, BAD_MESSAGE, "no request id");
        };
        match self.request(kind, id, &mut f) {
            Ok(reply) => reply,
            Err(Malformed) => Reply::status(id, BAD_MESSAGE, "malformed request"),
        }
    }

    fn request(&mut self, kind: u8, id: u32, f: &mut Fields) -> Result<Vec<u8>, Malformed> {
        let done = |r: io::Result<()>| match r {
            Ok(()) => Reply::status(id, OK, "OK"),
            Err(e) => Reply::error(id, &e),
        };
        Ok(match kind {
            OPEN => {
                let path = f.path()?;
                let flags = f.u32()?;
                let attrs = f.attrs()?;
                match open(&path, flags, &attrs) {
                    Ok(file) => self.new_handle(id, Handle::File(file)),
                    Err(e) => Reply::error(id, &e),
                }
            }
            CLOSE => {
                let h = handle_id(f.bytes()?);
                match h.and_then(|h| self.handles.remove(&h)) {
                    Some(_) => Reply::status(id, OK, "OK"),
                    None => Reply::status(id, FAILURE, "no such handle"),
                }
            }
            READ => {
                let h = f.bytes()?;
                let offset = f.u64()?;
                let len = f.u32()?.min(MAX_READ) as usize;
                let Some(Handle::File(file)) = self.get(h) else {
                    return Ok(Reply::status(id, FAILURE, "not an open file"));
                };
                let mut buf = vec![0u8; len];
                match file.read_at(&mut buf, offset) {
                    Ok(0) => Reply::status(id, EOF, "end of file"),
                    Ok(n) => Reply::new(DATA, id).bytes(&buf[..n]).0,
                    Err(e) => Reply::error(id, &e),
                }
            }
            WRITE => {
                let h = f.bytes()?;
                let offset = f.u64()?;
                let data = f.bytes()?;
                match self.get(h) {
                    Some(Handle::File(file)) => done(file.write_all_at(data, offset)),
                    _ => Reply::status(id, FAILURE, "not an open file"),
                }
            }
            LSTAT | STAT => {
                let path = f.path()?;
                let m = if kind == LSTAT {
                    std::fs::symlink_metadata(&path)
                } else {
                    std::fs::metadata(&path)
                };
                match m {
                    Ok(m) => Reply::new(ATTRS, id).attrs(&m).0,
                    Err(e) => Reply::error(id, &e),
                }
            }
            FSTAT => match self.get(f.bytes()?) {
                Some(Handle::File(file)) => match file.metadata() {
                    Ok(m) => Reply::new(ATTRS, id).attrs(&m).0,
                    Err(e) => Reply::error(id, &e),
                },
                _ => Reply::status(id, FAILURE, "not an open file"),
            },
            SETSTAT => {
                let path = f.path()?;
                let attrs = f.attrs()?;
                done(set_path_attrs(&path, &attrs))
            }
            FSETSTAT => {
                let h = f.bytes()?;
                let attrs = f.attrs()?;
                match self.get(h) {
                    Some(Handle::File(file)) => done(set_file_attrs(file, &attrs)),
                    _ => Reply::status(id, FAILURE, "not an open file"),
                }
            }
            OPENDIR => {
                let path = f.path()?;
                match std::fs::read_dir(&path) {
                    Ok(entries) => self.new_handle(id, Handle::Dir { path, entries }),
                    Err(e) => Reply::error(id, &e),
                }
            }
            READDIR => match self.get(f.bytes()?) {
                Some(Handle::Dir { path, entries }) => read_dir_batch(id, path, entries),
                _ => Reply::status(id, FAILURE, "not an open directory"),
            },
            REMOVE => done(std::fs::remove_file(f.path()?)),
            MKDIR => {
                let path = f.path()?;
                let attrs = f.attrs()?;
                let mode = attrs.permissions.unwrap_or(0o777) & 0o7777;
                done(std::fs::DirBuilder::new().mode(mode).create(path))
            }
            RMDIR => done(std::fs::remove_dir(f.path()?)),
            REALPATH => {
                let path = f.path()?;
                match real_path(&path) {
                    Ok(p) => name_reply(id, &p),
                    Err(e) => Reply::error(id, &e),
                }
            }
            RENAME => {
                let (from, to) = (f.path()?, f.path()?);
                // Version 3 keeps an existing target (posix-rename replaces).
                if std::fs::symlink_metadata(&to).is_ok() {
                    Reply::status(id, FAILURE, "the target exists")
                } else {
                    done(std::fs::rename(from, to))
                }
            }
            READLINK => match std::fs::read_link(f.path()?) {
                Ok(target) => name_reply(id, &target),
                Err(e) => Reply::error(id, &e),
            },
            // OpenSSH's client and server both send the target first,
            // against the draft's order: its clients are the ones there are.
            SYMLINK => {
                let (target, link) = (f.path()?, f.path()?);
                done(std::os::unix::fs::symlink(target, link))
            }
            EXTENDED => {
                let name = f.bytes()?;
                if name == POSIX_RENAME.as_bytes() {
                    let (from, to) = (f.path()?, f.path()?);
                    done(std::fs::rename(from, to))
                } else {
                    Reply::status(id, OP_UNSUPPORTED, "unsupported extension")
                }
            }
            _ => Reply::status(id, OP_UNSUPPORTED, "unsupported request"),
        })
    }

    fn new_handle(&mut self, id: u32, h: Handle) -> Vec<u8> {
        if self.handles.len() >= MAX_HANDLES {
            return Reply::status(id, FAILURE, "too many open handles");
        }
        self.next_handle = self.next_handle.wrapping_add(1);
        self.handles.insert(self.next_handle, h);
        Reply::new(HANDLE, id)
            .bytes(self.next_handle.to_string().as_bytes())
            .0
    }

    fn get(&mut self, h: &[u8]) -> Option<&mut Handle> {
        self.handles.get_mut(&handle_id(h)?)
    }
}

fn handle_id(h: &[u8]) -> Option<u32> {
    std::str::from_utf8(h).ok()?.parse().ok()
}

fn open(path: &Path, flags: u32, attrs: &Attrs) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(flags & OPEN_READ != 0)
        .write(flags & (OPEN_WRITE | OPEN_APPEND) != 0)
        .append(flags & OPEN_APPEND != 0)
        .truncate(flags & OPEN_TRUNC != 0)
        .mode(attrs.permissions.unwrap_or(0o666) & 0o7777);
    if flags & OPEN_CREAT != 0 {
        if flags & OPEN_EXCL != 0 {
            o.create_new(true);
        } else {
            o.create(true);
        }
    }
    o.open(path)
}

fn set_path_attrs(path: &Path, a: &Attrs) -> io::Result<()> {
    if let Some(size) = a.size {
        OpenOptions::new().write(true).open(path)?.set_len(size)?;
    }
    if let Some(mode) = a.permissions {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))?;
    }
    if let Some((uid, gid)) = a.owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    if let Some((atime, mtime)) = a.times {
        File::open(path)?.set_times(times(atime, mtime))?;
    }
    Ok(())
}

fn set_file_attrs(file: &File, a: &Attrs) -> io::Result<()> {
    if let Some(size) = a.size {
        file.set_len(size)?;
    }
    if let Some(mode) = a.permissions {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    }
    if let Some((uid, gid)) = a.owner {
        std::os::unix::fs::fchown(file, Some(uid), Some(gid))?;
    }
    if let Some((atime, mtime)) = a.times {
        file.set_times(times(atime, mtime))?;
    }
    Ok(())
}

fn times(atime: u32, mtime: u32) -> std::fs::FileTimes {
    let at = |s: u32| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.into());
    std::fs::FileTimes::new()
        .set_accessed(at(atime))
        .set_modified(at(mtime))
}

/// The absolute, normalised form of `path`. A path that does not exist
/// (yet) is normalised without the file system, as OpenSSH's server does
/// for a client that names a file it is about to make.
fn real_path(path: &Path) -> io::Result<PathBuf> {
    if let Ok(p) = std::fs::canonicalize(path) {
        return Ok(p);
    }
    let mut out = std::env::current_dir()?;
    for c in path.components() {
        match c {
            std::path::Component::RootDir => out = PathBuf::from("/"),
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::CurDir | std::path::Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// A NAME answer with one entry and no attributes.
fn name_reply(id: u32, p: &Path) -> Vec<u8> {
    let name = p.as_os_str().as_bytes();
    Reply::new(NAME, id).u32(1).bytes(name).bytes(name).u32(0).0
}

fn read_dir_batch(id: u32, dir: &Path, entries: &mut ReadDir) -> Vec<u8> {
    let mut names = Vec::new();
    for entry in entries.by_ref().take(DIR_BATCH) {
        let Ok(entry) = entry else { continue };
        // Listed with the entry's own attributes (a symlink as one).
        let Ok(m) = std::fs::symlink_metadata(dir.join(entry.file_name())) else {
            continue;
        };
        names.push((entry.file_name(), m));
    }
    if names.is_empty() {
        return Reply::status(id, EOF, "no more entries");
    }
    let mut r = Reply::new(NAME, id).u32(names.len() as u32);
    for (name, m) in &names {
        let name = name.as_bytes();
        r = r.bytes(name).bytes(long_name(name, m).as_bytes()).attrs(m);
    }
    r.0
}

/// An `ls -l` line, which clients show as it is.
fn long_name(name: &[u8], m: &std::fs::Metadata) -> String {
    let mode = m.mode();
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '-',
    };
    let mut perms = String::with_capacity(10);
    perms.push(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    format!(
        "{perms} {:>4} {:<8} {:<8} {:>8} {} {}",
        m.nlink(),
        m.uid(),
        m.gid(),
        m.size(),
        month_day_time(m.mtime()),
        String::from_utf8_lossy(name)
    )
}

/// `Jan  2 15:04` for Unix seconds (UTC).
fn month_day_time(secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    format!(
        "{} {day:>2} {:02}:{:02}",
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's packet: its type, id and fields.
    fn packet(kind: u8, id: u32, fields: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![kind];
        p.extend_from_slice(&id.to_be_bytes());
        for f in fields {
            p.extend_from_slice(f);
        }
        p
    }

    fn string(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }

    fn status_of(reply: &[u8]) -> u32 {
        assert_eq!(reply[0], STATUS, "{reply:?}");
        u32::from_be_bytes(reply[5..9].try_into().unwrap())
    }

    #[test]
    fn a_file_is_written_read_listed_and_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(n).into_os_string().into_vec();
        use std::os::unix::ffi::OsStringExt;
        let mut s = Server::default();
        let flags = (OPEN_WRITE | OPEN_CREAT | OPEN_TRUNC).to_be_bytes();
        let no_attrs = 0u32.to_be_bytes();
        let r = s.handle(&packet(OPEN, 1, &[&string(&path("a")), &flags, &no_attrs]));
        assert_eq!(r[0], HANDLE);
        let handle = r[9..].to_vec();
        let r = s.handle(&packet(
            WRITE,
            2,
            &[&string(&handle), &5u64.to_be_bytes(), &string(b"world")],
        ));
        assert_eq!(status_of(&r), OK);
        assert_eq!(
            status_of(&s.handle(&packet(CLOSE, 3, &[&string(&handle)]))),
            OK
        );
        let on_disk = std::fs::read(dir.path().join("a")).unwrap();
        assert_eq!(on_disk, b"\0\0\0\0\0world");

        let read = OPEN_READ.to_be_bytes();
        let r = s.handle(&packet(OPEN, 4, &[&string(&path("a")), &read, &no_attrs]));
        let handle = r[9..].to_vec();
        let r = s.handle(&packet(
            READ,
            5,
            &[&string(&handle), &5u64.to_be_bytes(), &100u32.to_be_bytes()],
        ));
        assert_eq!((r[0], &r[9..]), (DATA, &b"world"[..]));
        let r = s.handle(&packet(
            READ,
            6,
            &[
                &string(&handle),
                &10u64.to_be_bytes(),
                &100u32.to_be_bytes(),
            ],
        ));
        assert_eq!(status_of(&r), EOF);

        // Version 3's rename keeps an existing target; posix-rename replaces.
        std::fs::write(dir.path().join("b"), "b").unwrap();
        let rename = [string(&path("a")), string(&path("b"))];
        assert_eq!(
            status_of(&s.handle(&packet(RENAME, 7, &[&rename[0], &rename[1]]))),
            FAILURE
        );
        let ext = string(POSIX_RENAME.as_bytes());
        let r = s.handle(&packet(EXTENDED, 8, &[&ext, &rename[0], &rename[1]]));
        assert_eq!(status_of(&r), OK);
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), on_disk);

        let r = s.handle(&packet(OPENDIR, 9, &[&string(&path(""))]));
        let handle = r[9..].to_vec();
        let r = s.handle(&packet(READDIR, 10, &[&string(&handle)]));
        assert_eq!(
            (r[0], u32::from_be_bytes(r[5..9].try_into().unwrap())),
            (NAME, 1)
        );
        assert!(String::from_utf8_lossy(&r).contains(" b"), "{r:?}");
        assert_eq!(
            status_of(&s.handle(&packet(READDIR, 11, &[&string(&handle)]))),
            EOF
        );

        let r = s.handle(&packet(STAT, 12, &[&string(&path("missing"))]));
        assert_eq!(status_of(&r), NO_SUCH_FILE);
        assert_eq!(status_of(&s.handle(&packet(READ, 13, &[]))), BAD_MESSAGE);
        assert_eq!(status_of(&s.handle(&packet(99, 14, &[]))), OP_UNSUPPORTED);
    }

    #[test]
    fn answers_are_flushed_unless_a_whole_request_waits() {
        assert!(!holds_whole_packet(&[]));
        assert!(!holds_whole_packet(&[0, 0, 0, 5, 1, 2]));
        assert!(holds_whole_packet(&[0, 0, 0, 2, 1, 2, 9]));
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(month_day_time(0), "Jan  1 00:00");
        // 2026-12-07 14:24:40 UTC.
        assert_eq!(month_day_time(1_796_653_480), "Dec  7 14:24");
    }
}
