//! Skill archives, the form a skill version travels in (uploads to the
//! skills API, downloads by workers): zip, tar.gz or tar, read in memory.
//!
//! An archive becomes a flat list of relative files and nothing touches a
//! filesystem, so the caller decides where (and in which sandbox) the files
//! land. Everything an archive could use to escape or exhaust that
//! destination is handled here:
//!
//! * absolute paths, `..` components and NUL bytes refuse the whole archive,
//!   because a partially-installed skill is worse than none;
//! * links, devices and FIFOs are skipped (and reported), because following
//!   them inside a sandbox can expose files outside the skill directory;
//! * sizes are counted on the bytes actually decompressed, never on header
//!   claims, so zip and gzip bombs stop at the configured [`Limits`].

use std::collections::{HashMap, HashSet};
use std::io::{self, Cursor, Read};

use flate2::read::GzDecoder;

/// Mode given to files that had any execute bit set in the archive.
const EXECUTABLE_MODE: u32 = 0o755;
/// Mode given to every other file.
const REGULAR_MODE: u32 = 0o644;

/// Tar streams carry headers and padding besides file data; this much is
/// allowed per entry on top of [`Limits::max_total_bytes`] before a tar
/// stream counts as oversized. It covers a header, its padding and a long
/// name or PAX record, with room to spare.
const TAR_OVERHEAD_PER_ENTRY: u64 = 8 * 1024;

/// One regular file extracted from a skill archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillFile {
    /// Relative, `/`-separated path without a leading `/`, `.` or `..`
    /// components, and with any single wrapper directory removed.
    pub path: String,
    /// [`EXECUTABLE_MODE`] (0o755) or [`REGULAR_MODE`] (0o644).
    pub mode: u32,
    pub data: Vec<u8>,
}

/// The result of [`unpack`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Regular files, in archive order (a duplicate keeps the position of its
    /// first occurrence and the contents of its last).
    pub files: Vec<SkillFile>,
    /// Entries that were not extracted, as `"<path>: <reason>"`, for logs.
    pub skipped: Vec<String>,
}

