//! File operations. They run in PID 1, after pivot_root: every path and
//! symlink resolves inside the sandbox's own root, never on the host.

use crate::proto::{ErrorCode, FileInfo, Request, Response};
use crate::serve::io_error;
use sandstone_api::FileKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn info(path: &Path) -> std::io::Result<FileInfo> {
    let meta = std::fs::symlink_metadata(path)?;
    let ft = meta.file_type();
    let (kind, link_target) = if ft.is_symlink() {
        let target = std::fs::read_link(path)
            .ok()
            .map(|t| t.display().to_string());
        (FileKind::Symlink, target)
    } else if ft.is_dir() {
        (FileKind::Dir, None)
    } else if ft.is_file() {
        (FileKind::File, None)
    } else {
        (FileKind::Other, None)
    };
    Ok(FileInfo {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        path: path.display().to_string(),
        kind,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        modified: meta.mtime(),
        link_target,
    })
}

fn list_dir(path: &Path) -> std::io::Result<Vec<FileInfo>> {
    let mut entries = std::fs::read_dir(path)?
        .filter_map(|e| e.ok())
        .filter_map(|e| info(&e.path()).ok())
        .collect::<Vec<_>>();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// The most of a file init holds at once while reading it out.
pub const CHUNK: usize = 1 << 20;

/// Why a file cannot be read out.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{} is a directory", .0.display())]
    Directory(PathBuf),
    /// A FIFO would hang, a device never end.
    #[error("{} is not a regular file", .0.display())]
    NotRegular(PathBuf),
}

impl OpenError {
    fn response(&self) -> Response {
        let code = match self {
            OpenError::Io(e) => e.kind().into(),
            OpenError::Directory(_) => ErrorCode::IsADirectory,
            OpenError::NotRegular(_) => ErrorCode::InvalidArgument,
        };
        Response::error(code, self.to_string())
    }
}

/// Regular files only (a FIFO would hang, a device never end).
fn open_regular(path: &Path) -> Result<std::fs::File, OpenError> {
    // O_NONBLOCK: opening a FIFO would otherwise wait for a writer; this
    // way it opens at once and is refused below (and a regular file
    // ignores the flag).
    let f = std::os::unix::fs::OpenOptionsExt::custom_flags(
        std::fs::OpenOptions::new().read(true),
        libc::O_NONBLOCK,
    )
    .open(path)?;
    let meta = f.metadata()?;
    if meta.is_dir() {
        return Err(OpenError::Directory(path.to_path_buf()));
    }
    if !meta.is_file() {
        return Err(OpenError::NotRegular(path.to_path_buf()));
    }
    Ok(f)
}

/// Sends a file as `Chunk` frames of at most [`CHUNK`] bytes and a final
/// `Data`: however large the file (a hostile workload may leave one as big
/// as its disk cap), init holds one chunk, and a slow reader makes the
/// socket, not init's memory, wait.
pub fn stream_file(
    path: &Path,
    mut send: impl FnMut(&Response, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut f = match open_regular(path) {
        Ok(f) => f,
        Err(e) => return send(&e.response(), &[]),
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) => return send(&Response::Data, &[]),
            Ok(n) => send(&Response::Chunk, &buf[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // The reader has what came before; this says the rest failed.
            Err(e) => return send(&io_error(&e), &[]),
        }
    }
}

fn write_file(path: &Path, mode: Option<u32>, append: bool, data: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .append(append)
        .truncate(!append)
        .open(path)?;
    std::io::Write::write_all(&mut f, data)?;
    if let Some(m) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(m & 0o7777))?;
    }
    Ok(())
}

fn remove(path: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

fn mkdir(path: &Path, recursive: bool) -> std::io::Result<()> {
    if recursive {
        std::fs::create_dir_all(path)
    } else {
        std::fs::create_dir(path)
    }
}

fn ok_or(r: std::io::Result<()>) -> Response {
    match r {
        Ok(()) => Response::Ok,
        Err(e) => io_error(&e),
    }
}

/// Answers one file request with its response frame and payload.
pub fn handle(req: Request, payload: &[u8]) -> (Response, Vec<u8>) {
    let resp = match req {
        Request::WriteFile { path, mode, append } => {
            ok_or(write_file(Path::new(&path), mode, append, payload))
        }
        Request::Mkdir { path, recursive } => ok_or(mkdir(Path::new(&path), recursive)),
        Request::RemovePath { path } => ok_or(remove(Path::new(&path))),
        Request::Move { from, to } => ok_or(std::fs::rename(&from, &to)),
        Request::Stat { path } => match info(Path::new(&path)) {
            Ok(info) => Response::Stat { info },
            Err(e) => io_error(&e),
        },
        Request::ListDir { path } => match list_dir(Path::new(&path)) {
            Ok(entries) => Response::Entries { entries },
            Err(e) => io_error(&e),
        },
        other => Response::error(
            ErrorCode::InvalidArgument,
            format!("unexpected request {other:?}"),
        ),
    };
    (resp, Vec::new())
}
