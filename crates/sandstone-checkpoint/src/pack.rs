//! Packs: a checkpoint's new chunks, each sealed on its own (see
//! [`crate::object`]), appended into objects of about [`PACK_TARGET`]
//! bytes, so that a store charging per request (S3: a few milliseconds
//! each) moves a gigabyte in a hundred requests rather than sixteen
//! thousand.
//!
//! - `packs/<pack>`: the sealed chunks back to back. A pack's name is the
//!   time it was made (milliseconds, zero-padded) and 8 random bytes, so
//!   names never collide across nodes and sort by age.
//! - `pack-index/<stored-ms>-<pack>`: which chunk lies where in that pack,
//!   sealed; written after the pack, so an index names a complete pack.
//!   Nodes read the indexes they have not seen to find chunks stored by
//!   others; named by when they were stored, so that a node lists only
//!   those stored since it last looked (less a margin for clocks).
//! - Each manifest carries a [`PackTable`]: where every chunk it names
//!   lies. A restore needs nothing but the manifest to find its chunks.

use crate::key::{KeyError, Keys};
use crate::manifest::{ChunkId, Manifest};
use crate::object::{self, ObjectError};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// A pack is closed and uploaded once it holds this much: large enough
/// that per-request costs vanish beside transfer time, small enough that
/// `concurrency` packs in flight stay within tens of megabytes.
pub(crate) const PACK_TARGET: usize = 8 << 20;
/// A checkpoint's first pack closes at this size, and each next one at
/// twice the last up to [`PACK_TARGET`] (1, 2, 4, 8, 8, ... MiB): the first
/// upload starts after a megabyte is sealed rather than eight, which is
/// most of a small checkpoint's time.
const FIRST_PACK: usize = 1 << 20;

/// The folder of pack indexes.
pub(crate) const INDEX_FOLDER: &str = "pack-index/";

/// A pack's name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PackId {
    made_ms: u64,
    random: [u8; 8],
}

impl PackId {
    pub(crate) fn new() -> Result<PackId, KeyError> {
        Ok(PackId {
            made_ms: sandstone_api::timefmt::now_ms() as u64,
            random: crate::key::random()?,
        })
    }

    pub(crate) fn key(&self) -> String {
        format!("packs/{self}")
    }

    /// When it was made (its writer's clock).
    pub(crate) fn made_ms(&self) -> u64 {
        self.made_ms
    }

    /// Its index's key, when stored at `stored_ms`.
    pub(crate) fn index_key(&self, stored_ms: u64) -> String {
        format!("{INDEX_FOLDER}{stored_ms:016}-{self}")
    }

    /// When an index was stored and which pack it describes.
    pub(crate) fn from_index_key(key: &str) -> Option<(u64, PackId)> {
        let (ms, pack) = key.strip_prefix(INDEX_FOLDER)?.split_once('-')?;
        if ms.len() != 16 || !ms.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((ms.parse().ok()?, pack.parse().ok()?))
    }

    /// A key that every index stored at `ms` or later sorts after.
    pub(crate) fn indexes_from(ms: u64) -> String {
        format!("{INDEX_FOLDER}{ms:016}")
    }

    pub(crate) fn to_bytes(self) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&self.made_ms.to_be_bytes());
        b[8..].copy_from_slice(&self.random);
        b
    }

    pub(crate) fn from_bytes(b: [u8; 16]) -> PackId {
        let (ms, random) = b.split_at(8);
        PackId {
            made_ms: u64::from_be_bytes(ms.try_into().unwrap_or_default()),
            random: random.try_into().unwrap_or_default(),
        }
    }
}

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016}-{}", self.made_ms, hex::encode(self.random))
    }
}

impl fmt::Debug for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackId({self})")
    }
}

impl std::str::FromStr for PackId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("pack name {s:?} is not <16 digits>-<16 hex digits>");
        let (ms, random) = s.split_once('-').ok_or_else(bad)?;
        if ms.len() != 16 || !ms.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let random = hex::decode(random)
            .ok()
            .and_then(|r| <[u8; 8]>::try_from(r).ok())
            .ok_or_else(bad)?;
        Ok(PackId {
            made_ms: ms.parse().map_err(|_| bad())?,
            random,
        })
    }
}

impl Serialize for PackId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PackId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Where a sealed chunk lies: its pack, and its byte range there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) pack: PackId,
    pub(crate) offset: u32,
    pub(crate) len: u32,
}

impl Location {
    pub(crate) fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.len)
    }
}

/// A pack being filled: the `number`-th of its checkpoint.
pub(crate) struct PackBuilder {
    id: PackId,
    number: u32,
    target: usize,
    data: Vec<u8>,
    chunks: Vec<(ChunkId, Location)>,
}

/// A closed pack, ready to upload: the pack, its sealed index, and where
/// its chunks are.
pub(crate) struct Sealed {
    pub(crate) id: PackId,
    pub(crate) data: Vec<u8>,
    pub(crate) index: Vec<u8>,
    pub(crate) chunks: Vec<(ChunkId, Location)>,
}

