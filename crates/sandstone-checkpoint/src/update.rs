//! Restoring over a tree this node already has (a sandbox's old volume,
//! kept when it moved away): compare what the tree holds with the
//! checkpoint, remove and create only the entries that differ, write into
//! a changed file only the chunks that are not already at their offset,
//! and set metadata only where it differs. A sandbox that comes back after
//! a small change costs that change, not its size.
//!
//! What the tree holds is read, not assumed: it is walked as a checkpoint
//! would walk it (files matching the hint's inode, size, ctime and mtime
//! are not read), so a copy that changed after its last checkpoint is
//! still brought exactly to the checkpoint.

use crate::fsmeta;
use crate::manifest::{CheckpointId, Entry, FileContent, HardLink, Kind, Manifest, OsBytes};
use crate::restore::{self, Plan, chunks_at, under};
use crate::{Checkpoints, Error, Restored, Result, blocking, io};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

impl Checkpoints {
    /// Brings the tree at `tree` to checkpoint `id` in place. `tree` must
    /// be a copy the caller can throw away: a failure part-way leaves it
    /// half-changed (nothing is written anywhere else). `hint` is a
    /// manifest this node has of the tree (the baseline of its restore or
    /// its last checkpoint here); without one every file is read.
    pub async fn restore_over(
        &self,
        id: &CheckpointId,
        tree: &Path,
        hint: Option<&Manifest>,
    ) -> Result<Restored> {
        let (loaded, current) =
            futures_util::future::join(self.load(id), self.describe(tree, hint)).await;
        let (manifest, located) = loaded?;
        let current = current?;
        restore::validate(&manifest).map_err(|reason| Error::InvalidManifest {
            checkpoint: id.clone(),
            reason,
        })?;
        let manifest = Arc::new(manifest);
        let (plan, touched) = blocking({
            let (manifest, tree) = (manifest.clone(), tree.to_path_buf());
            move || apply(&current, &manifest, &tree)
        })
        .await?;
        let stats = self.fill(id, &located, &manifest, plan).await?;
        let baseline = blocking({
            let (manifest, tree) = (manifest.clone(), tree.to_path_buf());
            move || {
                for (e, stale) in manifest.entries.iter().rev().filter_map(|e| {
                    let stale = touched.get(e.path.0.as_slice())?;
                    Some((e, stale))
                }) {
                    let stale: Vec<&OsBytes> = stale.iter().collect();
                    restore::set_metadata(&tree, e, &stale)?;
                }
                restore::baseline(&manifest, &tree)
            }
        })
        .await?;
        restore::log_restored(id, &stats);
        Ok(Restored { baseline, stats })
    }
}

/// Entries whose metadata a restore over a tree sets, by path, each with
/// the xattrs the tree has and the checkpoint has not.
type Touched = HashMap<Vec<u8>, Vec<OsBytes>>;

/// What becomes of an entry the tree has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// The checkpoint has the same thing at its path.
    Keep,
    /// A file with other contents there, changed in place.
    Rewrite,
    /// Gone, or something else at its path: removed.
    Remove,
}

fn fate(old: &Entry, new: Option<&&Entry>, linked: &HashSet<&[u8]>) -> Fate {
    let Some(new) = new else {
        return Fate::Remove;
    };
    match (&old.kind, &new.kind) {
        (Kind::File(a), Kind::File(b)) if same_content(a, b) => Fate::Keep,
        // A file with other names is replaced, never written: writing it
        // would change the names that keep the old contents.
        (Kind::File(_), Kind::File(_)) if !linked.contains(old.path.0.as_slice()) => Fate::Rewrite,
        // Directories, and the rest when its target or number is the same.
        (a, b) if a == b => Fate::Keep,
        _ => Fate::Remove,
    }
}

fn same_content(a: &FileContent, b: &FileContent) -> bool {
    a.size == b.size && a.extents == b.extents
}

fn same_metadata(a: &Entry, b: &Entry) -> bool {
    (a.mode, a.uid, a.gid, a.atime, a.mtime) == (b.mode, b.uid, b.gid, b.atime, b.mtime)
        && a.xattrs == b.xattrs
}

/// The parent of a manifest path (the root's parent is the root).
fn parent(path: &[u8]) -> &[u8] {
    path.iter()
        .rposition(|b| *b == b'/')
        .map_or(&path[..0], |at| &path[..at])
}

