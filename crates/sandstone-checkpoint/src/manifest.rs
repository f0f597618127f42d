//! The manifest of one checkpoint: every entry of the tree with its
//! metadata, and for regular files the chunks of their data extents.
//!
//! It is serialised as JSON, then compressed and sealed like a chunk (see
//! [`crate::object`]). Paths, link targets and xattr names are bytes as the
//! kernel gave them ([`OsBytes`]: text when UTF-8, else base64), owners are
//! the numbers on disk (volumes are stored unshifted), and modes keep the
//! setuid, setgid and sticky bits.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The manifest format this crate writes and reads. Format 2 stores
/// chunks in packs (format 1, one object per chunk, is not read).
pub const FORMAT: u32 = 2;

/// A chunk's id: keyed BLAKE3 of its plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub(crate) [u8; 32]);

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

impl std::str::FromStr for ChunkId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bytes = hex::decode(s).map_err(|_| format!("chunk id {s:?} is not hex"))?;
        let id = bytes
            .try_into()
            .map_err(|_| format!("chunk id {s:?} is not 64 hex digits"))?;
        Ok(ChunkId(id))
    }
}

impl Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A sandbox's id as it appears in object keys: 1 to 128 of
/// `[A-Za-z0-9_-]`, so it can never make a key step out of its folder.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxId(String);

impl SandboxId {
    pub fn new(id: impl Into<String>) -> Result<SandboxId, crate::Error> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(SandboxId(id))
        } else {
            Err(crate::Error::InvalidSandboxId(id))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SandboxId {
    type Error = crate::Error;
    fn try_from(s: String) -> Result<Self, crate::Error> {
        SandboxId::new(s)
    }
}

impl From<SandboxId> for String {
    fn from(id: SandboxId) -> String {
        id.0
    }
}

/// Which checkpoint: a sandbox's, written under a fencing `epoch` (the
/// owner's lease number) as its `generation`-th. Checkpoints order by
/// epoch first: whatever an old owner wrote after losing its lease is
/// older than anything the new owner writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CheckpointId {
    pub sandbox: SandboxId,
    pub epoch: u64,
    pub generation: u64,
}

impl CheckpointId {
    pub fn new(sandbox: SandboxId, epoch: u64, generation: u64) -> CheckpointId {
        CheckpointId {
            sandbox,
            epoch,
            generation,
        }
    }

    /// The folder of a sandbox's manifests.
    pub(crate) fn folder(sandbox: &SandboxId) -> String {
        format!("manifests/{sandbox}/")
    }

    /// Its manifest's object key; zero-padded so keys sort as ids do.
    pub(crate) fn key(&self) -> String {
        format!(
            "{}{:020}-{:020}",
            Self::folder(&self.sandbox),
            self.epoch,
            self.generation
        )
    }

    /// The id any manifest key names.
    pub(crate) fn from_any_key(key: &str) -> Option<CheckpointId> {
        let rest = key.strip_prefix("manifests/")?;
        let (sandbox, _) = rest.split_once('/')?;
        let sandbox = SandboxId::new(sandbox).ok()?;
        CheckpointId::from_key(&sandbox, key)
    }

    /// The id a manifest key names, if it is one of `sandbox`'s.
    pub(crate) fn from_key(sandbox: &SandboxId, key: &str) -> Option<CheckpointId> {
        let name = key.strip_prefix(&Self::folder(sandbox))?;
        let (epoch, generation) = name.split_once('-')?;
        let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(epoch) || !digits(generation) {
            return None;
        }
        Some(CheckpointId::new(
            sandbox.clone(),
            epoch.parse().ok()?,
            generation.parse().ok()?,
        ))
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checkpoint {} of sandbox {} (epoch {})",
            self.generation, self.sandbox, self.epoch
        )
    }
}

/// Bytes from the kernel (a path, a link target, an xattr name): JSON text
/// when they are UTF-8, else `{"base64": ...}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct OsBytes(pub Vec<u8>);

impl fmt::Debug for OsBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl Serialize for OsBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => Repr::Raw {
                base64: B64.encode(&self.0),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for OsBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(OsBytes(t.into_bytes())),
            Repr::Raw { base64 } => B64
                .decode(base64)
                .map(OsBytes)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr {
    Text(String),
    Raw { base64: String },
}

/// Seconds and nanoseconds since the epoch, as `[secs, nanos]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "(i64, u32)", into = "(i64, u32)")]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    /// From `stat`'s seconds and nanoseconds fields.
    pub(crate) fn from_stat(secs: i64, nanos: i64) -> Timestamp {
        Timestamp {
            secs,
            nanos: nanos as u32,
        }
    }
}