/// Caps applied while an archive is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Regular-file entries read, duplicates included.
    pub max_files: usize,
    /// Decompressed bytes of all regular files read, duplicates included.
    pub max_total_bytes: u64,
    /// Decompressed bytes of a single file.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_files: 10_000,
            max_total_bytes: 256 * 1024 * 1024,
            max_file_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why an archive (or a skill directory name) was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("skill archive is empty")]
    Empty,
    #[error("skill archive is {format}, which is not supported (expected zip, tar.gz or tar)")]
    UnsupportedFormat { format: &'static str },
    #[error(
        "skill archive format not recognised (first bytes: {magic}); expected zip, tar.gz or tar"
    )]
    UnknownFormat { magic: String },
    #[error("invalid zip archive: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("corrupt or unreadable archive: {0}")]
    Corrupt(#[source] io::Error),
    #[error("archive entry {path:?} has an absolute path")]
    AbsolutePath { path: String },
    #[error("archive entry {path:?} has a '..' component")]
    ParentTraversal { path: String },
    #[error("archive entry {path:?} contains a NUL byte")]
    NulInName { path: String },
    #[error("archive entry {path:?} is not valid UTF-8")]
    NonUtf8Name { path: String },
    #[error("archive has both a file and a directory at {path:?}")]
    PathConflict { path: String },
    #[error("archive exceeds the {limit} limit ({max})")]
    TooLarge { limit: &'static str, max: u64 },
    #[error("invalid skill directory name {name:?}: {reason}")]
    InvalidDirName { name: String, reason: &'static str },
}

/// The files of an archive held in memory, paths as archived, its format
/// detected from its contents (file names and content types are not
/// trusted).
pub fn files(archive: &[u8], limits: &Limits) -> Result<Unpacked, UnpackError> {
    let mut collector = Collector::new(limits);
    match detect(archive)? {
        Format::Zip => read_zip(archive, &mut collector)?,
        Format::TarGz => read_tar(GzDecoder::new(archive), &mut collector)?,
        Format::Tar => read_tar(archive, &mut collector)?,
    }
    collector.finish()
}

/// The files of a skill archive as they belong in the skill's directory:
/// [`files`] without the single wrapper directory archives usually have.
pub fn unpack(archive: &[u8], limits: &Limits) -> Result<Unpacked, UnpackError> {
    let mut unpacked = files(archive, limits)?;
    strip_wrapper(&mut unpacked.files);
    Ok(unpacked)
}

/// Whether `bytes` are an archive this module reads.
pub fn is_archive(bytes: &[u8]) -> bool {
    detect(bytes).is_ok()
}

/// The directory a skill version is installed under: the basename of its
/// trimmed name, or `skill_id` when that is empty. The result must be usable
/// as a single path component, so `.`, `..`, `/` and NUL are refused.
pub fn dir_name(version_name: &str, skill_id: &str) -> Result<String, UnpackError> {
    let trimmed = version_name.trim();
    let base = trimmed.rsplit('/').next().unwrap_or(trimmed);
    let name = if base.is_empty() { skill_id } else { base };
    let reason = match name {
        "" => Some("empty"),
        "." | ".." => Some("refers to a directory, not a name"),
        _ if name.contains('/') => Some("contains '/'"),
        _ if name.contains('\0') => Some("contains a NUL byte"),
        _ => None,
    };
    match reason {
        Some(reason) => Err(UnpackError::InvalidDirName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(name.to_owned()),
    }
}

enum Format {
    Zip,
    TarGz,
    Tar,
}

/// Archive formats recognised by their magic bytes only to name them in the
/// error: skills are published as zip or tarballs.
const UNSUPPORTED_MAGIC: &[(&[u8], &str)] = &[
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!", "rar"),
];

fn detect(archive: &[u8]) -> Result<Format, UnpackError> {
    if archive.is_empty() {
        return Err(UnpackError::Empty);
    }
    // A local file header, or the end-of-central-directory record that makes
    // up an empty zip on its own.
    if archive.starts_with(b"PK\x03\x04") || archive.starts_with(b"PK\x05\x06") {
        return Ok(Format::Zip);
    }
    if archive.starts_with(&[0x1f, 0x8b]) {
        return Ok(Format::TarGz);
    }
    if looks_like_tar(archive) {
        return Ok(Format::Tar);
    }
    if let Some((_, format)) = UNSUPPORTED_MAGIC
        .iter()
        .find(|(m, _)| archive.starts_with(m))
    {
        return Err(UnpackError::UnsupportedFormat { format });
    }
    Err(UnpackError::UnknownFormat {
        magic: archive.iter().take(8).map(|b| format!("{b:02x}")).collect(),
    })
}

/// Plain tar has no magic at offset 0: accept a POSIX `ustar` header, a
/// pre-POSIX header whose checksum is valid, or an all-zero end-of-archive
/// block (an empty tarball).
fn looks_like_tar(archive: &[u8]) -> bool {
    let Some(block) = archive.get(..512) else {
        return false;
    };
    block[257..262] == *b"ustar" || block.iter().all(|&b| b == 0) || tar_checksum_ok(block)
}

/// The tar header checksum: the byte sum of the block with the checksum
/// field itself counted as spaces.
fn tar_checksum_ok(block: &[u8]) -> bool {
    let computed: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    tar::Header::from_byte_slice(block)
        .cksum()
        .is_ok_and(|stored| stored == computed)
}

fn read_zip(archive: &[u8], collector: &mut Collector) -> Result<(), UnpackError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(archive))?;
    for index in 0..zip.len() {
        let mut file = zip.by_index(index)?;
        // The zip spec mandates '/', but some Windows tools write '\'.
        let name = file.name().replace('\\', "/");
        let kind = zip_kind(file.unix_mode());
        collector.add(name.as_bytes(), kind, &mut file)?;
    }
    Ok(())
}

/// Classifies a zip entry from its Unix mode. Entries written without one
/// (e.g. by Windows tools) are plain files.
fn zip_kind(unix_mode: Option<u32>) -> Kind {
    let Some(mode) = unix_mode else {
        return Kind::File { executable: false };
    };
    match mode & 0o170000 {
        0 | 0o100000 => Kind::File {
            executable: mode & 0o111 != 0,
        },
        0o040000 => Kind::Dir,
        0o120000 => Kind::Skip("symlink"),
        0o020000 | 0o060000 => Kind::Skip("device"),
        0o010000 => Kind::Skip("fifo"),
        0o140000 => Kind::Skip("socket"),
        _ => Kind::Skip("unknown file type"),
    }
}

/// Reads a tar stream through a cap on its decompressed size. Entry data is
/// capped by the collector, but the tar reader also decompresses the data of
/// entries it skips (a symlink may claim gigabytes), so the whole stream is
/// bounded too.
fn read_tar(stream: impl Read, collector: &mut Collector) -> Result<(), UnpackError> {
    let limits = collector.limits;
    let overhead = (limits.max_files as u64 + 1).saturating_mul(TAR_OVERHEAD_PER_ENTRY);
    let cap = limits.max_total_bytes.saturating_add(overhead);
    let mut capped = CappedReader::new(stream, cap);
    let result = read_tar_entries(&mut capped, collector);
    if capped.exceeded {
        return Err(UnpackError::TooLarge {
            limit: "max_total_bytes (whole tar stream, headers included)",
            max: cap,
        });
    }
    result
}

fn read_tar_entries(stream: impl Read, collector: &mut Collector) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries().map_err(UnpackError::Corrupt)? {
        let mut entry = entry.map_err(UnpackError::Corrupt)?;
        let kind = tar_kind(entry.header()).map_err(UnpackError::Corrupt)?;
        let name = entry.path_bytes().into_owned();
        collector.add(&name, kind, &mut entry)?;
    }
    Ok(())
}

