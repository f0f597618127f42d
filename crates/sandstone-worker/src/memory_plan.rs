//! Three-way sync planning between a remote memory store and its local
//! mirror directory.
//!
//! The worker mirrors a memory store into a directory the agent can edit.
//! Each sync compares three states per path: what the store lists now
//! ([`Remote`]), what the worker last synced ([`Baseline`]) and what is on
//! disk ([`Local`]). Comparing against the baseline is what tells *who*
//! changed a file, so an edit is pushed, a store update is pulled and a
//! deletion on either side is propagated instead of being undone.
//!
//! This module only decides; it performs no I/O. The caller executes the
//! returned [`Action`]s and owns all state. In particular the caller:
//!
//! * checks the mirror's marker file before planning, so a directory that
//!   was replaced or never populated is not mistaken for "the agent deleted
//!   everything" (the [`plan`] wipe guard is only a second line of defence);
//! * updates the baseline as documented on each [`Action`];
//! * drops a path's `missing_since` entry once it exists locally again, is
//!   deleted, or is forgotten;
//! * drops a path's `refused` entry once its local sha changes.
//!
//! When the two sides disagree and both changed, the store wins: the local
//! edit is overwritten by a pull and a warning is logged.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a file must stay missing locally before its deletion is pushed.
/// Editors and tools often delete-then-recreate a file when saving; pushing
/// that transient absence would delete the memory for every other reader.
pub const DELETE_GRACE: Duration = Duration::from_secs(30);

/// A memory as listed by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub id: String,
    /// `content_sha256` as listed (lowercase hex).
    pub sha: String,
}

/// The state of a path as of the last successful sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Baseline {
    pub id: String,
    pub sha: String,
}

/// A file in the local mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// [`sha256_hex`] of the file's contents.
    pub sha: String,
}

/// What to do with local deletions that are due to be pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteMode {
    /// Delete the memory in the store.
    Enabled,
    /// Emit [`Action::WouldDelete`] instead, so operators can watch what
    /// would be deleted before enabling it.
    LogOnly,
    /// Never propagate local deletions.
    Disabled,
}

/// Everything [`plan`] looks at. All maps are keyed by the memory path.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub remote: &'a BTreeMap<String, Remote>,
    pub baseline: &'a BTreeMap<String, Baseline>,
    pub local: &'a BTreeMap<String, Local>,
    /// Read-only stores never receive pushes or deletions.
    pub read_only: bool,
    /// When each baseline path was first seen missing locally.
    pub missing_since: &'a BTreeMap<String, Instant>,
    pub now: Instant,
    /// The last sync before the session ends: there is no later sync to
    /// honour [`DELETE_GRACE`], so due deletions are pushed immediately.
    pub final_sync: bool,
    /// Path → local sha the store refused (400/413). Retrying the same
    /// contents would fail the same way, so it is not pushed until it changes.
    pub refused: &'a BTreeMap<String, String>,
    pub delete_mode: DeleteMode,
    /// Most [`Action::DeleteRemote`]s in one plan; the rest wait for the next
    /// plan, which bounds the damage of a mistaken mass deletion.
    pub max_deletes: usize,
}

/// One step for the caller. At most one action is planned per path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Download the memory over the local file. Baseline ← `{id, remote sha}`.
    Pull { path: String, id: String },
    /// Upload the local file: an update of `id` guarded by
    /// `precondition_sha` (the store's listed sha), or a create when `id` is
    /// `None`. On success baseline ← `{returned id, local sha}`; on 400/413
    /// record the local sha in `refused`.
    Push {
        path: String,
        id: Option<String>,
        precondition_sha: Option<String>,
    },
    /// Delete the memory, guarded by `expected_sha` (the baseline sha). On
    /// success drop the baseline.
    DeleteRemote {
        path: String,
        id: String,
        expected_sha: String,
    },
    /// The store deleted the memory and the local copy is unedited: remove
    /// the local file and drop the baseline.
    DeleteLocal { path: String },
    /// Both sides changed differently (or the file was deleted locally but
    /// edited in the store). The store wins: pull as for [`Action::Pull`]
    /// and log a warning, since the local edit is lost.
    Conflict { path: String, id: String },
    /// A baseline file is missing locally for the first time: set
    /// `missing_since[path] = now` to start the [`DELETE_GRACE`] clock.
    MarkMissing { path: String },
    /// [`DeleteMode::LogOnly`]: log that `path` would be deleted remotely.
    WouldDelete { path: String },
    /// Local and remote already agree but the baseline does not record it
    /// (first sync, or both sides made the same change): baseline ←
    /// `{id, sha}`, nothing to transfer.
    Adopt {
        path: String,
        id: String,
        sha: String,
    },
    /// The path is gone on both sides: drop its baseline.
    Forget { path: String },
}