impl From<(i64, u32)> for Timestamp {
    fn from((secs, nanos): (i64, u32)) -> Self {
        Timestamp { secs, nanos }
    }
}

impl From<Timestamp> for (i64, u32) {
    fn from(t: Timestamp) -> Self {
        (t.secs, t.nanos)
    }
}

/// One checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: CheckpointId,
    pub created_unix_ms: u64,
    /// Parents before children; the root (empty path) first.
    pub entries: Vec<Entry>,
    /// Further names of inodes listed in `entries` (hard links).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hard_links: Vec<HardLink>,
}

impl Manifest {
    /// Every chunk it refers to, repeats included.
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkRef> {
        self.entries
            .iter()
            .flat_map(|e| match &e.kind {
                Kind::File(f) => f.extents.as_slice(),
                _ => &[],
            })
            .flat_map(|x| &x.chunks)
    }
}

/// One inode of the tree, under the first path it was found at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the tree's root, `/`-separated; empty for the root.
    pub path: OsBytes,
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`st_mode & 07777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Kind {
    Dir,
    File(FileContent),
    Symlink {
        target: OsBytes,
    },
    /// An overlay whiteout is a character device 0/0.
    CharDevice {
        rdev: u64,
    },
    BlockDevice {
        rdev: u64,
    },
    Fifo,
    Socket,
}

/// A regular file: its size and the chunks of its data extents; what lies
/// between extents (and after the last, up to `size`) is a hole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileContent {
    pub size: u64,
    /// With `ctime`, `size` and the entry's `mtime`, what tells the next
    /// checkpoint on this node that the file is unchanged.
    pub ino: u64,
    pub ctime: Timestamp,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extents: Vec<Extent>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub chunks: Vec<ChunkRef>,
}

/// A chunk and its plaintext length, as `["<id>", len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(ChunkId, u32)", into = "(ChunkId, u32)")]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

impl From<(ChunkId, u32)> for ChunkRef {
    fn from((id, len): (ChunkId, u32)) -> Self {
        ChunkRef { id, len }
    }
}

impl From<ChunkRef> for (ChunkId, u32) {
    fn from(c: ChunkRef) -> Self {
        (c.id, c.len)
    }
}

/// `path` is another name of the inode listed at `target`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardLink {
    pub path: OsBytes,
    pub target: OsBytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: OsBytes,
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
}

mod base64_bytes {
    use super::B64;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        B64.decode(String::deserialize(d)?)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_through_json() {
        let id = CheckpointId::new(SandboxId::new("sb-1").unwrap(), 3, 7);
        let m = Manifest {
            format: FORMAT,
            id: id.clone(),
            created_unix_ms: 1,
            entries: vec![Entry {
                path: OsBytes(b"odd\xffname".to_vec()),
                kind: Kind::File(FileContent {
                    size: 10,
                    ino: 5,
                    ctime: Timestamp { secs: 1, nanos: 2 },
                    extents: vec![Extent {
                        offset: 4,
                        chunks: vec![ChunkRef {
                            id: ChunkId([7; 32]),
                            len: 6,
                        }],
                    }],
                }),
                mode: 0o4755,
                uid: 100000,
                gid: 100000,
                atime: Timestamp::default(),
                mtime: Timestamp { secs: -5, nanos: 9 },
                xattrs: vec![Xattr {
                    name: OsBytes(b"trusted.overlay.opaque".to_vec()),
                    value: b"y".to_vec(),
                }],
            }],
            hard_links: vec![],
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(
            json.contains(r#""path":{"base64":"b2Rk/25hbWU="}"#),
            "{json}"
        );
        assert!(
            json.contains(r#""name":"trusted.overlay.opaque""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
        assert_eq!(m.chunks().count(), 1);
    }

    #[test]
    fn ids_make_safe_sortable_keys() {
        let sb = SandboxId::new("a_B-9").unwrap();
        for bad in ["", "a/b", "..", "a b", &"x".repeat(129)] {
            let e = SandboxId::new(bad).unwrap_err();
            assert!(e.to_string().contains("sandbox id"), "{e}");
        }
        let a = CheckpointId::new(sb.clone(), 1, 10);
        let b = CheckpointId::new(sb.clone(), 2, 3);
        assert!(a < b && a.key() < b.key());
        assert_eq!(CheckpointId::from_key(&sb, &b.key()), Some(b.clone()));
        assert_eq!(CheckpointId::from_key(&sb, "manifests/a_B-9/x-1"), None);
        let other = SandboxId::new("a_B").unwrap();
        assert_eq!(CheckpointId::from_key(&other, &b.key()), None);
    }
}