fn tar_kind(header: &tar::Header) -> io::Result<Kind> {
    use tar::EntryType;
    Ok(match header.entry_type() {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File {
            executable: header.mode()? & 0o111 != 0,
        },
        EntryType::Directory => Kind::Dir,
        EntryType::Symlink => Kind::Skip("symlink"),
        EntryType::Link => Kind::Skip("hardlink"),
        EntryType::Char | EntryType::Block => Kind::Skip("device"),
        EntryType::Fifo => Kind::Skip("fifo"),
        _ => Kind::Skip("unsupported tar entry type"),
    })
}

/// Passes through at most `remaining` bytes, then fails (rather than
/// reporting end of file, which a tar reader would take for a clean end of
/// the archive) if the inner stream has more.
struct CappedReader<R> {
    inner: R,
    remaining: u64,
    exceeded: bool,
}

impl<R> CappedReader<R> {
    fn new(inner: R, cap: u64) -> Self {
        Self {
            inner,
            remaining: cap,
            exceeded: false,
        }
    }
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            if self.inner.read(&mut [0u8; 1])? == 0 {
                return Ok(0);
            }
            self.exceeded = true;
            return Err(io::Error::other("archive stream exceeds its size cap"));
        }
        let len = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..len])?;
        self.remaining -= read as u64;
        Ok(read)
    }
}

/// What an archive entry is, as far as unpacking cares.
enum Kind {
    File {
        executable: bool,
    },
    /// Not emitted: directories are implied by file paths.
    Dir,
    /// Not extracted, with the reason recorded in [`Unpacked::skipped`].
    Skip(&'static str),
}

/// Format-independent accumulation of entries: path checks, limits and
/// duplicate handling.
struct Collector<'l> {
    limits: &'l Limits,
    files: Vec<SkillFile>,
    /// Position in `files` of each path, so a later duplicate replaces it.
    index: HashMap<String, usize>,
    skipped: Vec<String>,
    files_read: usize,
    bytes_read: u64,
}