/// Lowercase hex SHA-256, the form memory stores list as `content_sha256`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Decides the actions for one sync, in path order.
pub fn plan(i: &Inputs) -> Vec<Action> {
    if mirror_wiped(i) {
        return i
            .remote
            .iter()
            .map(|(path, remote)| pull(path, remote))
            .collect();
    }
    let paths: BTreeSet<&String> = i
        .remote
        .keys()
        .chain(i.baseline.keys())
        .chain(i.local.keys())
        .collect();
    let mut deletes_left = i.max_deletes;
    paths
        .into_iter()
        .filter_map(|path| plan_path(i, path, &mut deletes_left))
        .collect()
}

/// An empty mirror with a non-empty baseline looks like the agent deleting
/// every memory, but is far more likely a wiped or remounted directory.
/// Treating it as deletions would empty the store, so it is re-downloaded.
fn mirror_wiped(i: &Inputs) -> bool {
    i.local.is_empty() && !i.baseline.is_empty()
}

fn plan_path(i: &Inputs, path: &str, deletes_left: &mut usize) -> Option<Action> {
    let remote = i.remote.get(path);
    let baseline = i.baseline.get(path);
    let local = i.local.get(path);
    match (remote, baseline, local) {
        (Some(r), b, Some(l)) if l.sha == r.sha => adopt_if_stale(path, r, b),
        (Some(r), None, None) => Some(pull(path, r)),
        // Both sides created the path with different contents.
        (Some(r), None, Some(_)) => Some(conflict(path, r)),
        (Some(r), Some(b), Some(l)) => both_present(i, path, r, b, l),
        (Some(r), Some(b), None) => missing_locally(i, path, r, b, deletes_left),
        (None, Some(b), Some(l)) => deleted_remotely(i, path, b, l),
        (None, Some(_), None) => Some(Action::Forget { path: path.into() }),
        (None, None, Some(l)) => push(i, path, None, l),
        // Unreachable: every path comes from one of the maps.
        (None, None, None) => None,
    }
}

/// Local and remote agree; only the baseline may need catching up.
fn adopt_if_stale(path: &str, r: &Remote, b: Option<&Baseline>) -> Option<Action> {
    let current = b.is_some_and(|b| b.id == r.id && b.sha == r.sha);
    (!current).then(|| Action::Adopt {
        path: path.into(),
        id: r.id.clone(),
        sha: r.sha.clone(),
    })
}

/// Present on both sides with different contents: the baseline tells which
/// side moved.
fn both_present(i: &Inputs, path: &str, r: &Remote, b: &Baseline, l: &Local) -> Option<Action> {
    if r.sha == b.sha {
        push(i, path, Some(r), l)
    } else if l.sha == b.sha {
        Some(pull(path, r))
    } else {
        Some(conflict(path, r))
    }
}

/// In the store and the baseline, but not on disk.
fn missing_locally(
    i: &Inputs,
    path: &str,
    r: &Remote,
    b: &Baseline,
    deletes_left: &mut usize,
) -> Option<Action> {
    if r.sha != b.sha {
        // Deleted here, edited there: the store wins.
        return Some(conflict(path, r));
    }
    local_deletion(i, path, r, b, deletes_left)
}

/// Propagates a local deletion once it has outlived [`DELETE_GRACE`].
fn local_deletion(
    i: &Inputs,
    path: &str,
    r: &Remote,
    b: &Baseline,
    deletes_left: &mut usize,
) -> Option<Action> {
    if i.read_only || i.delete_mode == DeleteMode::Disabled {
        return None;
    }
    if !deletion_due(i, path) {
        let first_seen = !i.missing_since.contains_key(path);
        return first_seen.then(|| Action::MarkMissing { path: path.into() });
    }
    match i.delete_mode {
        DeleteMode::Enabled => take_slot(deletes_left).then(|| Action::DeleteRemote {
            path: path.into(),
            id: r.id.clone(),
            expected_sha: b.sha.clone(),
        }),
        DeleteMode::LogOnly => Some(Action::WouldDelete { path: path.into() }),
        DeleteMode::Disabled => None,
    }
}

fn deletion_due(i: &Inputs, path: &str) -> bool {
    i.final_sync
        || i.missing_since
            .get(path)
            .is_some_and(|since| i.now.saturating_duration_since(*since) >= DELETE_GRACE)
}

/// Claims one of the plan's remaining deletions, if any are left.
fn take_slot(left: &mut usize) -> bool {
    let available = *left > 0;
    if available {
        *left -= 1;
    }
    available
}