/// Removes and creates entries of the tree at `root` (described by
/// `current`) until it has `target`'s, and truncates, punches and plans
/// the writes of files changed in place. Returns the files to fill, and
/// the entries whose metadata must be set.
fn apply(
    current: &(Vec<Entry>, Vec<HardLink>),
    target: &Manifest,
    root: &Path,
) -> Result<(Plan, Touched)> {
    let (entries, links) = current;
    let old: HashMap<&[u8], &Entry> = entries.iter().map(|e| (e.path.0.as_slice(), e)).collect();
    let new: HashMap<&[u8], &Entry> = target
        .entries
        .iter()
        .map(|e| (e.path.0.as_slice(), e))
        .collect();
    let old_links: HashMap<&[u8], &[u8]> = links
        .iter()
        .map(|l| (l.path.0.as_slice(), l.target.0.as_slice()))
        .collect();
    let linked: HashSet<&[u8]> = links
        .iter()
        .chain(&target.hard_links)
        .map(|l| l.target.0.as_slice())
        .collect();
    let fates: HashMap<&[u8], Fate> = entries
        .iter()
        .map(|e| {
            (
                e.path.0.as_slice(),
                fate(e, new.get(e.path.0.as_slice()), &linked),
            )
        })
        .collect();
    let kept_link = |path: &[u8], to: &[u8]| {
        old_links.get(path) == Some(&to) && fates.get(to) == Some(&Fate::Keep)
    };
    let mut touched = Touched::new();
    // A directory an entry was removed from or made in has new times.
    let dirty = |touched: &mut Touched, path: &[u8]| {
        touched.entry(parent(path).to_vec()).or_default();
    };

    // Names first, then entries children first: a directory is empty of
    // what goes by the time it goes.
    for l in links {
        let keep = target
            .hard_links
            .iter()
            .any(|n| n.path == l.path && kept_link(&n.path.0, &n.target.0));
        if !keep {
            let path = under(root, &l.path);
            std::fs::remove_file(&path).map_err(io(format!("remove {path:?}")))?;
            dirty(&mut touched, &l.path.0);
        }
    }
    for e in entries[1..].iter().rev() {
        if fates[e.path.0.as_slice()] != Fate::Remove {
            continue;
        }
        let path = under(root, &e.path);
        let removed = if e.kind == Kind::Dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(io(format!("remove {path:?}")))?;
        dirty(&mut touched, &e.path.0);
    }

    // Then the checkpoint's entries, parents first.
    let mut plan = Plan::default();
    for e in &target.entries {
        let key = e.path.0.as_slice();
        let path = under(root, &e.path);
        let stale = |o: &Entry| -> Vec<OsBytes> {
            o.xattrs
                .iter()
                .filter(|x| !e.xattrs.iter().any(|y| y.name == x.name))
                .map(|x| x.name.clone())
                .collect()
        };
        match (old.get(key), fates.get(key)) {
            (Some(o), Some(Fate::Keep)) => {
                if !same_metadata(o, e) {
                    touched.insert(key.to_vec(), stale(o));
                }
            }
            (Some(o), Some(Fate::Rewrite)) => {
                let (Kind::File(was), Kind::File(is)) = (&o.kind, &e.kind) else {
                    unreachable!("only a file is rewritten, into a file");
                };
                rewrite(&path, was, is, &mut plan)?;
                touched.insert(key.to_vec(), stale(o));
            }
            _ => {
                restore::create(e, &path).map_err(io(format!("create {path:?}")))?;
                if let Kind::File(f) = &e.kind {
                    plan.file(path, chunks_at(f));
                }
                touched.insert(key.to_vec(), Vec::new());
                dirty(&mut touched, key);
            }
        }
    }
    for l in &target.hard_links {
        if kept_link(&l.path.0, &l.target.0) {
            continue;
        }
        let (path, to) = (under(root, &l.path), under(root, &l.target));
        std::fs::hard_link(&to, &path).map_err(io(format!("link {path:?} to {to:?}")))?;
        dirty(&mut touched, &l.path.0);
    }
    Ok((plan, touched))
}

/// Changes the file at `path` from `was` to `is` in place: its new size,
/// holes punched where it had data and now has none, and only the chunks
/// not already at their offset planned for writing.
fn rewrite(path: &Path, was: &FileContent, is: &FileContent, plan: &mut Plan) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(format!("open {path:?}")))?;
    file.set_len(is.size)
        .map_err(io(format!("truncate {path:?}")))?;
    for (offset, len) in uncovered(&data_ranges(was), &data_ranges(is), is.size) {
        fsmeta::punch_hole(&file, offset, len).map_err(io(format!("punch a hole in {path:?}")))?;
    }
    let there: HashSet<(u64, crate::ChunkId)> = chunks_at(was).map(|(at, c)| (at, c.id)).collect();
    plan.file(
        path.to_path_buf(),
        chunks_at(is).filter(|(at, c)| !there.contains(&(*at, c.id))),
    );
    Ok(())
}

/// A file's data extents as `(start, end)`.
fn data_ranges(f: &FileContent) -> Vec<(u64, u64)> {
    f.extents
        .iter()
        .map(|x| {
            let len: u64 = x.chunks.iter().map(|c| u64::from(c.len)).sum();
            (x.offset, x.offset + len)
        })
        .collect()
}

/// The parts of `old` (sorted, disjoint ranges) below `size` that no
/// range of `new` (sorted, disjoint) covers, as `(offset, length)`.
fn uncovered(old: &[(u64, u64)], new: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(start, end) in old {
        let (mut at, end) = (start, end.min(size));
        for &(s, e) in new {
            if e <= at || s >= end {
                continue;
            }
            if s > at {
                out.push((at, s - at));
            }
            at = at.max(e);
        }
        if at < end {
            out.push((at, end - at));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncovered_is_what_only_old_has() {
        assert_eq!(uncovered(&[(0, 100)], &[], 100), [(0, 100)]);
        assert_eq!(uncovered(&[(0, 100)], &[(0, 100)], 100), []);
        assert_eq!(
            uncovered(&[(0, 100)], &[(10, 20), (50, 60)], 100),
            [(0, 10), (20, 30), (60, 40)]
        );
        assert_eq!(
            uncovered(&[(0, 50), (80, 100)], &[(40, 90)], 100),
            [(0, 40), (90, 10)]
        );
        // Past the new size is cut off by the truncate.
        assert_eq!(uncovered(&[(0, 100)], &[], 30), [(0, 30)]);
        assert_eq!(uncovered(&[(50, 100)], &[], 30), []);
    }

    #[test]
    fn parents_of_manifest_paths() {
        assert_eq!(parent(b"a/b/c"), b"a/b");
        assert_eq!(parent(b"a"), b"");
    }
}