impl<'l> Collector<'l> {
    fn new(limits: &'l Limits) -> Self {
        Self {
            limits,
            files: Vec::new(),
            index: HashMap::new(),
            skipped: Vec::new(),
            files_read: 0,
            bytes_read: 0,
        }
    }

    /// Validates an entry's name (whatever its kind, so that one unsafe
    /// entry refuses the archive) and records it.
    fn add(&mut self, raw_name: &[u8], kind: Kind, data: impl Read) -> Result<(), UnpackError> {
        let Some(path) = normalise(raw_name)? else {
            return Ok(()); // the archive root itself, e.g. "./"
        };
        // Old tar writers mark directories only by a trailing slash.
        let kind = if raw_name.ends_with(b"/") {
            Kind::Dir
        } else {
            kind
        };
        match kind {
            Kind::Dir => {}
            Kind::Skip(reason) => self.skipped.push(format!("{path}: {reason}")),
            Kind::File { executable } => {
                let mode = if executable {
                    EXECUTABLE_MODE
                } else {
                    REGULAR_MODE
                };
                let data = self.read_file(data)?;
                self.insert(SkillFile { path, mode, data });
            }
        }
        Ok(())
    }

    /// Reads one file's contents, counting the bytes actually produced so
    /// that a header claiming a small size cannot smuggle in more.
    fn read_file(&mut self, data: impl Read) -> Result<Vec<u8>, UnpackError> {
        let limits = self.limits;
        self.files_read += 1;
        if self.files_read > limits.max_files {
            return Err(UnpackError::TooLarge {
                limit: "max_files",
                max: limits.max_files as u64,
            });
        }
        let total_left = limits.max_total_bytes.saturating_sub(self.bytes_read);
        let (allowed, limit, max) = if limits.max_file_bytes <= total_left {
            (
                limits.max_file_bytes,
                "max_file_bytes",
                limits.max_file_bytes,
            )
        } else {
            (total_left, "max_total_bytes", limits.max_total_bytes)
        };
        let mut buf = Vec::new();
        data.take(allowed.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(UnpackError::Corrupt)?;
        if buf.len() as u64 > allowed {
            return Err(UnpackError::TooLarge { limit, max });
        }
        self.bytes_read += buf.len() as u64;
        Ok(buf)
    }

    /// Adds a file; for a duplicate path the last entry wins.
    fn insert(&mut self, file: SkillFile) {
        match self.index.get(&file.path) {
            Some(&position) => self.files[position] = file,
            None => {
                self.index.insert(file.path.clone(), self.files.len());
                self.files.push(file);
            }
        }
    }

    fn finish(self) -> Result<Unpacked, UnpackError> {
        check_file_dir_conflicts(&self.files)?;
        Ok(Unpacked {
            files: self.files,
            skipped: self.skipped,
        })
    }
}

/// Turns an entry name into a clean relative path, or `None` for the
/// archive root. Empty and `.` components are dropped; absolute paths, `..`
/// and NUL are refused outright rather than "fixed", since an archive that
/// contains them was not made by an honest packer.
fn normalise(raw: &[u8]) -> Result<Option<String>, UnpackError> {
    let shown = || String::from_utf8_lossy(raw).into_owned();
    if raw.contains(&0) {
        return Err(UnpackError::NulInName { path: shown() });
    }
    if raw.starts_with(b"/") {
        return Err(UnpackError::AbsolutePath { path: shown() });
    }
    let mut parts = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(UnpackError::ParentTraversal { path: shown() }),
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    String::from_utf8(parts.join(&b'/'))
        .map(Some)
        .map_err(|_| UnpackError::NonUtf8Name { path: shown() })
}

/// Archives are commonly made by zipping a folder (`pdf/SKILL.md`), but the
/// skill's files belong at the top of its directory: when every file shares
/// one first component, it is dropped.
fn strip_wrapper(files: &mut [SkillFile]) {
    let Some((wrapper, _)) = files.first().and_then(|f| f.path.split_once('/')) else {
        return;
    };
    let prefix = format!("{wrapper}/");
    if files.iter().all(|f| f.path.starts_with(&prefix)) {
        for file in files {
            file.path.drain(..prefix.len());
        }
    }
}

/// A path cannot be both a file and a parent directory of another file; the
/// caller could not write such a tree, so it is refused here with a clear
/// message instead.
fn check_file_dir_conflicts(files: &[SkillFile]) -> Result<(), UnpackError> {
    let paths: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    for file in files {
        for (slash, _) in file.path.match_indices('/') {
            let parent = &file.path[..slash];
            if paths.contains(parent) {
                return Err(UnpackError::PathConflict {
                    path: parent.to_owned(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;
    use zip::write::SimpleFileOptions;

    fn zip_archive(build: impl FnOnce(&mut zip::ZipWriter<Cursor<Vec<u8>>>)) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        build(&mut writer);
        writer.finish().unwrap().into_inner()
    }

    fn zip_file(w: &mut zip::ZipWriter<Cursor<Vec<u8>>>, name: &str, mode: u32, data: &[u8]) {
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode);
        w.start_file(name, options).unwrap();
        w.write_all(data).unwrap();
    }

    /// A tar entry whose name is written straight into the header, bypassing
    /// the builder's own path checks so hostile names can be produced.
    fn tar_entry(
        kind: tar::EntryType,
        name: &[u8],
        mode: u32,
        data: &[u8],
    ) -> (tar::Header, Vec<u8>) {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_cksum();
        (header, data.to_vec())
    }

    fn tar_archive(entries: &[(tar::Header, Vec<u8>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (header, data) in entries {
            builder.append(header, data.as_slice()).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn link_entry(kind: tar::EntryType, name: &[u8], target: &str) -> (tar::Header, Vec<u8>) {
        let (mut header, data) = tar_entry(kind, name, 0o777, b"");
        header.set_link_name(target).unwrap();
        header.set_cksum();
        (header, data)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn regular(name: &str, mode: u32, data: &[u8]) -> (tar::Header, Vec<u8>) {
        tar_entry(tar::EntryType::Regular, name.as_bytes(), mode, data)
    }

    fn paths(unpacked: &Unpacked) -> Vec<&str> {
        unpacked.files.iter().map(|f| f.path.as_str()).collect()
    }

    fn file<'u>(unpacked: &'u Unpacked, path: &str) -> &'u SkillFile {
        unpacked.files.iter().find(|f| f.path == path).unwrap()
    }

    #[test]
    fn zip_wrapper_dir_is_stripped_and_exec_bit_kept() {
        let archive = zip_archive(|w| {
            w.add_directory("pdf/", SimpleFileOptions::default())
                .unwrap();
            zip_file(w, "pdf/SKILL.md", 0o644, b"# PDF");
            zip_file(w, "pdf/scripts/run.sh", 0o700, b"#!/bin/sh");
        });
        let unpacked = unpack(&archive, &Limits::default()).unwrap();
        assert_eq!(paths(&unpacked), ["SKILL.md", "scripts/run.sh"]);
        assert_eq!(file(&unpacked, "SKILL.md").mode, 0o644);
        assert_eq!(file(&unpacked, "SKILL.md").data, b"# PDF");
        assert_eq!(file(&unpacked, "scripts/run.sh").mode, 0o755);
        assert!(unpacked.skipped.is_empty());
    }

    #[test]
    fn zip_without_unix_mode_is_regular() {
        assert!(matches!(zip_kind(None), Kind::File { executable: false }));
        assert!(matches!(
            zip_kind(Some(0o100744)),
            Kind::File { executable: true }
        ));
        assert!(matches!(zip_kind(Some(0o020644)), Kind::Skip("device")));
    }

    #[test]
    fn empty_zip_unpacks_to_nothing() {
        let archive = zip_archive(|_| {});
        assert!(archive.starts_with(b"PK\x05\x06"));
        let unpacked = unpack(&archive, &Limits::default()).unwrap();
        assert_eq!(unpacked, Unpacked::default());
    }

    #[test]
    fn tar_gz_is_detected_by_content() {
        let tar = tar_archive(&[
            regular("./xlsx/SKILL.md", 0o644, b"# XLSX"),
            regular("./xlsx/bin/tool", 0o750, b"\x7fELF"),
        ]);
        let unpacked = unpack(&gzip(&tar), &Limits::default()).unwrap();
        assert_eq!(paths(&unpacked), ["SKILL.md", "bin/tool"]);
        assert_eq!(file(&unpacked, "bin/tool").mode, 0o755);
        assert_eq!(file(&unpacked, "SKILL.md").data, b"# XLSX");
    }

    #[test]
    fn plain_tar_is_detected_by_content() {
        let tar = tar_archive(&[regular("docx/SKILL.md", 0o600, b"# DOCX")]);
        let unpacked = unpack(&tar, &Limits::default()).unwrap();
        assert_eq!(paths(&unpacked), ["SKILL.md"]);
        assert_eq!(unpacked.files[0].mode, 0o644);
    }

    #[test]
    fn pre_posix_tar_is_recognised_by_checksum() {
        let mut header = tar::Header::new_old();
        header.set_path("SKILL.md").unwrap();
        header.set_mode(0o644);
        header.set_size(2);
        header.set_cksum();
        let tar = tar_archive(&[(header, b"hi".to_vec())]);
        assert_ne!(tar[257..262], *b"ustar");
        let unpacked = unpack(&tar, &Limits::default()).unwrap();
        assert_eq!(paths(&unpacked), ["SKILL.md"]);
    }

    #[test]
    fn top_level_files_are_kept_as_is() {
        let tar = tar_archive(&[
            regular("SKILL.md", 0o644, b"a"),
            regular("scripts/x.py", 0o644, b"b"),
        ]);
        let unpacked = unpack(&tar, &Limits::default()).unwrap();
        assert_eq!(paths(&unpacked), ["SKILL.md", "scripts/x.py"]);
    }

    #[test]
    fn two_top_level_dirs_are_not_stripped() {
        let archive = zip_archive(|w| {
            zip_file(w, "a/SKILL.md", 0o644, b"a");
            zip_file(w, "b/extra.md", 0o644, b"b");
        });
        let unpacked = unpack(&archive, &Limits::default()).unwrap();
        assert_eq!(paths(&unpacked), ["a/SKILL.md", "b/extra.md"]);
    }

    #[test]
    fn single_top_level_file_is_not_treated_as_wrapper() {
        let tar = tar_archive(&[regular("SKILL.md", 0o644, b"a")]);
        let unpacked = unpack(&tar, &Limits::default()).unwrap();
        assert_eq!(paths(&unpacked), ["SKILL.md"]);
    }

    #[test]
    fn parent_traversal_is_refused() {
        let archive = zip_archive(|w| {
            zip_file(w, "pdf/SKILL.md", 0o644, b"ok");
            zip_file(w, "pdf/../../evil", 0o644, b"x");
        });
        let err = unpack(&archive, &Limits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::ParentTraversal { .. }), "{err}");

        let tar = tar_archive(&[regular("../evil", 0o644, b"x")]);
        let err = unpack(&tar, &Limits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::ParentTraversal { .. }), "{err}");
    }

    #[test]
    fn windows_separators_cannot_smuggle_parent_traversal() {
        let archive = zip_archive(|w| zip_file(w, "..\\evil", 0o644, b"x"));
        let err = unpack(&archive, &Limits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::ParentTraversal { .. }), "{err}");
    }

    #[test]
    fn absolute_path_is_refused() {
        let tar = tar_archive(&[regular("/etc/passwd", 0o644, b"root")]);
        let err = unpack(&tar, &Limits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::AbsolutePath { .. }), "{err}");

        let archive = zip_archive(|w| zip_file(w, "/etc/passwd", 0o644, b"root"));
        let err = unpack(&archive, &Limits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::AbsolutePath { .. }), "{err}");
    }

    #[test]
    fn links_and_special_files_are_skipped() {
        let tar = tar_archive(&[
            regular("s/SKILL.md", 0o644, b"a"),
            link_entry(tar::EntryType::Symlink, b"s/sym", "/etc/passwd"),
            link_entry(tar::EntryType::Link, b"s/hard", "s/SKILL.md"),
            tar_entry(tar::EntryType::Fifo, b"s/pipe", 0o644, b""),
            tar_entry(tar::EntryType::Char, b"s/null", 0o644, b""),
        ]);
        let unpacked = unpack(&gzip(&tar), &Limits::default()).unwrap();
        assert_eq!(paths(&unpacked), ["SKILL.md"]);
        assert_eq!(
            unpacked.skipped,
            [
                "s/sym: symlink",
                "s/hard: hardlink",
                "s/pipe: fifo",
                "s/null: device"
            ]
        );
    }

    #[test]
    fn zip_symlink_is_skipped() {
        let archive = zip_archive(|w| {
            zip_file(w, "s/SKILL.md", 0o644, b"a");
            w.add_symlink("s/link", "/etc/shadow", SimpleFileOptions::default())
                .unwrap();
        });
        let unpacked = unpack(&archive, &Limits::default()).unwrap();
        assert_eq!(paths(&unpacked), ["SKILL.md"]);
        assert_eq!(unpacked.skipped, ["s/link: symlink"]);
    }

    #[test]
    fn dot_components_are_normalised_and_last_duplicate_wins() {
        let tar = tar_archive(&[
            regular("./a/./SKILL.md", 0o644, b"old"),
            regular("a//SKILL.md", 0o755, b"new"),
            regular("a/other", 0o644, b"x"),
        ]);
        let unpacked = unpack(&tar, &Limits::default()).unwrap();
        assert_eq!(paths(&unpacked), ["SKILL.md", "other"]);
        assert_eq!(unpacked.files[0].data, b"new");
        assert_eq!(unpacked.files[0].mode, 0o755);
    }

    #[test]
    fn nul_and_non_utf8_names_are_refused() {
        let archive = zip_archive(|w| zip_file(w, "a\0b", 0o644, b"x"));
        let err = unpack(&archive, &Limits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::NulInName { .. }), "{err}");

        let tar = tar_archive(&[tar_entry(tar::EntryType::Regular, b"a\xffb", 0o644, b"x")]);
        let err = unpack(&tar, &Limits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::NonUtf8Name { .. }), "{err}");
    }

    #[test]
    fn file_and_directory_at_same_path_is_refused() {
        let tar = tar_archive(&[regular("a", 0o644, b"x"), regular("a/b", 0o644, b"y")]);
        let err = unpack(&tar, &Limits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::PathConflict { ref path } if path == "a"));
    }

