//! Unpacking one layer blob into an empty directory.

use crate::digest::{Digest, Hashing};
use crate::{Error, Result, io};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How a layer blob is compressed, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// OCI's layer media types, and Docker's.
    pub fn from_media_type(media_type: &str) -> Result<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd" => Ok(Compression::Zstd),
            other => Err(Error::UnknownMediaType(other.to_string())),
        }
    }
}

/// What the image says a layer is: the blob's digest, and the digest of
/// the tar inside (the config's `diff_id`) when it is known.
#[derive(Clone, Copy, Debug)]
pub struct Expected {
    pub digest: Digest,
    pub diff_id: Option<Digest>,
}

/// What a layer held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries made (whiteouts counted apart).
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    pub whiteouts: u64,
    /// The tar's digest (the layer's `diff_id`).
    pub diff_id: Option<Digest>,
}

/// Unpacks the layer `blob` into `dest`, an empty directory, checking it
/// against `expected` once read whole. On an error `dest` holds part of
/// the layer: the caller unpacks into a staging directory and removes it.
pub fn unpack(
    blob: impl Read,
    compression: Compression,
    expected: &Expected,
    dest: &Path,
) -> Result<Unpacked> {
    let mut blob = Hashing::new(blob);
    let (mut unpacked, diff_id) = {
        let decoded: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut blob),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut blob)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(&mut blob)
                    .map_err(io("start decompressing the layer"))?,
            ),
        };
        let mut tar = Hashing::new(decoded);
        let unpacked = entries(&mut tar, dest)?;
        (
            unpacked,
            tar.finish().map_err(io("read the layer to its end"))?,
        )
    };
    let digest = blob.finish().map_err(io("read the layer blob"))?;
    if digest != expected.digest {
        return Err(Error::DigestMismatch {
            what: "the layer blob's digest",
            expected: expected.digest,
            actual: digest,
        });
    }
    if let Some(want) = expected.diff_id
        && want != diff_id
    {
        return Err(Error::DigestMismatch {
            what: "the layer's uncompressed digest (diff_id)",
            expected: want,
            actual: diff_id,
        });
    }
    unpacked.diff_id = Some(diff_id);
    Ok(unpacked)
}

/// Owner, mode, time and xattrs of an entry, set once it is made
/// (a directory's after its contents, which change its time).
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT: &[u8] = b".wh.";

fn entries(tar: impl Read, dest: &Path) -> Result<Unpacked> {
    let mut archive = tar::Archive::new(tar);
    let mut dirs: Vec<(PathBuf, Meta)> = Vec::new();
    let mut stats = Unpacked::default();
    let read = io("read the layer's tar");
    for entry in archive.entries().map_err(read)? {
        let mut e = entry.map_err(io("read the layer's tar"))?;
        let raw = e.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let Some(rel) = relative(&raw, &shown)? else {
            continue; // the root: the template's own
        };
        let name = rel.file_name().map_or(&b""[..], |n| n.as_bytes()).to_vec();
        let parent = rel.parent().unwrap_or(Path::new(""));
        real_dirs(dest, parent, true, &shown)?;
        let path = dest.join(&rel);
        if name == OPAQUE {
            rustix::fs::lsetxattr(
                dest.join(parent),
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| io(format!("mark {shown:?} opaque"))(e.into()))?;
            stats.whiteouts += 1;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let at = dest.join(parent).join(std::ffi::OsStr::from_bytes(hidden));
            clear(&at)?;
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &at,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                0,
            )
            .map_err(|e| io(format!("make the whiteout {shown:?}"))(e.into()))?;
            stats.whiteouts += 1;
            continue;
        }
        let header = e.header();
        let meta = Meta {
            uid: header.uid().map_err(io(format!("uid of {shown:?}")))? as u32,
            gid: header.gid().map_err(io(format!("gid of {shown:?}")))? as u32,
            mode: header.mode().map_err(io(format!("mode of {shown:?}")))? & 0o7777,
            mtime: header.mtime().map_err(io(format!("mtime of {shown:?}")))? as i64,
            xattrs: xattrs(&mut e)?,
        };
        let made = |r: std::io::Result<()>| r.map_err(io(format!("make {shown:?}")));
        match e.header().entry_type() {
            tar::EntryType::Directory => {
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    _ => {
                        clear(&path)?;
                        made(std::fs::create_dir(&path))?;
                    }
                }
                dirs.push((path, meta));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                clear(&path)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io(format!("make {shown:?}")))?;
                stats.bytes +=
                    std::io::copy(&mut e, &mut f).map_err(io(format!("write {shown:?}")))?;
                set(&path, &meta, false)?;
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry(&shown, "is a symlink without a target"))?
                    .into_owned();
                clear(&path)?;
                made(std::os::unix::fs::symlink(
                    std::ffi::OsStr::from_bytes(&target),
                    &path,
                ))?;
                set(&path, &meta, true)?;
            }
            tar::EntryType::Link => {
                let raw_target = e
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry(&shown, "is a hard link without a target"))?
                    .into_owned();
                let target = relative(&raw_target, &shown)?
                    .ok_or_else(|| unsafe_entry(&shown, "is a hard link to the root"))?;
                real_dirs(
                    dest,
                    target.parent().unwrap_or(Path::new("")),
                    false,
                    &shown,
                )?;
                let target = dest.join(target);
                match std::fs::symlink_metadata(&target) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(unsafe_entry(
                            &shown,
                            "is a hard link to nothing this layer made before it",
                        ));
                    }
                }
                clear(&path)?;
                made(std::fs::hard_link(&target, &path))?;
            }
            tar::EntryType::Fifo => {
                clear(&path)?;
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .map_err(|e| io(format!("make {shown:?}"))(e.into()))?;
                set(&path, &meta, false)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(Error::Unsupported {
                    path: shown,
                    kind: "device node".into(),
                });
            }
            other => {
                return Err(Error::Unsupported {
                    path: shown,
                    kind: format!("{other:?} entry"),
                });
            }
        }
        stats.entries += 1;
    }
    for (path, meta) in dirs.iter().rev() {
        set(path, meta, false)?;
    }
    Ok(stats)
}

