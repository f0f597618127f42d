//! Path confinement of the file tools. A path is resolved the way the
//! kernel would open it (every symlink followed, even a dangling leaf) and
//! only then checked against the permitted roots, so a link inside the
//! working directory can neither pass the check nor be followed afterwards.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

/// More dangling-symlink hops than this count as a loop (as the kernel's
/// own limit of 40).
const MAX_SYMLINK_HOPS: usize = 40;

/// Where the file tools may go.
pub struct Policy {
    workdir: PathBuf,
    allowed: Vec<PathBuf>,
    /// (as given, resolved): the message names the root as the caller did.
    read_only: Vec<(String, PathBuf)>,
}

impl Policy {
    pub fn new(workdir: &str, allowed_roots: &[String], read_only_roots: &[String]) -> Policy {
        Policy {
            workdir: resolve_root(workdir),
            allowed: allowed_roots.iter().map(|r| resolve_root(r)).collect(),
            read_only: read_only_roots
                .iter()
                .map(|r| (r.clone(), resolve_root(r)))
                .collect(),
        }
    }

    /// The canonical working directory.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// `p` (relative to the working directory) as the canonical path the
    /// tool operates on, or the error the model reads.
    pub fn resolve(&self, tool: &str, p: &str) -> Result<PathBuf, String> {
        let full = canonicalize(&self.workdir.join(p))
            .map_err(|e| format!("{tool}: path {}: {}", py_repr(p), fs_reason(&e)))?;
        if self.permits(&full) {
            return Ok(full);
        }
        let others = if self.allowed.is_empty() {
            ""
        } else {
            " and its other permitted directories"
        };
        Err(format!(
            "{tool}: path {} is outside the session's working directory{others}",
            py_repr(p)
        ))
    }

    /// Whether a canonical path lies under the working directory or an
    /// allowed root.
    pub fn permits(&self, canonical: &Path) -> bool {
        canonical.starts_with(&self.workdir)
            || self.allowed.iter().any(|r| canonical.starts_with(r))
    }

    /// Refuses a modification under a read-only root, so the model learns at
    /// once instead of its change silently never being kept.
    pub fn check_writable(&self, tool: &str, target: &Path, p: &str) -> Result<(), String> {
        match self.read_only.iter().find(|(_, r)| target.starts_with(r)) {
            Some((given, _)) => Err(format!("{tool}: {p} is inside read-only directory {given}")),
            None => Ok(()),
        }
    }
}

/// A root resolved as far as it exists; one that cannot be resolved (a
/// symlink loop) still confines by its spelling.
fn resolve_root(root: &str) -> PathBuf {
    let abs = Path::new("/").join(root);
    canonicalize(&abs).unwrap_or_else(|_| normalize(&abs))
}

/// Collapses `.` and `..` lexically (`..` at `/` stays at `/`).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn is_missing(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

/// `path` (absolute) with `.`/`..` collapsed lexically and every symlink
/// followed. Components that do not exist yet are kept as spelled, so a new
/// file under new directories still resolves; a dangling symlink on the way
/// is read and followed by hand.
pub fn canonicalize(path: &Path) -> std::io::Result<PathBuf> {
    let mut prefix = normalize(path);
    // Missing trailing components, innermost first.
    let mut missing: Vec<std::ffi::OsString> = Vec::new();
    let mut hops = 0;
    loop {
        let unresolved = match std::fs::canonicalize(&prefix) {
            Ok(mut real) => {
                real.extend(missing.iter().rev());
                return Ok(real);
            }
            Err(e) if !is_missing(&e) => return Err(e),
            Err(e) => e,
        };
        match std::fs::symlink_metadata(&prefix) {
            Err(e) if is_missing(&e) => {
                let (Some(parent), Some(name)) = (prefix.parent(), prefix.file_name()) else {
                    return Err(e);
                };
                missing.push(name.to_owned());
                prefix = parent.to_path_buf();
            }
            Err(e) => return Err(e),
            Ok(meta) if !meta.file_type().is_symlink() => return Err(unresolved),
            Ok(_) => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                }
                let parent = std::fs::canonicalize(prefix.parent().unwrap_or(Path::new("/")))?;
                let mut next = parent.join(std::fs::read_link(&prefix)?);
                next.extend(missing.drain(..).rev());
                prefix = normalize(&next);
            }
        }
    }
}

/// The same wording for an I/O error everywhere, never the raw OS string.
pub fn fs_reason(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::NotFound => "no such file or directory".into(),
        ErrorKind::NotADirectory => "not a directory".into(),
        ErrorKind::IsADirectory => "is a directory".into(),
        ErrorKind::PermissionDenied => "permission denied".into(),
        ErrorKind::AlreadyExists => "file already exists".into(),
        _ if e.raw_os_error() == Some(libc::ELOOP) => "too many levels of symbolic links".into(),
        _ => match e.raw_os_error() {
            Some(code) => os_message(code).to_lowercase(),
            None => "i/o error".into(),
        },
    }
}

