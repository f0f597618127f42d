//! Memory stores mirrored into the session's sandbox at their
//! `mount_path` (`/mnt/memory/<slug>`), synced back after tool calls with
//! the three-way plan of `memory_plan`, and flushed at teardown.
//!
//! Each mirror holds a marker file naming its store; a sync trusts a folder
//! only while the marker is intact, and a wiped folder is re-downloaded,
//! never read as "the agent deleted everything".

use crate::cma::{Cma, CmaError};
use crate::memory_plan::{self, Action, Baseline, DeleteMode, Inputs, Local, Remote, sha256_hex};
use crate::sandbox::WORKDIR;
use crate::secret::Secret;
use crate::tools::Roots;
use sandstone_agents_api::{Access, MemoryEntry, Session, SessionResource};
use sandstone_api::FileKind;
use sandstone_client::Client;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const MARKER: &str = ".anthropic-memory-store";
const MAX_STORES: usize = 8;
/// Remote deletions pushed per sync at most.
const MAX_DELETES: usize = 8;
/// Teardown syncs are bounded, as the SDK's `MEMORY_FLUSH_TIMEOUT`.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a store could not be mounted or synced.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memory store mount_path {0:?} is not a clean absolute path")]
    MountPath(String),
    #[error("{0} already exists in the sandbox")]
    Exists(String),
    #[error("memory store {store}: {source}")]
    Store {
        store: String,
        #[source]
        source: Box<MemoryError>,
    },
    #[error("listing {dir}: {source}")]
    Listing {
        dir: String,
        #[source]
        source: sandstone_client::Error,
    },
    #[error("reading {path}: {source}")]
    Reading {
        path: String,
        #[source]
        source: sandstone_client::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] sandstone_client::Error),
    #[error(transparent)]
    Cma(#[from] CmaError),
}

#[derive(Default)]
struct State {
    baseline: BTreeMap<String, Baseline>,
    missing_since: BTreeMap<String, Instant>,
    refused: BTreeMap<String, String>,
}

struct Store {
    id: String,
    root: String,
    read_only: bool,
    state: Mutex<State>,
}

pub struct Memory {
    cma: Cma,
    token: Secret,
    client: Client,
    sandbox: String,
    interval: Duration,
    last_sync: Mutex<Instant>,
    stores: Vec<Store>,
}

/// A mirror file's contents, keyed by memory path (`/a/b.md`).
type LocalFiles = BTreeMap<String, (Local, String)>;

#[derive(Default)]
struct Scan {
    files: LocalFiles,
    /// Present, but not something a memory can hold.
    unsynced: BTreeSet<String>,
}

fn marker(store: &str) -> String {
    format!("version 1\n{store}")
}

/// `mount_path` must be a clean absolute path; without one the store goes
/// under the workdir.
fn mount_root(resource: &SessionResource) -> Result<String, MemoryError> {
    match resource.mount_path.as_deref() {
        Some(p) => {
            let clean = p.starts_with('/')
                && p.len() > 1
                && !p.ends_with('/')
                && p[1..]
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..");
            clean
                .then(|| p.to_string())
                .ok_or_else(|| MemoryError::MountPath(p.to_string()))
        }
        None => {
            let name = resource
                .name
                .as_deref()
                .or(resource.memory_store_id.as_deref())
                .unwrap_or("store");
            Ok(format!("{WORKDIR}/memory/{}", name.replace('/', "_")))
        }
    }
}

impl Memory {
    /// Downloads every attached store into the sandbox. A path already
    /// there that is not our own leftover fails the item, as the SDK does.
    pub async fn mount(
        cma: &Cma,
        token: &Secret,
        client: &Client,
        sandbox: &str,
        session: &Session,
        interval: Option<Duration>,
    ) -> Result<Memory, MemoryError> {
        let mut stores = Vec::new();
        for r in &session.resources {
            if !r.is_memory_store() || stores.len() == MAX_STORES {
                continue;
            }
            let id = r.memory_store_id.clone().unwrap_or_default();
            stores.push(Store {
                root: mount_root(r)?,
                read_only: r.access == Some(Access::ReadOnly),
                id,
                state: Mutex::default(),
            });
        }
        let m = Memory {
            cma: cma.clone(),
            token: token.clone(),
            client: client.clone(),
            sandbox: sandbox.to_string(),
            interval: interval.unwrap_or(Duration::from_secs(15)),
            last_sync: Mutex::new(Instant::now()),
            stores,
        };
        for (i, s) in m.stores.iter().enumerate() {
            // What this mount made goes on failure; a path that was already
            // there (claim refused) stays.
            let made = match m.claim_root(s).await {
                Ok(()) => i + 1,
                Err(e) => {
                    m.unmount(&m.stores[..i]).await;
                    return Err(e);
                }
            };
            if let Err(e) = m.download(s).await {
                m.unmount(&m.stores[..made]).await;
                return Err(MemoryError::Store {
                    store: s.id.clone(),
                    source: Box::new(e),
                });
            }
        }
        Ok(m)
    }