fn unsafe_entry(path: &str, reason: &'static str) -> Error {
    Error::Unsafe {
        path: path.to_string(),
        reason,
    }
}

/// A tar path as a relative path: leading `/` and `./` dropped, `.`
/// parts skipped; `None` for the root; refused when a part is `..`.
fn relative(raw: &[u8], shown: &str) -> Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(unsafe_entry(shown, "leaves the layer's root (..)")),
            part => out.push(std::ffi::OsStr::from_bytes(part)),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Checks that every part of `parent` under `dest` is a real directory
/// (not a symlink an earlier entry made, which could point anywhere),
/// making those missing when `create`.
fn real_dirs(dest: &Path, parent: &Path, create: bool, shown: &str) -> Result<()> {
    let mut at = dest.to_path_buf();
    for part in parent.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(unsafe_entry(shown, "lies under a symlink or a file"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                std::fs::create_dir(&at).map_err(io(format!("make the parents of {shown:?}")))?;
            }
            Err(e) => return Err(io(format!("look up the parents of {shown:?}"))(e)),
        }
    }
    Ok(())
}

/// Removes what is at `path`, if anything: a later entry replaces an
/// earlier one of the same name.
fn clear(path: &Path) -> Result<()> {
    let removed = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    removed.map_err(io(format!("replace {path:?}")))
}

/// The entry's extended attributes (PAX `SCHILY.xattr.*`) that a template
/// keeps: `user.*`, file capabilities and POSIX ACLs. Never `trusted.*`:
/// overlayfs reads its own there, and an image must not forge them.
fn xattrs<R: Read>(e: &mut tar::Entry<'_, R>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let Some(pax) = e.pax_extensions().map_err(io("read PAX headers"))? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for ext in pax {
        let ext = ext.map_err(io("read a PAX header"))?;
        let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        if name.starts_with(b"user.")
            || name == b"security.capability"
            || name == b"system.posix_acl_access"
            || name == b"system.posix_acl_default"
        {
            out.push((name.to_vec(), ext.value_bytes().to_vec()));
        }
    }
    Ok(out)
}

/// Sets an entry's owner, mode (not a symlink's), xattrs and times.
fn set(path: &Path, meta: &Meta, symlink: bool) -> Result<()> {
    let what = |op: &str| format!("{op} {path:?}");
    // Owner first: chown clears setuid/setgid and file capabilities.
    std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)).map_err(io(what("chown")))?;
    if !symlink {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode))
            .map_err(io(what("chmod")))?;
    }
    for (name, value) in &meta.xattrs {
        rustix::fs::lsetxattr(
            path,
            std::ffi::OsStr::from_bytes(name),
            value,
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(|e| io(what("set an xattr on"))(e.into()))?;
    }
    let time = rustix::fs::Timespec {
        tv_sec: meta.mtime,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: time,
            last_modification: time,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io(what("set the times of"))(e.into()))
}
