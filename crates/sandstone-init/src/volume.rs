//! `sandstone-init volume-files`: a volume's files without a sandbox. The
//! daemon starts one per volume whose files API is in use; it serves the
//! file requests of the init protocol (read, write, mkdir, remove, move,
//! stat, list, watch, and `Untar`) for that volume alone.
//!
//! Nothing it is asked for can reach the host: it binds its socket, then
//! chroots into the volume and becomes the volume's default owner (root
//! stays root, with only the capabilities of file ownership: volumes are
//! stored unshifted, so uid 0 on disk is root in the sandboxes that mount
//! it). Every path is first resolved with
//! `openat2(RESOLVE_BENEATH)`: one that leads out (`..` above the root, an
//! absolute symlink, a symlink up) is refused with
//! [`ErrorCode::OutsideRoot`], which the daemon audits; the chroot is what
//! holds even if a path changes between that check and its use.

use crate::proto::{ErrorCode, Request, Response, UntarCounts, VolumeHelperSpec};
use crate::serve::{Out, Scope, io_error, send};
use crate::{files, watch};
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

/// The volume's root, opened after the chroot: what paths resolve beneath.
static ROOT: OnceLock<OwnedFd> = OnceLock::new();

/// The helper's `main`. Prints `ready` once it listens.
pub fn helper_mode(spec: VolumeHelperSpec) {
    if let Err(e) = start(&spec) {
        eprintln!("volume-files: {e}");
        std::process::exit(1);
    }
}

fn start(spec: &VolumeHelperSpec) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&spec.socket);
    let listener = UnixListener::bind(&spec.socket)?;
    let root = CString::new(spec.root.as_os_str().as_encoded_bytes())?;
    sandstone_sys::process::chroot(&root)?;
    sandstone_sys::process::chdir(c"/")?;
    ROOT.set(sandstone_sys::fs::open_beneath(
        std::fs::File::open("/")?.as_fd(),
        c".",
        true,
    )?)
    .map_err(|_| std::io::Error::other("root opened twice"))?;
    if spec.uid != 0 || spec.gid != 0 {
        sandstone_sys::process::clear_groups()?;
        sandstone_sys::process::setresgid(spec.gid)?;
        sandstone_sys::process::setresuid(spec.uid)?;
    } else {
        // Root keeps what files need, nothing that could leave the chroot
        // (every thread it starts from here on inherits this).
        use sandstone_runtime::harden;
        harden::restrict_capabilities(harden::FILE_CAPABILITIES, &[])
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    sandstone_sys::security::set_no_new_privs()?;
    // Nothing of the same uid may trace it or read its memory.
    sandstone_sys::security::set_dumpable(false)?;
    watch_parent();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    crate::serve::serve(listener, Scope::Volume)
}

/// Ends the helper once the daemon that started it is gone (the daemon
/// stops helpers it no longer uses; this is for a daemon that crashed).
fn watch_parent() {
    let parent = sandstone_sys::process::parent_pid();
    let _ = std::thread::Builder::new().spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(2));
            if sandstone_sys::process::parent_pid() != parent {
                std::process::exit(0);
            }
        }
    });
}

/// Refuses `path` unless it resolves beneath the volume's root. `follow`:
/// whether a symlink in its last component is followed (a read) or is
/// what the request acts on (a stat, a removal, a move).
fn beneath(path: &str, follow: bool) -> Result<(), (ErrorCode, String)> {
    let Some(root) = ROOT.get() else {
        return Err((ErrorCode::Io, "the volume is not open".into()));
    };
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let c = CString::new(rel)
        .map_err(|_| (ErrorCode::InvalidArgument, "a path holds a NUL byte".into()))?;
    match sandstone_sys::fs::open_beneath(root.as_fd(), &c, follow) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Err((
            ErrorCode::OutsideRoot,
            format!("{path} leads out of the volume"),
        )),
        // Missing (a file about to be written) or anything else: the
        // request itself reports it.
        _ => Ok(()),
    }
}

/// The paths a request names, each with whether its last symlink counts.
fn paths_of(req: &Request) -> Vec<(&str, bool)> {
    match req {
        Request::ReadFile { path }
        | Request::WriteFile { path, .. }
        | Request::Mkdir { path, .. }
        | Request::ListDir { path }
        | Request::Watch { path, .. } => vec![(path, true)],
        Request::RemovePath { path } | Request::Stat { path } => vec![(path, false)],
        Request::Move { from, to } => vec![(from, false), (to, false)],
        Request::Untar { archive, root } => vec![(archive, true), (root, true)],
        _ => vec![],
    }
}

/// Answers one request of a volume's file API.
pub fn dispatch(req: Request, payload: Vec<u8>, out: &mut Out) -> std::io::Result<()> {
    for (path, follow) in paths_of(&req) {
        if let Err((code, message)) = beneath(path, follow) {
            return send(out, &Response::error(code, message), &[]);
        }
    }
    let resp = match req {
        Request::Ping => Response::Pong {
            version: env!("CARGO_PKG_VERSION").into(),
        },
        Request::ReadFile { path } => {
            return files::stream_file(Path::new(&path), |r, bytes| send(out, r, bytes));
        }
        Request::Watch { path, recursive } => return watch::run(&path, recursive, out),
        Request::Untar { archive, root } => match untar(Path::new(&archive), Path::new(&root)) {
            Ok(counts) => Response::Untarred(counts),
            Err(e) => io_error(&e),
        },
        req @ (Request::WriteFile { .. }
        | Request::Mkdir { .. }
        | Request::RemovePath { .. }
        | Request::Move { .. }
        | Request::Stat { .. }
        | Request::ListDir { .. }) => {
            let (r, body) = files::handle(req, &payload);
            return send(out, &r, &body);
        }
        _ => Response::error(
            ErrorCode::InvalidArgument,
            "a volume's file helper serves file requests only",
        ),
    };
    send(out, &resp, &[])
}

/// Unpacks `archive` under `root` (made if missing).
fn untar(archive: &Path, root: &Path) -> std::io::Result<UntarCounts> {
    std::fs::create_dir_all(root)?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(std::fs::File::open(archive)?));
    tar.set_overwrite(true);
    let mut counts = UntarCounts::default();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let size = entry.size();
        let named = entry.path()?.display().to_string();
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous => counts.files += 1,
            T::Directory => counts.directories += 1,
            T::Symlink => counts.symlinks += 1,
            T::Link => counts.files += 1,
            // Metadata entries the reader applies to the next one.
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{named}: a {other:?} entry cannot be imported"),
                ));
            }
        }
        // `unpack_in` refuses names with `..` and writes nothing outside
        // `root`; the chroot holds beyond it.
        if !entry.unpack_in(root)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{named}: leads out of {}", root.display()),
            ));
        }
        if matches!(kind, T::Regular | T::Continuous) {
            counts.bytes += size;
        }
    }
    Ok(counts)
}