/// `<tool>: <p>: <reason>`.
pub fn fs_error(tool: &str, p: &str, e: &std::io::Error) -> String {
    format!("{tool}: {p}: {}", fs_reason(e))
}

/// The C library's text for an errno, without std's " (os error N)".
fn os_message(code: i32) -> String {
    let full = std::io::Error::from_raw_os_error(code).to_string();
    match full.rfind(" (os error") {
        Some(i) => full[..i].to_string(),
        None => full,
    }
}

/// A string quoted as Python's `repr` does, which is how the reference
/// toolset names a path in its confinement errors.
pub fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let work = std::fs::canonicalize(dir.path()).unwrap().join("work");
        std::fs::create_dir(&work).unwrap();
        (dir, work)
    }

    fn policy(work: &Path) -> Policy {
        Policy::new(work.to_str().unwrap(), &[], &[])
    }

    #[test]
    fn relative_paths_resolve_against_the_workdir() {
        let (_d, work) = setup();
        let p = policy(&work);
        assert_eq!(p.resolve("read", "a/b.txt").unwrap(), work.join("a/b.txt"));
        assert_eq!(p.resolve("read", "./a/../c").unwrap(), work.join("c"));
        let abs = work.join("x").display().to_string();
        assert_eq!(p.resolve("read", &abs).unwrap(), work.join("x"));
    }

    #[test]
    fn dotdot_cannot_leave_the_workdir() {
        let (_d, work) = setup();
        let err = policy(&work).resolve("read", "../outside").unwrap_err();
        assert_eq!(
            err,
            "read: path '../outside' is outside the session's working directory"
        );
        let err = policy(&work).resolve("glob", "/etc/passwd").unwrap_err();
        assert_eq!(
            err,
            "glob: path '/etc/passwd' is outside the session's working directory"
        );
    }

    #[test]
    fn symlinks_escaping_the_workdir_are_refused() {
        let (d, work) = setup();
        let outside = d.path().join("secret");
        std::fs::write(&outside, "x").unwrap();
        symlink(&outside, work.join("link")).unwrap();
        symlink(d.path(), work.join("dirlink")).unwrap();
        let p = policy(&work);
        assert!(p.resolve("read", "link").unwrap_err().contains("outside"));
        assert!(
            p.resolve("read", "dirlink/secret")
                .unwrap_err()
                .contains("outside")
        );
        // A link that stays inside is fine and resolves to its target.
        std::fs::write(work.join("real"), "x").unwrap();
        symlink(work.join("real"), work.join("ok")).unwrap();
        assert_eq!(p.resolve("read", "ok").unwrap(), work.join("real"));
    }

    #[test]
    fn dangling_symlinks_are_followed_before_the_check() {
        let (d, work) = setup();
        symlink(d.path().join("nowhere/new"), work.join("dangling")).unwrap();
        let err = policy(&work).resolve("write", "dangling").unwrap_err();
        assert!(err.contains("outside"), "{err}");
        symlink(work.join("sub/target"), work.join("inner")).unwrap();
        assert_eq!(
            policy(&work).resolve("write", "inner/x").unwrap(),
            work.join("sub/target/x")
        );
    }

    #[test]
    fn symlink_loops_are_errors() {
        let (_d, work) = setup();
        symlink(work.join("b"), work.join("a")).unwrap();
        symlink(work.join("a"), work.join("b")).unwrap();
        assert_eq!(
            policy(&work).resolve("read", "a").unwrap_err(),
            "read: path 'a': too many levels of symbolic links"
        );
    }

    #[test]
    fn allowed_roots_extend_the_reach_and_the_message() {
        let (d, work) = setup();
        let mem = d.path().join("mem");
        std::fs::create_dir(&mem).unwrap();
        let p = Policy::new(work.to_str().unwrap(), &[mem.display().to_string()], &[]);
        let inside = mem.join("notes.md").display().to_string();
        assert!(p.resolve("read", &inside).is_ok());
        assert_eq!(
            p.resolve("read", "/etc").unwrap_err(),
            "read: path '/etc' is outside the session's working directory and its other permitted directories"
        );
    }

    #[test]
    fn read_only_roots_name_the_root_as_given() {
        let (_d, work) = setup();
        let ro = work.join("ro").display().to_string();
        let p = Policy::new(work.to_str().unwrap(), &[], std::slice::from_ref(&ro));
        let target = p.resolve("write", "ro/f").unwrap();
        assert_eq!(
            p.check_writable("write", &target, "ro/f").unwrap_err(),
            format!("write: ro/f is inside read-only directory {ro}")
        );
        let other = p.resolve("write", "rw/f").unwrap();
        assert!(p.check_writable("write", &other, "rw/f").is_ok());
    }

    #[test]
    fn python_repr_quoting() {
        assert_eq!(py_repr("a b"), "'a b'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a'\"b"), "'a\\'\"b'");
        assert_eq!(py_repr("x\ny\\"), "'x\\ny\\\\'");
    }

    #[test]
    fn io_errors_read_the_same_everywhere() {
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(
            fs_error("read", "x", &e),
            "read: x: no such file or directory"
        );
        let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(fs_reason(&e), "no space left on device");
    }
}