/// Gone from the store, still on disk.
fn deleted_remotely(i: &Inputs, path: &str, b: &Baseline, l: &Local) -> Option<Action> {
    if l.sha == b.sha {
        Some(Action::DeleteLocal { path: path.into() })
    } else {
        // An unpushed edit outlives the deletion by re-creating the memory;
        // read-only stores keep it locally only (`push` declines).
        push(i, path, None, l)
    }
}

/// Pushes the local file (an update of `r`, or a create), unless the store
/// is read-only or already refused these exact contents.
fn push(i: &Inputs, path: &str, r: Option<&Remote>, l: &Local) -> Option<Action> {
    let refused = i.refused.get(path) == Some(&l.sha);
    (!i.read_only && !refused).then(|| Action::Push {
        path: path.into(),
        id: r.map(|r| r.id.clone()),
        precondition_sha: r.map(|r| r.sha.clone()),
    })
}

fn pull(path: &str, r: &Remote) -> Action {
    Action::Pull {
        path: path.into(),
        id: r.id.clone(),
    }
}

fn conflict(path: &str, r: &Remote) -> Action {
    Action::Conflict {
        path: path.into(),
        id: r.id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Owns the state an [`Inputs`] borrows; tests set fields then plan.
    struct World {
        remote: BTreeMap<String, Remote>,
        baseline: BTreeMap<String, Baseline>,
        local: BTreeMap<String, Local>,
        missing_since: BTreeMap<String, Instant>,
        refused: BTreeMap<String, String>,
        read_only: bool,
        final_sync: bool,
        delete_mode: DeleteMode,
        max_deletes: usize,
        start: Instant,
        elapsed: Duration,
    }

    impl World {
        fn new() -> Self {
            Self {
                remote: BTreeMap::new(),
                baseline: BTreeMap::new(),
                local: BTreeMap::new(),
                missing_since: BTreeMap::new(),
                refused: BTreeMap::new(),
                read_only: false,
                final_sync: false,
                delete_mode: DeleteMode::Enabled,
                max_deletes: 10,
                start: Instant::now(),
                elapsed: Duration::ZERO,
            }
        }

        fn remote(mut self, path: &str, id: &str, sha: &str) -> Self {
            let entry = Remote {
                id: id.into(),
                sha: sha.into(),
            };
            self.remote.insert(path.into(), entry);
            self
        }

        fn baseline(mut self, path: &str, id: &str, sha: &str) -> Self {
            let entry = Baseline {
                id: id.into(),
                sha: sha.into(),
            };
            self.baseline.insert(path.into(), entry);
            self
        }

        fn local(mut self, path: &str, sha: &str) -> Self {
            self.local.insert(path.into(), Local { sha: sha.into() });
            self
        }

        /// A path synced as `sha` and still unchanged on both sides.
        fn synced(self, path: &str, id: &str, sha: &str) -> Self {
            self.remote(path, id, sha)
                .baseline(path, id, sha)
                .local(path, sha)
        }

        /// A path synced as `sha`, unchanged remotely, deleted locally and
        /// first seen missing at `start`.
        fn deleted_locally(mut self, path: &str, id: &str, sha: &str) -> Self {
            self.missing_since.insert(path.into(), self.start);
            self.remote(path, id, sha).baseline(path, id, sha)
        }

        fn plan(&self) -> Vec<Action> {
            plan(&Inputs {
                remote: &self.remote,
                baseline: &self.baseline,
                local: &self.local,
                read_only: self.read_only,
                missing_since: &self.missing_since,
                now: self.start + self.elapsed,
                final_sync: self.final_sync,
                refused: &self.refused,
                delete_mode: self.delete_mode,
                max_deletes: self.max_deletes,
            })
        }
    }

    fn pull(path: &str, id: &str) -> Action {
        Action::Pull {
            path: path.into(),
            id: id.into(),
        }
    }

    fn update(path: &str, id: &str, precondition: &str) -> Action {
        Action::Push {
            path: path.into(),
            id: Some(id.into()),
            precondition_sha: Some(precondition.into()),
        }
    }

    fn create(path: &str) -> Action {
        Action::Push {
            path: path.into(),
            id: None,
            precondition_sha: None,
        }
    }

    fn delete_remote(path: &str, id: &str, sha: &str) -> Action {
        Action::DeleteRemote {
            path: path.into(),
            id: id.into(),
            expected_sha: sha.into(),
        }
    }

    fn grace_elapsed(mut world: World) -> World {
        world.elapsed = DELETE_GRACE;
        world
    }

    #[test]
    fn unchanged_paths_need_nothing() {
        let world = World::new().synced("/a.md", "m1", "s1");
        assert_eq!(world.plan(), []);
    }

    #[test]
    fn new_remote_memory_is_pulled() {
        let world = World::new()
            .synced("/a.md", "m1", "s1")
            .remote("/b.md", "m2", "s2");
        assert_eq!(world.plan(), [pull("/b.md", "m2")]);
    }

    #[test]
    fn remote_only_change_is_pulled() {
        let world = World::new()
            .remote("/a.md", "m1", "s2")
            .baseline("/a.md", "m1", "s1")
            .local("/a.md", "s1");
        assert_eq!(world.plan(), [pull("/a.md", "m1")]);
    }

    #[test]
    fn local_only_change_is_pushed_with_precondition() {
        let world = World::new()
            .remote("/a.md", "m1", "s1")
            .baseline("/a.md", "m1", "s1")
            .local("/a.md", "s2");
        assert_eq!(world.plan(), [update("/a.md", "m1", "s1")]);
    }

    #[test]
    fn new_local_file_is_pushed_as_create() {
        let world = World::new()
            .synced("/a.md", "m1", "s1")
            .local("/new.md", "s9");
        assert_eq!(world.plan(), [create("/new.md")]);
    }

    #[test]
    fn both_changed_is_a_conflict() {
        let world = World::new()
            .remote("/a.md", "m1", "s2")
            .baseline("/a.md", "m1", "s1")
            .local("/a.md", "s3");
        let expected = Action::Conflict {
            path: "/a.md".into(),
            id: "m1".into(),
        };
        assert_eq!(world.plan(), [expected]);
    }

    #[test]
    fn first_sync_with_different_local_file_is_a_conflict() {
        let world = World::new()
            .remote("/a.md", "m1", "s1")
            .local("/a.md", "s2");
        assert!(matches!(world.plan()[..], [Action::Conflict { .. }]));
    }

    #[test]
    fn converged_change_is_adopted() {
        let world = World::new()
            .remote("/a.md", "m1", "s2")
            .baseline("/a.md", "m1", "s1")
            .local("/a.md", "s2")
            .remote("/b.md", "m2", "s3")
            .local("/b.md", "s3");
        let adopt = |path: &str, id: &str, sha: &str| Action::Adopt {
            path: path.into(),
            id: id.into(),
            sha: sha.into(),
        };
        assert_eq!(
            world.plan(),
            [adopt("/a.md", "m1", "s2"), adopt("/b.md", "m2", "s3")]
        );
    }

    #[test]
    fn recreated_memory_with_same_content_adopts_new_id() {
        let world = World::new()
            .remote("/a.md", "m2", "s1")
            .baseline("/a.md", "m1", "s1")
            .local("/a.md", "s1");
        assert!(matches!(&world.plan()[..], [Action::Adopt { id, .. }] if id == "m2"));
    }

    #[test]
    fn read_only_store_never_pushes() {
        let mut world = World::new()
            .synced("/keep.md", "m0", "s0")
            .remote("/a.md", "m1", "s1")
            .baseline("/a.md", "m1", "s1")
            .local("/a.md", "s2")
            .local("/new.md", "s9");
        world.read_only = true;
        assert_eq!(world.plan(), []);
    }

    #[test]
    fn first_missing_sighting_starts_the_clock() {
        let mut world = World::new()
            .synced("/keep.md", "m0", "s0")
            .remote("/a.md", "m1", "s1")
            .baseline("/a.md", "m1", "s1");
        let mark = Action::MarkMissing {
            path: "/a.md".into(),
        };
        assert_eq!(world.plan(), [mark]);
        world.missing_since.insert("/a.md".into(), world.start);
        assert_eq!(world.plan(), [], "already marked, grace not over");
    }

    #[test]
    fn local_deletion_waits_for_grace() {
        let mut world = World::new()
            .synced("/keep.md", "m0", "s0")
            .deleted_locally("/a.md", "m1", "s1");
        world.elapsed = DELETE_GRACE - Duration::from_millis(1);
        assert_eq!(world.plan(), []);
        world.elapsed = DELETE_GRACE;
        assert_eq!(world.plan(), [delete_remote("/a.md", "m1", "s1")]);
    }

    #[test]
    fn final_sync_skips_grace() {
        let mut world = World::new()
            .synced("/keep.md", "m0", "s0")
            .deleted_locally("/a.md", "m1", "s1")
            .remote("/b.md", "m2", "s2")
            .baseline("/b.md", "m2", "s2");
        world.final_sync = true;
        let expected = [
            delete_remote("/a.md", "m1", "s1"),
            delete_remote("/b.md", "m2", "s2"),
        ];
        assert_eq!(world.plan(), expected, "marked or not, both are due");
    }

    #[test]
    fn deletes_are_capped_per_plan() {
        let mut world = grace_elapsed(
            World::new()
                .synced("/keep.md", "m0", "s0")
                .deleted_locally("/a.md", "m1", "s1")
                .deleted_locally("/b.md", "m2", "s2")
                .deleted_locally("/c.md", "m3", "s3"),
        );
        world.max_deletes = 2;
        let expected = [
            delete_remote("/a.md", "m1", "s1"),
            delete_remote("/b.md", "m2", "s2"),
        ];
        assert_eq!(world.plan(), expected);
        world.max_deletes = 0;
        assert_eq!(world.plan(), []);
    }

    #[test]
    fn log_only_mode_reports_instead_of_deleting() {
        let mut world = grace_elapsed(
            World::new()
                .synced("/keep.md", "m0", "s0")
                .deleted_locally("/a.md", "m1", "s1"),
        );
        world.delete_mode = DeleteMode::LogOnly;
        let would = Action::WouldDelete {
            path: "/a.md".into(),
        };
        assert_eq!(world.plan(), [would]);
    }

    #[test]
    fn disabled_mode_and_read_only_never_delete_remote() {
        let base = || {
            grace_elapsed(
                World::new()
                    .synced("/keep.md", "m0", "s0")
                    .deleted_locally("/a.md", "m1", "s1")
                    .remote("/b.md", "m2", "s2")
                    .baseline("/b.md", "m2", "s2"),
            )
        };
        let mut disabled = base();
        disabled.delete_mode = DeleteMode::Disabled;
        disabled.final_sync = true;
        assert_eq!(disabled.plan(), []);
        let mut read_only = base();
        read_only.read_only = true;
        read_only.final_sync = true;
        assert_eq!(read_only.plan(), []);
    }

    #[test]
    fn local_deletion_of_remotely_edited_memory_is_a_conflict() {
        let mut world = grace_elapsed(
            World::new()
                .synced("/keep.md", "m0", "s0")
                .deleted_locally("/a.md", "m1", "s1")
                .remote("/a.md", "m1", "s2"),
        );
        world.final_sync = true;
        assert!(matches!(world.plan()[..], [Action::Conflict { .. }]));
    }

    #[test]
    fn remote_deletion_removes_unedited_local_file() {
        let world = World::new()
            .synced("/keep.md", "m0", "s0")
            .baseline("/a.md", "m1", "s1")
            .local("/a.md", "s1");
        let expected = Action::DeleteLocal {
            path: "/a.md".into(),
        };
        assert_eq!(world.plan(), [expected]);
    }

    #[test]
    fn remote_deletion_with_local_edit_recreates_or_keeps() {
        let mut world = World::new()
            .synced("/keep.md", "m0", "s0")
            .baseline("/a.md", "m1", "s1")
            .local("/a.md", "s2");
        assert_eq!(world.plan(), [create("/a.md")]);
        world.read_only = true;
        assert_eq!(world.plan(), [], "read-only keeps the local edit");
    }

    #[test]
    fn deletion_on_both_sides_forgets_baseline() {
        let world = World::new()
            .synced("/keep.md", "m0", "s0")
            .baseline("/a.md", "m1", "s1");
        let forget = Action::Forget {
            path: "/a.md".into(),
        };
        assert_eq!(world.plan(), [forget]);
    }

    #[test]
    fn refused_contents_are_not_retried_until_changed() {
        let mut world = World::new()
            .remote("/a.md", "m1", "s1")
            .baseline("/a.md", "m1", "s1")
            .local("/a.md", "big")
            .local("/new.md", "bad");
        world.refused.insert("/a.md".into(), "big".into());
        world.refused.insert("/new.md".into(), "bad".into());
        assert_eq!(world.plan(), []);
        world.local.insert(
            "/a.md".into(),
            Local {
                sha: "smaller".into(),
            },
        );
        assert_eq!(world.plan(), [update("/a.md", "m1", "s1")]);
    }

    #[test]
    fn wiped_mirror_only_pulls() {
        let mut world = World::new()
            .remote("/a.md", "m1", "s1")
            .baseline("/a.md", "m1", "s1")
            .remote("/b.md", "m2", "s2")
            .baseline("/b.md", "m2", "s2")
            .baseline("/gone.md", "m3", "s3");
        world.final_sync = true;
        world.elapsed = DELETE_GRACE;
        assert_eq!(world.plan(), [pull("/a.md", "m1"), pull("/b.md", "m2")]);
    }

    #[test]
    fn sha256_hex_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