impl PackBuilder {
    pub(crate) fn new(number: u32) -> Result<PackBuilder, KeyError> {
        // (Capped before shifting: past a few doublings it is the target.)
        let target = (FIRST_PACK << number.min(8)).min(PACK_TARGET);
        Ok(PackBuilder {
            id: PackId::new()?,
            number,
            target,
            data: Vec::with_capacity(target + (512 << 10)),
            chunks: Vec::new(),
        })
    }

    pub(crate) fn number(&self) -> u32 {
        self.number
    }

    /// Appends a sealed chunk.
    pub(crate) fn push(&mut self, id: ChunkId, sealed: &[u8]) {
        let location = Location {
            pack: self.id,
            offset: self.data.len() as u32,
            len: sealed.len() as u32,
        };
        self.data.extend_from_slice(sealed);
        self.chunks.push((id, location));
    }

    pub(crate) fn is_full(&self) -> bool {
        self.data.len() >= self.target
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub(crate) fn seal(self, keys: &Keys) -> Result<Sealed, ObjectError> {
        let index = object::seal_pack_index(keys, &self.id, &self.chunks)?;
        Ok(Sealed {
            id: self.id,
            data: self.data,
            index,
            chunks: self.chunks,
        })
    }
}

/// Where each chunk a manifest names lies, as stored beside it in the
/// manifest object: the packs once each, then for every distinct chunk in
/// the order [`Manifest::chunks`] first names it, `[pack number, offset,
/// length]` (ids are not repeated: they are in the manifest already).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PackTable {
    packs: Vec<PackId>,
    chunks: Vec<(u32, u32, u32)>,
}

/// Every distinct chunk of a manifest, in the order it first names them.
fn distinct(manifest: &Manifest) -> impl Iterator<Item = ChunkId> + '_ {
    let mut seen = HashSet::new();
    manifest
        .chunks()
        .map(|c| c.id)
        .filter(move |id| seen.insert(*id))
}

impl PackTable {
    /// The table of `manifest`, with `locate` saying where each chunk is;
    /// the first chunk it does not know, as the error.
    pub(crate) fn build(
        manifest: &Manifest,
        locate: impl Fn(&ChunkId) -> Option<Location>,
    ) -> Result<PackTable, ChunkId> {
        let mut table = PackTable::default();
        let mut numbers = HashMap::new();
        for id in distinct(manifest) {
            let at = locate(&id).ok_or(id)?;
            let number = *numbers.entry(at.pack).or_insert_with(|| {
                table.packs.push(at.pack);
                table.packs.len() as u32 - 1
            });
            table.chunks.push((number, at.offset, at.len));
        }
        Ok(table)
    }

    /// The packs it names.
    pub(crate) fn packs(&self) -> &[PackId] {
        &self.packs
    }

    /// Where each chunk of `manifest` lies; refuses a table that does not
    /// fit the manifest.
    pub(crate) fn resolve(
        &self,
        manifest: &Manifest,
    ) -> Result<HashMap<ChunkId, Location>, String> {
        let ids: Vec<ChunkId> = distinct(manifest).collect();
        if ids.len() != self.chunks.len() {
            return Err(format!(
                "it names {} distinct chunks but locates {}",
                ids.len(),
                self.chunks.len()
            ));
        }
        ids.into_iter()
            .zip(&self.chunks)
            .map(|(id, &(number, offset, len))| {
                let pack = *self
                    .packs
                    .get(number as usize)
                    .ok_or_else(|| format!("chunk {id} is in pack number {number}, not listed"))?;
                Ok((id, Location { pack, offset, len }))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_grow_from_one_mib_to_the_target() {
        let targets: Vec<usize> = (0..6)
            .map(|n| PackBuilder::new(n).unwrap().target >> 20)
            .collect();
        assert_eq!(targets, [1, 2, 4, 8, 8, 8]);
        assert_eq!(PackBuilder::new(70).unwrap().target, PACK_TARGET);
    }

    #[test]
    fn pack_names_round_trip_and_sort_by_age() {
        let a = PackId {
            made_ms: 1_700_000_000_000,
            random: [0xff; 8],
        };
        let b = PackId {
            made_ms: 1_700_000_000_001,
            random: [0; 8],
        };
        assert_eq!(a.to_string(), "0001700000000000-ffffffffffffffff");
        assert!(a.key() < b.key());
        // Indexes sort by when they were stored, not by pack.
        assert!(b.index_key(5) < a.index_key(6));
        assert!(PackId::indexes_from(6) < a.index_key(6));
        assert!(PackId::indexes_from(7) > a.index_key(6));
        assert_eq!(PackId::from_index_key(&a.index_key(6)), Some((6, a)));
        assert_eq!(PackId::from_bytes(a.to_bytes()), a);
        assert_eq!(PackId::from_index_key("pack-index/123-ab"), None);
        assert_eq!(PackId::from_index_key(&a.key()), None);
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<PackId>(&json).unwrap(), b);
    }
}