    async fn unmount(&self, stores: &[Store]) {
        for s in stores {
            let _ = self.client.remove_path(&self.sandbox, &s.root).await;
        }
    }

    pub fn add_roots(&self, roots: &mut Roots) {
        for s in &self.stores {
            roots.allowed.push(s.root.clone());
            if s.read_only {
                roots.read_only.push(s.root.clone());
            }
        }
    }

    /// A previous worker killed mid-item leaves its mirror in the durable
    /// sandbox: ours (intact marker) is replaced; anything else is refused.
    async fn claim_root(&self, s: &Store) -> Result<(), MemoryError> {
        if self.client.list_dir(&self.sandbox, &s.root).await.is_err() {
            return Ok(());
        }
        let found = self
            .client
            .read_file(&self.sandbox, &format!("{}/{MARKER}", s.root))
            .await
            .ok();
        if found.as_deref() != Some(marker(&s.id).as_bytes()) {
            return Err(MemoryError::Exists(s.root.clone()));
        }
        tracing::info!(store = %s.id, root = %s.root, "replacing a mirror a previous worker left");
        Ok(self.client.remove_path(&self.sandbox, &s.root).await?)
    }

    async fn download(&self, s: &Store) -> Result<(), MemoryError> {
        let (c, sb) = (&self.client, self.sandbox.as_str());
        c.mkdir(sb, &s.root).await?;
        c.write_file(
            sb,
            &format!("{}/{MARKER}", s.root),
            marker(&s.id).into_bytes(),
        )
        .await?;
        let all = self.cma.memories(&s.id, &self.token, true).await?;
        let mut st = s.state.lock().await;
        *st = State::default();
        for entry in all {
            let MemoryEntry::Memory(mem) = entry else {
                continue;
            };
            let content = mem.content.unwrap_or_default();
            let sha = sha256_hex(content.as_bytes());
            c.write_file(sb, &format!("{}{}", s.root, mem.path), content.into_bytes())
                .await?;
            st.baseline.insert(mem.path, Baseline { id: mem.id, sha });
        }
        tracing::info!(store = %s.id, root = %s.root, memories = st.baseline.len(), "memory store mounted");
        Ok(())
    }

    /// After a tool call: sync when the interval has passed.
    pub async fn sync_if_due(&self) {
        let mut last = self.last_sync.lock().await;
        if last.elapsed() < self.interval {
            return;
        }
        *last = Instant::now();
        for s in &self.stores {
            if let Err(e) = self.sync(s, false, false).await {
                tracing::warn!(store = %s.id, error = %e, "memory sync failed");
            }
        }
    }

    /// Final sync (clean end), a push-only flush (always), then the mirrors
    /// go; each step bounded so teardown never hangs.
    pub async fn teardown(self, clean: bool) {
        if clean {
            self.sync_all("final sync", false).await;
        }
        self.sync_all("flush", true).await;
        for s in &self.stores {
            if self.marker_ok(s).await {
                let _ = self.client.remove_path(&self.sandbox, &s.root).await;
            }
        }
    }

    /// One teardown phase over every store, within one time budget.
    async fn sync_all(&self, what: &str, push_only: bool) {
        let all = async {
            for s in &self.stores {
                if let Err(e) = self.sync(s, true, push_only).await {
                    tracing::warn!(store = %s.id, error = %e, "memory {what} failed");
                }
            }
        };
        if tokio::time::timeout(FLUSH_TIMEOUT, all).await.is_err() {
            tracing::warn!("memory {what} timed out");
        }
    }

    async fn marker_ok(&self, s: &Store) -> bool {
        let path = format!("{}/{MARKER}", s.root);
        self.client
            .read_file(&self.sandbox, &path)
            .await
            .is_ok_and(|b| b == marker(&s.id).as_bytes())
    }

