//! What a node keeps on its own disk: a size-capped LRU cache of sealed
//! chunks (so a restore on a node that has seen the template or an older
//! generation fetches little or nothing), and the index of chunks known
//! to be in the store and the pack each lies in (so a checkpoint uploads
//! only chunks the store lacks without asking it about each, and names
//! where every chunk lies in its manifest).
//!
//! Cached chunks are only hints: they are opened and verified against
//! their id like downloaded ones (a bad one is dropped and fetched again).
//! The index is trusted, which is sound because the collector deletes a
//! pack only after every node has had the time to forget it (see `gc`).

use crate::manifest::ChunkId;
use crate::pack::{Location, PackId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Sealed chunks as `<dir>/<first two hex digits>/<id>`, evicted least
/// recently used first once their total passes the cap. Use order is kept
/// in memory; after a restart it starts from the files' modification
/// times (when they were cached).
pub(crate) struct ChunkCache {
    dir: PathBuf,
    cap: u64,
    lru: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    /// id → (last use, size).
    entries: HashMap<ChunkId, (u64, u64)>,
    by_use: BTreeMap<u64, ChunkId>,
    clock: u64,
    total: u64,
}

impl Lru {
    fn touch(&mut self, id: ChunkId, size: u64) {
        self.clock += 1;
        if let Some((used, old)) = self.entries.insert(id, (self.clock, size)) {
            self.by_use.remove(&used);
            self.total -= old;
        }
        self.by_use.insert(self.clock, id);
        self.total += size;
    }

    fn forget(&mut self, id: &ChunkId) {
        if let Some((used, size)) = self.entries.remove(id) {
            self.by_use.remove(&used);
            self.total -= size;
        }
    }
}

impl ChunkCache {
    pub(crate) fn open(dir: PathBuf, cap: u64) -> std::io::Result<ChunkCache> {
        std::fs::create_dir_all(&dir)?;
        let mut found = Vec::new();
        for sub in std::fs::read_dir(&dir)? {
            let sub = sub?;
            if !sub.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(sub.path())? {
                let f = f?;
                let name = f.file_name();
                let id = name.to_str().and_then(|n| n.parse::<ChunkId>().ok());
                let meta = f.metadata()?;
                match id {
                    Some(id) => found.push((meta.modified()?, id, meta.len())),
                    // A temporary file an older version left behind.
                    None => std::fs::remove_file(f.path())?,
                }
            }
        }
        found.sort();
        let mut lru = Lru::default();
        for (_, id, size) in found {
            lru.touch(id, size);
        }
        let cache = ChunkCache {
            dir,
            cap,
            lru: Mutex::new(lru),
        };
        cache.evict()?;
        Ok(cache)
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_string();
        self.dir.join(&hex[..2]).join(hex)
    }

    pub(crate) fn contains(&self, id: &ChunkId) -> bool {
        self.lru
            .lock()
            .expect("lock poisoned")
            .entries
            .contains_key(id)
    }

    /// The sealed chunk, if cached.
    pub(crate) fn get(&self, id: &ChunkId) -> Option<Vec<u8>> {
        let size = self.lru.lock().expect("lock poisoned").entries.get(id)?.1;
        match std::fs::read(self.path(id)) {
            Ok(data) => {
                self.lru.lock().expect("lock poisoned").touch(*id, size);
                Some(data)
            }
            Err(_) => {
                self.lru.lock().expect("lock poisoned").forget(id);
                None
            }
        }
    }

    /// Caches a sealed chunk, written in place: no temporary file and
    /// rename per chunk (a cold restore caches thousands), since a torn
    /// write (a crash, or a reader racing a writer of the same chunk) fails
    /// verification when read, like any bad cached chunk, and is fetched
    /// again.
    pub(crate) fn put(&self, id: &ChunkId, sealed: &[u8]) -> std::io::Result<()> {
        let size = sealed.len() as u64;
        if size > self.cap {
            return Ok(());
        }
        let path = self.path(id);
        match std::fs::write(&path, sealed) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(path.parent().unwrap_or(&self.dir))?;
                std::fs::write(&path, sealed)?;
            }
            r => r?,
        }
        self.lru.lock().expect("lock poisoned").touch(*id, size);
        self.evict()
    }

    /// Drops a chunk that failed verification.
    pub(crate) fn remove(&self, id: &ChunkId) {
        self.lru.lock().expect("lock poisoned").forget(id);
        let _ = std::fs::remove_file(self.path(id));
    }

    fn evict(&self) -> std::io::Result<()> {
        loop {
            let victim = {
                let mut lru = self.lru.lock().expect("lock poisoned");
                if lru.total <= self.cap {
                    return Ok(());
                }
                let Some((_, id)) = lru.by_use.pop_first() else {
                    return Ok(());
                };
                lru.forget(&id);
                id
            };
            match std::fs::remove_file(self.path(&victim)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }

    #[cfg(test)]
    fn total(&self) -> u64 {
        self.lru.lock().expect("lock poisoned").total
    }
}

/// Chunks known to be in the store, and where: a map in memory, and an
/// append-only file of records (chunk id, pack, offset, length; a torn
/// last record is cut off). A chunk is added only once the pack holding
/// it is uploaded whole (or a manifest or pack index names it).
pub(crate) struct ChunkIndex {
    known: Mutex<Known>,
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

#[derive(Default)]
struct Known {
    chunks: HashMap<ChunkId, Location>,
    packs: HashSet<PackId>,
}

const RECORD: usize = 32 + 16 + 4 + 4;

impl Known {
    fn insert(&mut self, id: ChunkId, at: Location) -> bool {
        match self.chunks.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(at);
                self.packs.insert(at.pack);
                true
            }
        }
    }
}

