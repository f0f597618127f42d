//! Memory stores and their memories (beta `agent-memory-2026-07-22`):
//! text documents at paths, with a SHA-256 of their content that updates
//! and deletes can require (`409` when it no longer matches), so a worker
//! syncing a mounted copy never overwrites a change it has not seen.

use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, now};
use crate::validate;
use crate::{StartError, lock, parse_stored};
use sandstone_agents_api::{
    Access, Deleted, Extra, Memory, MemoryEntry, MemoryParams, MemoryPrefix, MemoryStore,
    MemoryStoreParams, MemoryStoreTag, Metadata, Precondition, SessionResource,
};
use sandstone_db::agents::AgentsStore;
use sandstone_db::sha256_hex;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

pub const STORE: &str = "memory_store";
pub const MEMORY: &str = "memory";
const MAX_CONTENT: usize = 102_400;

fn check_path(p: &str, field: &str) -> ApiResult<()> {
    let segments: Vec<&str> = p.strip_prefix('/').unwrap_or("").split('/').collect();
    let ok = p.starts_with('/')
        && p.len() <= 1024
        && (1..=20).contains(&segments.len())
        && segments
            .iter()
            .all(|s| !s.is_empty() && *s != "." && *s != ".." && !s.chars().any(char::is_control));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{field}: a path like /a/b.md of 1 to 20 non-empty segments, without . or .."
        )))
    }
}

fn check_content(v: Option<String>) -> ApiResult<String> {
    match v {
        Some(s) if s.len() > MAX_CONTENT => Err(ApiError::invalid(format!(
            "content: a UTF-8 string of at most {MAX_CONTENT} bytes"
        ))),
        v => Ok(v.unwrap_or_default()),
    }
}

fn store_name(v: Option<String>) -> ApiResult<String> {
    match v {
        Some(n) if (1..=255).contains(&n.chars().count()) && !n.chars().any(char::is_control) => {
            Ok(n)
        }
        _ => Err(ApiError::invalid(
            "name: 1 to 255 characters, no control characters",
        )),
    }
}

fn store_description(d: String) -> ApiResult<String> {
    if d.chars().count() <= 1024 {
        Ok(d)
    } else {
        Err(ApiError::invalid("description: at most 1024 characters"))
    }
}

#[derive(Default)]
struct MemoryState {
    stores: BTreeMap<String, MemoryStore>,
    memories: BTreeMap<String, Memory>,
}

/// Memory stores and their memories.
pub(crate) struct Memories {
    store: Arc<dyn AgentsStore>,
    state: Mutex<MemoryState>,
    /// Memory writes one at a time: a `content_sha256` precondition is
    /// checked and the write made with nothing in between.
    writes: tokio::sync::Mutex<()>,
    /// Held (shared) by each change across its store write and cache
    /// update, and alone by a reload across its read and swap: a reload
    /// that read the store before a change committed must not put its
    /// older copy over the change.
    gate: tokio::sync::RwLock<()>,
}

/// A memory as shown: `view=basic` leaves out the content.
pub fn view(mut m: Memory, full: bool) -> MemoryEntry {
    if !full {
        m.content = None;
    }
    MemoryEntry::Memory(m)
}

/// The directory a store is mounted at in a session.
pub fn mount_path(name: &str) -> String {
    let mut slug = String::new();
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    format!(
        "/mnt/memory/{}",
        if slug.is_empty() { "store" } else { slug }
    )
}

impl Memories {
    pub(crate) async fn load(store: Arc<dyn AgentsStore>) -> Result<Memories, StartError> {
        let st = Memories::read(&*store).await?;
        Ok(Memories {
            store,
            state: Mutex::new(st),
            writes: tokio::sync::Mutex::new(()),
            gate: tokio::sync::RwLock::new(()),
        })
    }

    /// Reads everything again (another node changed something).
    pub(crate) async fn reload(&self) -> Result<(), StartError> {
        let _gate = self.gate.write().await;
        let st = Memories::read(&*self.store).await?;
        *self.state() = st;
        Ok(())
    }

    async fn read(store: &dyn AgentsStore) -> Result<MemoryState, StartError> {
        let mut st = MemoryState::default();
        for s in store.load_docs(STORE).await? {
            let s: MemoryStore = parse_stored(STORE, s)?;
            st.stores.insert(s.id.clone(), s);
        }
        for m in store.load_docs(MEMORY).await? {
            let MemoryEntry::Memory(m) = parse_stored(MEMORY, m)? else {
                continue;
            };
            st.memories.insert(m.id.clone(), m);
        }
        Ok(st)
    }