    async fn sync(&self, s: &Store, final_sync: bool, push_only: bool) -> Result<(), MemoryError> {
        let scan = self.scan(&s.root).await?;
        let local = scan.files;
        if !self.marker_ok(s).await {
            if local.is_empty() && scan.unsynced.is_empty() {
                tracing::warn!(store = %s.id, "mirror wiped; downloading it again");
                let _ = self.client.remove_path(&self.sandbox, &s.root).await;
                return self.download(s).await;
            }
            tracing::warn!(store = %s.id, "mirror marker missing or wrong; not syncing it");
            return Ok(());
        }
        let listed = self.cma.memories(&s.id, &self.token, false).await?;
        let remote: BTreeMap<String, Remote> = listed
            .into_iter()
            .filter_map(|entry| match entry {
                MemoryEntry::Memory(m) if !scan.unsynced.contains(&m.path) => Some((
                    m.path,
                    Remote {
                        id: m.id,
                        sha: m.content_sha256,
                    },
                )),
                _ => None,
            })
            .collect();
        let mut st = s.state.lock().await;
        let locals: BTreeMap<String, Local> = local
            .iter()
            .map(|(p, (l, _))| (p.clone(), l.clone()))
            .collect();
        st.missing_since.retain(|p, _| !locals.contains_key(p));
        st.refused
            .retain(|p, sha| locals.get(p).is_some_and(|l| &l.sha == sha));
        let baseline: BTreeMap<String, Baseline> = st
            .baseline
            .iter()
            .filter(|(p, _)| !scan.unsynced.contains(*p))
            .map(|(p, b)| (p.clone(), b.clone()))
            .collect();
        let actions = memory_plan::plan(&Inputs {
            remote: &remote,
            baseline: &baseline,
            local: &locals,
            read_only: s.read_only,
            missing_since: &st.missing_since,
            now: Instant::now(),
            final_sync,
            refused: &st.refused,
            delete_mode: DeleteMode::Enabled,
            max_deletes: MAX_DELETES,
        });
        for a in actions {
            if push_only && !matches!(a, Action::Push { .. } | Action::Adopt { .. }) {
                continue;
            }
            self.apply(s, &mut st, a, &local).await;
        }
        Ok(())
    }