impl ChunkIndex {
    pub(crate) fn open(path: &Path) -> std::io::Result<ChunkIndex> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        // Cut a torn record off, so that appends stay aligned.
        let whole = data.len() - data.len() % RECORD;
        if whole != data.len() {
            file.set_len(whole as u64)?;
        }
        let mut known = Known::default();
        for r in data.chunks_exact(RECORD) {
            let (id, rest) = r.split_at(32);
            let (pack, rest) = rest.split_at(16);
            let (offset, len) = rest.split_at(4);
            let word = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default());
            known.insert(
                ChunkId(id.try_into().unwrap_or_default()),
                Location {
                    pack: PackId::from_bytes(pack.try_into().unwrap_or_default()),
                    offset: word(offset),
                    len: word(len),
                },
            );
        }
        Ok(ChunkIndex {
            known: Mutex::new(known),
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// The packs it knows chunks in.
    pub(crate) fn packs(&self) -> HashSet<PackId> {
        self.known.lock().expect("lock poisoned").packs.clone()
    }

    /// Forgets every chunk located in one of `packs` (the collector is
    /// deleting them), in memory and on disk: the file is rewritten
    /// without their records and renamed over the old one.
    pub(crate) fn forget_packs(&self, packs: &HashSet<PackId>) -> std::io::Result<()> {
        let mut known = self.known.lock().expect("lock poisoned");
        if !known.packs.iter().any(|p| packs.contains(p)) {
            return Ok(());
        }
        known.chunks.retain(|_, at| !packs.contains(&at.pack));
        known.packs.retain(|p| !packs.contains(p));
        let mut data = Vec::with_capacity(known.chunks.len() * RECORD);
        for (id, at) in &known.chunks {
            record(&mut data, id, at);
        }
        let mut file = self.file.lock().expect("lock poisoned");
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(".index-")
            .tempfile_in(dir)?;
        tmp.write_all(&data)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        *file = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        Ok(())
    }

    pub(crate) fn contains(&self, id: &ChunkId) -> bool {
        self.get(id).is_some()
    }

    pub(crate) fn get(&self, id: &ChunkId) -> Option<Location> {
        self.known
            .lock()
            .expect("lock poisoned")
            .chunks
            .get(id)
            .copied()
    }

    /// Whether a chunk is known to lie in `pack` (its index was read, or
    /// it was written here). A pack holding only chunks known elsewhere
    /// stays unknown, and its index is read again at the next sync.
    pub(crate) fn knows_pack(&self, pack: &PackId) -> bool {
        self.known
            .lock()
            .expect("lock poisoned")
            .packs
            .contains(pack)
    }

    /// Records chunks now known to be stored, in one write; a chunk known
    /// already keeps its first location.
    pub(crate) fn add(
        &self,
        chunks: impl IntoIterator<Item = (ChunkId, Location)>,
    ) -> std::io::Result<()> {
        let mut known = self.known.lock().expect("lock poisoned");
        let mut new = Vec::new();
        for (id, at) in chunks {
            if known.insert(id, at) {
                record(&mut new, &id, &at);
            }
        }
        drop(known);
        if new.is_empty() {
            return Ok(());
        }
        self.file.lock().expect("lock poisoned").write_all(&new)
    }
}

/// Appends chunk `id`'s index record to `out`.
fn record(out: &mut Vec<u8>, id: &ChunkId, at: &Location) {
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&at.pack.to_bytes());
    out.extend_from_slice(&at.offset.to_le_bytes());
    out.extend_from_slice(&at.len.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_evicts_least_recently_used_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path().join("c"), 250).unwrap();
        let (a, b, c) = (ChunkId([1; 32]), ChunkId([2; 32]), ChunkId([3; 32]));
        cache.put(&a, &[1; 100]).unwrap();
        cache.put(&b, &[2; 100]).unwrap();
        assert_eq!(cache.get(&a).unwrap(), vec![1; 100]); // a is now newer than b
        cache.put(&c, &[3; 100]).unwrap();
        assert!(cache.get(&b).is_none(), "b was least recently used");
        assert!(cache.get(&a).is_some() && cache.get(&c).is_some());
        assert_eq!(cache.total(), 200);
        cache.put(&b, &[0; 300]).unwrap(); // larger than the cap: not cached
        assert!(cache.get(&b).is_none());
        cache.remove(&c);
        assert!(cache.get(&c).is_none());
        let reopened = ChunkCache::open(dir.path().join("c"), 100).unwrap();
        assert_eq!(reopened.total(), 100);
        assert!(reopened.get(&a).is_some());
    }

    #[test]
    fn chunk_index_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let k = ChunkIndex::open(&path).unwrap();
        let (p, q) = (PackId::new().unwrap(), PackId::new().unwrap());
        let at = |pack, offset| Location {
            pack,
            offset,
            len: 10,
        };
        k.add([
            (ChunkId([1; 32]), at(p, 0)),
            (ChunkId([2; 32]), at(p, 10)),
            (ChunkId([1; 32]), at(q, 0)),
        ])
        .unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * RECORD as u64);
        // The first location stays.
        assert_eq!(k.get(&ChunkId([1; 32])), Some(at(p, 0)));
        assert!(k.knows_pack(&p) && !k.knows_pack(&q));
        // A torn record from a crash is ignored.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[9; 5])
            .unwrap();
        let k = ChunkIndex::open(&path).unwrap();
        assert_eq!(k.get(&ChunkId([2; 32])), Some(at(p, 10)));
        assert!(!k.contains(&ChunkId([9; 32])));
        assert!(k.knows_pack(&p) && !k.knows_pack(&q));
        k.add([(ChunkId([3; 32]), at(q, 20))]).unwrap();
        let k = ChunkIndex::open(&path).unwrap();
        assert_eq!(k.get(&ChunkId([3; 32])), Some(at(q, 20)));
        // Forgetting a pack forgets its chunks, also after a reopen, and
        // appends go on after it.
        k.forget_packs(&HashSet::from([p])).unwrap();
        assert!(!k.contains(&ChunkId([1; 32])) && !k.knows_pack(&p));
        k.add([(ChunkId([4; 32]), at(q, 30))]).unwrap();
        let k = ChunkIndex::open(&path).unwrap();
        assert!(!k.contains(&ChunkId([2; 32])) && !k.knows_pack(&p));
        assert_eq!(k.get(&ChunkId([3; 32])), Some(at(q, 20)));
        assert_eq!(k.get(&ChunkId([4; 32])), Some(at(q, 30)));
    }
}