    fn state(&self) -> MutexGuard<'_, MemoryState> {
        lock(&self.state)
    }

    pub(crate) async fn create_store(&self, body: &Value) -> ApiResult<MemoryStore> {
        let _gate = self.gate.read().await;
        let p: MemoryStoreParams = validate::body(body)?;
        let t = now();
        let doc = MemoryStore {
            tag: MemoryStoreTag,
            id: new_id("memstore"),
            name: store_name(p.name.flatten())?,
            description: p
                .description
                .flatten()
                .map(store_description)
                .transpose()?
                .unwrap_or_default(),
            metadata: validate::metadata(&Metadata::new(), p.metadata.flatten().as_ref())?,
            created_at: t.clone(),
            updated_at: t,
            archived_at: None,
            extra: Extra::new(),
        };
        self.save_store(&doc).await?;
        Ok(doc)
    }

    async fn save_store(&self, doc: &MemoryStore) -> ApiResult<()> {
        self.store.put_doc(STORE, &doc.id, &json!(doc)).await?;
        self.state().stores.insert(doc.id.clone(), doc.clone());
        Ok(())
    }

    async fn save_memory(&self, doc: &Memory) -> ApiResult<()> {
        let stored = json!(MemoryEntry::Memory(doc.clone()));
        self.store.put_doc(MEMORY, &doc.id, &stored).await?;
        self.state().memories.insert(doc.id.clone(), doc.clone());
        Ok(())
    }

    pub(crate) fn store(&self, id: &str) -> ApiResult<MemoryStore> {
        self.state()
            .stores
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("memory store", id))
    }

    pub(crate) fn stores(&self, include_archived: bool) -> Vec<MemoryStore> {
        let st = self.state();
        let mut out: Vec<MemoryStore> = st
            .stores
            .values()
            .filter(|s| include_archived || s.archived_at.is_none())
            .cloned()
            .collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        out
    }

    pub(crate) async fn update_store(&self, id: &str, body: &Value) -> ApiResult<MemoryStore> {
        let _gate = self.gate.read().await;
        let p: MemoryStoreParams = validate::body(body)?;
        let mut doc = self.store(id)?;
        if let Some(name) = p.name.flatten() {
            doc.name = store_name(Some(name))?;
        }
        if let Some(d) = p.description.flatten() {
            doc.description = store_description(d)?;
        }
        doc.metadata = validate::metadata(&doc.metadata, p.metadata.flatten().as_ref())?;
        doc.updated_at = now();
        self.save_store(&doc).await?;
        Ok(doc)
    }

    pub(crate) async fn archive_store(&self, id: &str) -> ApiResult<MemoryStore> {
        let _gate = self.gate.read().await;
        let mut doc = self.store(id)?;
        if doc.archived_at.is_none() {
            let t = now();
            doc.archived_at = Some(t.clone());
            doc.updated_at = t;
            self.save_store(&doc).await?;
        }
        Ok(doc)
    }

    pub(crate) async fn delete_store(&self, id: &str) -> ApiResult<Deleted> {
        let _gate = self.gate.read().await;
        self.store(id)?;
        let gone: Vec<String> = {
            let mut st = self.state();
            st.stores.remove(id);
            let ids: Vec<String> = st
                .memories
                .values()
                .filter(|m| m.memory_store_id == id)
                .map(|m| m.id.clone())
                .collect();
            for m in &ids {
                st.memories.remove(m);
            }
            ids
        };
        for m in gone {
            self.store.delete_doc(MEMORY, &m).await?;
        }
        self.store.delete_doc(STORE, id).await?;
        Ok(Deleted {
            id: id.to_string(),
            kind: "memory_store_deleted".into(),
        })
    }

    fn memory_at(&self, store: &str, path: &str) -> bool {
        self.state()
            .memories
            .values()
            .any(|m| m.memory_store_id == store && m.path == path)
    }

    pub(crate) fn memory(&self, store: &str, id: &str) -> ApiResult<Memory> {
        self.state()
            .memories
            .get(id)
            .filter(|m| m.memory_store_id == store)
            .cloned()
            .ok_or_else(|| ApiError::not_found("memory", id))
    }

    pub(crate) async fn create_memory(&self, store: &str, body: &Value) -> ApiResult<Memory> {
        let _gate = self.gate.read().await;
        let p: MemoryParams = validate::body(body)?;
        let _write = self.writes.lock().await;
        if self.store(store)?.archived_at.is_some() {
            return Err(ApiError::invalid(format!(
                "memory store {store} is archived"
            )));
        }
        let path = p.path.flatten().unwrap_or_default();
        check_path(&path, "path")?;
        let content = check_content(p.content.flatten())?;
        if self.memory_at(store, &path) {
            return Err(ApiError::MemoryPathConflict(format!(
                "path: {path} exists in {store}"
            )));
        }
        let t = now();
        let doc = Memory {
            tag: Default::default(),
            id: new_id("mem"),
            memory_store_id: store.to_string(),
            path,
            content_sha256: sha256_hex(content.as_bytes()),
            content_size_bytes: content.len() as u64,
            content: Some(content),
            memory_version_id: new_id("memver"),
            created_at: t.clone(),
            updated_at: t,
            extra: Extra::new(),
        };
        self.save_memory(&doc).await?;
        Ok(doc)
    }

    /// Content and/or path; a `content_sha256` precondition must match.
    pub(crate) async fn update_memory(
        &self,
        store: &str,
        id: &str,
        body: &Value,
    ) -> ApiResult<Memory> {
        let _gate = self.gate.read().await;
        let p: MemoryParams = validate::body(body)?;
        let _write = self.writes.lock().await;
        let mut doc = self.memory(store, id)?;
        if let Some(Precondition::ContentSha256 { content_sha256 }) = p.precondition.flatten()
            && content_sha256 != doc.content_sha256
        {
            return Err(ApiError::MemoryPreconditionFailed(format!(
                "precondition: memory {id} has changed (content_sha256 {:?})",
                doc.content_sha256
            )));
        }
        if let Some(path) = p.path.flatten() {
            check_path(&path, "path")?;
            if path != doc.path && self.memory_at(store, &path) {
                return Err(ApiError::MemoryPathConflict(format!(
                    "path: {path} exists in {store}"
                )));
            }
            doc.path = path;
        }
        if let Some(content) = p.content {
            let content = check_content(content)?;
            doc.content_sha256 = sha256_hex(content.as_bytes());
            doc.content_size_bytes = content.len() as u64;
            doc.content = Some(content);
        }
        doc.memory_version_id = new_id("memver");
        doc.updated_at = now();
        self.save_memory(&doc).await?;
        Ok(doc)
    }

    pub(crate) async fn delete_memory(
        &self,
        store: &str,
        id: &str,
        expected: Option<&str>,
    ) -> ApiResult<Deleted> {
        let _gate = self.gate.read().await;
        let _write = self.writes.lock().await;
        let doc = self.memory(store, id)?;
        if expected.is_some_and(|e| e != doc.content_sha256) {
            return Err(ApiError::MemoryPreconditionFailed(format!(
                "expected_content_sha256: memory {id} has changed"
            )));
        }
        self.state().memories.remove(id);
        self.store.delete_doc(MEMORY, id).await?;
        Ok(Deleted {
            id: id.to_string(),
            kind: "memory_deleted".into(),
        })
    }

    /// Memories under `prefix`, in path order; with `depth`, what lies
    /// deeper is rolled up into `memory_prefix` entries.
    pub(crate) fn memories(
        &self,
        store: &str,
        prefix: &str,
        depth: Option<usize>,
        full: bool,
    ) -> ApiResult<Vec<MemoryEntry>> {
        self.store(store)?;
        let st = self.state();
        let mut found: Vec<&Memory> = st
            .memories
            .values()
            .filter(|m| m.memory_store_id == store && m.path.starts_with(prefix))
            .collect();
        found.sort_by(|a, b| a.path.cmp(&b.path));
        let mut out: Vec<MemoryEntry> = Vec::new();
        let base = if prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        for m in found {
            let rest: Vec<&str> = m
                .path
                .strip_prefix(base.as_str())
                .unwrap_or(m.path.trim_start_matches('/'))
                .split('/')
                .collect();
            match depth {
                Some(d) if rest.len() > d => {
                    let rolled = format!("{base}{}/", rest[..d].join("/"));
                    let seen = out
                        .iter()
                        .any(|o| matches!(o, MemoryEntry::Prefix(p) if p.path == rolled));
                    if !seen {
                        out.push(MemoryEntry::Prefix(MemoryPrefix {
                            tag: Default::default(),
                            path: rolled,
                            extra: Extra::new(),
                        }));
                    }
                }
                _ => out.push(view(m.clone(), full)),
            }
        }
        Ok(out)
    }

    /// Resolves a session's `resources` (memory stores only here).
    /// A `memory_store` resource of a new session, resolved (`at` names
    /// it in errors).
    pub(crate) fn session_resource(
        &self,
        r: SessionResource,
        at: &str,
    ) -> ApiResult<SessionResource> {
        let id = r.memory_store_id.unwrap_or_default();
        let store = self
            .store(&id)
            .map_err(|_| ApiError::invalid(format!("{at}.memory_store_id: {id} does not exist")))?;
        if store.archived_at.is_some() {
            return Err(ApiError::invalid(format!(
                "{at}.memory_store_id: {id} is archived"
            )));
        }
        Ok(SessionResource {
            kind: r.kind,
            memory_store_id: Some(id),
            access: Some(r.access.unwrap_or(Access::ReadWrite)),
            mount_path: Some(mount_path(&store.name)),
            name: Some(store.name),
            description: Some(store.description),
            instructions: Some(r.instructions.unwrap_or_default()),
            ..SessionResource::default()
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slugs_and_paths() {
        assert_eq!(
            super::mount_path("User Preferences"),
            "/mnt/memory/user-preferences"
        );
        assert_eq!(super::mount_path("  --  "), "/mnt/memory/store");
        assert!(super::check_path("/a/b.md", "path").is_ok());
        for bad in ["a/b", "/a//b", "/a/../b", "/", ""] {
            assert!(super::check_path(bad, "path").is_err(), "{bad}");
        }
        assert_eq!(
            super::sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