    /// Every file under the mirror, marker excluded: regular UTF-8 files
    /// with their contents, and the paths present but not syncable (links,
    /// binary files), which must not read as deleted. A listing or read
    /// that fails aborts the sync rather than making files look gone.
    async fn scan(&self, root: &str) -> Result<Scan, MemoryError> {
        let mut out = Scan::default();
        let mut dirs = vec![root.to_string()];
        while let Some(dir) = dirs.pop() {
            let entries = match self.client.list_dir(&self.sandbox, &dir).await {
                Ok(e) => e,
                // The mirror itself gone: empty (the marker check decides).
                Err(e) if dir == root && sandstone_client::is_not_found(&e) => continue,
                Err(source) => return Err(MemoryError::Listing { dir, source }),
            };
            for e in entries {
                let rel = e.path[root.len()..].to_string();
                match e.kind {
                    FileKind::Dir => dirs.push(e.path.clone()),
                    FileKind::File if rel == format!("/{MARKER}") => {}
                    FileKind::File => {
                        let bytes = self
                            .client
                            .read_file(&self.sandbox, &e.path)
                            .await
                            .map_err(|source| MemoryError::Reading {
                                path: e.path.clone(),
                                source,
                            })?;
                        let sha = sha256_hex(&bytes);
                        match String::from_utf8(bytes) {
                            Ok(text) => {
                                out.files.insert(rel, (Local { sha }, text));
                            }
                            Err(_) => {
                                tracing::info!(path = %e.path, "memory file is not UTF-8; not synced");
                                out.unsynced.insert(rel);
                            }
                        }
                    }
                    _ => {
                        out.unsynced.insert(rel);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn apply(&self, s: &Store, st: &mut State, a: Action, local: &LocalFiles) {
        let r = match a {
            Action::Pull { path, id } => self.pull(s, st, &path, &id).await,
            Action::Conflict { path, id } => {
                tracing::warn!(store = %s.id, path, "changed in the store and in the sandbox: the store wins");
                self.pull(s, st, &path, &id).await
            }
            Action::Push {
                path,
                id,
                precondition_sha,
            } => match local.get(&path) {
                Some((l, text)) => self.push(s, st, &path, id, precondition_sha, l, text).await,
                None => Ok(()),
            },
            Action::DeleteRemote {
                path,
                id,
                expected_sha,
            } => {
                match self
                    .cma
                    .delete_memory(&s.id, &id, &expected_sha, &self.token)
                    .await
                {
                    Ok(()) => forget(st, &path),
                    Err(e) if e.status() == Some(404) => forget(st, &path),
                    Err(e) if matches!(e.status(), Some(409 | 412)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Action::DeleteLocal { path } => {
                let file = format!("{}{path}", s.root);
                match self.client.remove_path(&self.sandbox, &file).await {
                    Ok(()) => forget(st, &path),
                    Err(e) if sandstone_client::is_not_found(&e) => forget(st, &path),
                    // Kept in the baseline: the next sync tries again.
                    Err(e) => {
                        tracing::warn!(path = %file, error = %e, "could not remove a memory deleted in the store");
                        Ok(())
                    }
                }
            }
            Action::MarkMissing { path } => {
                st.missing_since.insert(path, Instant::now());
                Ok(())
            }
            Action::WouldDelete { path } => {
                tracing::info!(store = %s.id, path, "would delete the memory (log-only mode)");
                Ok(())
            }
            Action::Adopt { path, id, sha } => {
                st.baseline.insert(path, Baseline { id, sha });
                Ok(())
            }
            Action::Forget { path } => forget(st, &path),
        };
        if let Err(e) = r {
            tracing::warn!(store = %s.id, error = %e, "memory sync step failed");
        }
    }

    async fn pull(&self, s: &Store, st: &mut State, path: &str, id: &str) -> Result<(), CmaError> {
        let mem = self.cma.memory(&s.id, id, &self.token).await?;
        let content = mem.content.unwrap_or_default();
        let file = format!("{}{path}", s.root);
        if let Err(e) = self
            .client
            .write_file(&self.sandbox, &file, content.as_bytes().to_vec())
            .await
        {
            tracing::warn!(path = %file, error = %e, "could not write a pulled memory");
            return Ok(());
        }
        st.baseline.insert(
            path.to_string(),
            Baseline {
                id: id.to_string(),
                sha: sha256_hex(content.as_bytes()),
            },
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn push(
        &self,
        s: &Store,
        st: &mut State,
        path: &str,
        id: Option<String>,
        precondition: Option<String>,
        local: &Local,
        text: &str,
    ) -> Result<(), CmaError> {
        let sent = match (&id, &precondition) {
            (Some(id), Some(pre)) => {
                self.cma
                    .update_memory(&s.id, id, text, pre, &self.token)
                    .await
            }
            _ => self.cma.create_memory(&s.id, path, text, &self.token).await,
        };
        let sent = match sent {
            // Deleted in the store meanwhile: create it again.
            Err(e) if e.status() == Some(404) && id.is_some() => {
                self.cma.create_memory(&s.id, path, text, &self.token).await
            }
            other => other,
        };
        match sent {
            Ok(m) => {
                st.baseline.insert(
                    path.to_string(),
                    Baseline {
                        id: m.id,
                        sha: local.sha.clone(),
                    },
                );
                Ok(())
            }
            // A lost race: the next sync pulls the winner.
            Err(e) if e.status() == Some(409) => Ok(()),
            Err(e) if matches!(e.status(), Some(400 | 413)) => {
                tracing::warn!(store = %s.id, path, error = %e, "the store refused this memory; not retried until it changes");
                st.refused.insert(path.to_string(), local.sha.clone());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// The path is gone on both sides: nothing more to track.
fn forget(st: &mut State, path: &str) -> Result<(), CmaError> {
    st.baseline.remove(path);
    st.missing_since.remove(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn root(mut v: serde_json::Value) -> Result<String, MemoryError> {
        v["type"] = json!("memory_store");
        mount_root(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn mount_paths_must_be_clean_and_absolute() {
        let ok = root(json!({"mount_path": "/mnt/memory/user-preferences"}));
        assert_eq!(ok.unwrap(), "/mnt/memory/user-preferences");
        for bad in ["relative", "/mnt/../etc", "/mnt//x", "/", "/mnt/memory/"] {
            assert!(root(json!({"mount_path": bad})).is_err(), "{bad}");
        }
        assert_eq!(
            root(json!({"name": "a/b"})).unwrap(),
            "/workspace/memory/a_b"
        );
    }
}