    fn limits(max_files: usize, max_total_bytes: u64, max_file_bytes: u64) -> Limits {
        Limits {
            max_files,
            max_total_bytes,
            max_file_bytes,
        }
    }

    fn too_large(result: Result<Unpacked, UnpackError>) -> &'static str {
        match result {
            Err(UnpackError::TooLarge { limit, .. }) => limit,
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn zip_bomb_stops_at_file_limit() {
        let zeros = vec![0u8; 4 << 20];
        let archive = zip_archive(|w| zip_file(w, "bomb", 0o644, &zeros));
        assert!(archive.len() < 64 * 1024);
        assert_eq!(
            too_large(unpack(&archive, &limits(10, 1 << 30, 1 << 20))),
            "max_file_bytes"
        );
    }

    #[test]
    fn zip_declared_size_is_not_trusted() {
        let zeros = vec![0u8; 4 << 20];
        let mut archive = zip_archive(|w| zip_file(w, "bomb", 0o644, &zeros));
        // Claim an uncompressed size of 1 byte in both the local header and
        // the central directory.
        archive[22..26].copy_from_slice(&1u32.to_le_bytes());
        let central = archive.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
        archive[central + 24..central + 28].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            too_large(unpack(&archive, &limits(10, 1 << 30, 1 << 20))),
            "max_file_bytes"
        );
    }

    #[test]
    fn total_and_count_limits_are_enforced() {
        let tar = tar_archive(&[
            regular("a", 0o644, &[1; 600]),
            regular("b", 0o644, &[2; 600]),
        ]);
        assert_eq!(
            too_large(unpack(&tar, &limits(10, 1000, 700))),
            "max_total_bytes"
        );
        assert_eq!(
            too_large(unpack(&tar, &limits(1, 10_000, 10_000))),
            "max_files"
        );
        assert!(unpack(&tar, &limits(2, 1200, 600)).is_ok());
    }

    #[test]
    fn tar_gz_bomb_in_skipped_entry_stops_at_stream_cap() {
        // A symlink claiming 8 MiB of data: never extracted, but the tar
        // reader would still have to inflate it to skip it.
        let (mut header, _) = link_entry(tar::EntryType::Symlink, b"link", "x");
        header.set_size(8 << 20);
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.resize(512 + (8 << 20) + 1024, 0);
        let archive = gzip(&tar);
        assert!(archive.len() < 64 * 1024);
        let limit = too_large(unpack(&archive, &limits(1, 1 << 20, 1 << 20)));
        assert!(limit.starts_with("max_total_bytes"), "{limit}");
    }

    #[test]
    fn garbage_is_refused() {
        for garbage in [&b"definitely not an archive"[..], &[0x42; 2048]] {
            let err = unpack(garbage, &Limits::default()).unwrap_err();
            assert!(matches!(err, UnpackError::UnknownFormat { .. }), "{err}");
        }
        assert!(matches!(
            unpack(b"", &Limits::default()),
            Err(UnpackError::Empty)
        ));
        assert!(matches!(
            unpack(b"\xfd7zXZ\x00\x00\x04", &Limits::default()),
            Err(UnpackError::UnsupportedFormat { format: "xz" })
        ));
        assert!(matches!(
            unpack(b"PK\x03\x04truncated", &Limits::default()),
            Err(UnpackError::Zip(_))
        ));
        assert!(matches!(
            unpack(&[0x1f, 0x8b, 0, 1, 2, 3], &Limits::default()),
            Err(UnpackError::Corrupt(_))
        ));
    }

    #[test]
    fn dir_name_uses_basename_of_trimmed_name() {
        assert_eq!(dir_name("  pdf  ", "skill_1").unwrap(), "pdf");
        assert_eq!(dir_name("team/skills/pdf", "skill_1").unwrap(), "pdf");
        assert_eq!(dir_name("", "skill_1").unwrap(), "skill_1");
        assert_eq!(dir_name("   ", "skill_1").unwrap(), "skill_1");
        assert_eq!(dir_name("pdf/", "skill_1").unwrap(), "skill_1");
    }

    #[test]
    fn dir_name_rejects_unusable_names() {
        for (name, id) in [
            ("..", "s"),
            (".", "s"),
            ("a/..", "s"),
            ("", ""),
            ("", "a/b"),
            ("a\0b", "s"),
        ] {
            let err = dir_name(name, id).unwrap_err();
            assert!(
                matches!(err, UnpackError::InvalidDirName { .. }),
                "{name:?}/{id:?}: {err}"
            );
        }
    }
}
