//! Memory stores and their memories (beta `agent-memory-2026-07-22`):
//! text documents at paths, with a SHA-256 of their content that updates
//! and deletes can require (`409` when it no longer matches), so a worker
//! syncing a mounted copy never overwrites a change it has not seen.

use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, now};
use crate::registry::id_of;
use crate::validate::merge_metadata;
use crate::{StartError, lock};
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

fn check_content(v: &Value) -> ApiResult<String> {
    match v {
        Value::String(s) if s.len() <= MAX_CONTENT => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        _ => Err(ApiError::invalid(format!(
            "content: a UTF-8 string of at most {MAX_CONTENT} bytes"
        ))),
    }
}

fn store_name(v: &Value) -> ApiResult<String> {
    match v.as_str() {
        Some(n) if (1..=255).contains(&n.chars().count()) && !n.chars().any(char::is_control) => {
            Ok(n.to_string())
        }
        _ => Err(ApiError::invalid(
            "name: 1 to 255 characters, no control characters",
        )),
    }
}

fn store_description(v: &Value) -> ApiResult<String> {
    match v.as_str() {
        Some(d) if d.chars().count() <= 1024 => Ok(d.to_string()),
        _ => Err(ApiError::invalid("description: at most 1024 characters")),
    }
}

#[derive(Default)]
struct MemoryState {
    stores: BTreeMap<String, Value>,
    memories: BTreeMap<String, Value>,
}

/// Memory stores and their memories.
pub(crate) struct Memory {
    store: Arc<dyn AgentsStore>,
    state: Mutex<MemoryState>,
    /// Memory writes one at a time: a `content_sha256` precondition is
    /// checked and the write made with nothing in between.
    writes: tokio::sync::Mutex<()>,
}

/// A memory as shown: `view=basic` leaves out the content.
pub fn view(m: &Value, full: bool) -> Value {
    let mut v = m.clone();
    if !full {
        v["content"] = Value::Null;
    }
    v
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

impl Memory {
    pub(crate) async fn load(store: Arc<dyn AgentsStore>) -> Result<Memory, StartError> {
        let mut st = MemoryState::default();
        for s in store.load_docs(STORE).await? {
            st.stores.insert(id_of(STORE, &s)?, s);
        }
        for m in store.load_docs(MEMORY).await? {
            st.memories.insert(id_of(MEMORY, &m)?, m);
        }
        Ok(Memory {
            store,
            state: Mutex::new(st),
            writes: tokio::sync::Mutex::new(()),
        })
    }

    fn state(&self) -> MutexGuard<'_, MemoryState> {
        lock(&self.state)
    }

    pub(crate) async fn create_store(&self, body: &Value) -> ApiResult<Value> {
        let name = store_name(&body["name"])?;
        let description = match &body["description"] {
            Value::Null => String::new(),
            d => store_description(d)?,
        };
        let t = now();
        let doc = json!({
            "type": "memory_store", "id": new_id("memstore"), "name": name, "description": description,
            "metadata": merge_metadata(&json!({}), &body["metadata"], "metadata")?,
            "created_at": t, "updated_at": t, "archived_at": null,
        });
        self.save_doc(STORE, &doc).await?;
        Ok(doc)
    }

    async fn save_doc(&self, kind: &str, doc: &Value) -> ApiResult<()> {
        let id = doc["id"].as_str().unwrap_or_default().to_string();
        self.store.put_doc(kind, &id, doc).await?;
        let mut st = self.state();
        let map = if kind == STORE {
            &mut st.stores
        } else {
            &mut st.memories
        };
        map.insert(id, doc.clone());
        Ok(())
    }

    pub(crate) fn store(&self, id: &str) -> ApiResult<Value> {
        let st = self.state();
        st.stores
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("memory store", id))
    }

    pub(crate) fn stores(&self, include_archived: bool) -> Vec<Value> {
        let st = self.state();
        let mut out: Vec<Value> = st
            .stores
            .values()
            .filter(|s| include_archived || s["archived_at"].is_null())
            .cloned()
            .collect();
        out.sort_by(|a, b| b["created_at"].as_str().cmp(&a["created_at"].as_str()));
        out
    }

    pub(crate) async fn update_store(&self, id: &str, body: &Value) -> ApiResult<Value> {
        let mut doc = self.store(id)?;
        if body.get("name").is_some_and(|n| !n.is_null()) {
            doc["name"] = json!(store_name(&body["name"])?);
        }
        if body.get("description").is_some_and(|d| !d.is_null()) {
            doc["description"] = json!(store_description(&body["description"])?);
        }
        doc["metadata"] = merge_metadata(&doc["metadata"], &body["metadata"], "metadata")?;
        doc["updated_at"] = json!(now());
        self.save_doc(STORE, &doc).await?;
        Ok(doc)
    }

    pub(crate) async fn archive_store(&self, id: &str) -> ApiResult<Value> {
        let mut doc = self.store(id)?;
        if doc["archived_at"].is_null() {
            doc["archived_at"] = json!(now());
            doc["updated_at"] = doc["archived_at"].clone();
            self.save_doc(STORE, &doc).await?;
        }
        Ok(doc)
    }

    pub(crate) async fn delete_store(&self, id: &str) -> ApiResult<Value> {
        self.store(id)?;
        let gone: Vec<String> = {
            let mut st = self.state();
            st.stores.remove(id);
            let ids: Vec<String> = st
                .memories
                .values()
                .filter(|m| m["memory_store_id"] == id)
                .filter_map(|m| m["id"].as_str().map(str::to_string))
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
        Ok(json!({"id": id, "type": "memory_store_deleted"}))
    }

    fn memory_at(&self, store: &str, path: &str) -> Option<Value> {
        let st = self.state();
        st.memories
            .values()
            .find(|m| m["memory_store_id"] == store && m["path"] == path)
            .cloned()
    }

    pub(crate) fn memory(&self, store: &str, id: &str) -> ApiResult<Value> {
        let st = self.state();
        st.memories
            .get(id)
            .filter(|m| m["memory_store_id"] == store)
            .cloned()
            .ok_or_else(|| ApiError::not_found("memory", id))
    }

    pub(crate) async fn create_memory(&self, store: &str, body: &Value) -> ApiResult<Value> {
        let _write = self.writes.lock().await;
        if !self.store(store)?["archived_at"].is_null() {
            return Err(ApiError::invalid(format!(
                "memory store {store} is archived"
            )));
        }
        let path = body["path"].as_str().unwrap_or_default();
        check_path(path, "path")?;
        let content = check_content(&body["content"])?;
        if self.memory_at(store, path).is_some() {
            return Err(ApiError::MemoryPathConflict(format!(
                "path: {path} exists in {store}"
            )));
        }
        let t = now();
        let doc = json!({
            "type": "memory", "id": new_id("mem"), "memory_store_id": store, "path": path,
            "content_sha256": sha256_hex(content.as_bytes()), "content_size_bytes": content.len(), "content": content,
            "memory_version_id": new_id("memver"), "created_at": t, "updated_at": t,
        });
        self.save_doc(MEMORY, &doc).await?;
        Ok(doc)
    }

    /// Content and/or path; a `content_sha256` precondition must match.
    pub(crate) async fn update_memory(
        &self,
        store: &str,
        id: &str,
        body: &Value,
    ) -> ApiResult<Value> {
        let _write = self.writes.lock().await;
        let mut doc = self.memory(store, id)?;
        if let Some(pre) = body.get("precondition").filter(|p| !p.is_null()) {
            if pre["type"] != "content_sha256" || !pre["content_sha256"].is_string() {
                return Err(ApiError::invalid(
                    "precondition: {\"type\": \"content_sha256\", \"content_sha256\": \"<hex>\"}",
                ));
            }
            if pre["content_sha256"] != doc["content_sha256"] {
                return Err(ApiError::MemoryPreconditionFailed(format!(
                    "precondition: memory {id} has changed (content_sha256 {})",
                    doc["content_sha256"]
                )));
            }
        }
        if let Some(path) = body["path"].as_str() {
            check_path(path, "path")?;
            if path != doc["path"] && self.memory_at(store, path).is_some() {
                return Err(ApiError::MemoryPathConflict(format!(
                    "path: {path} exists in {store}"
                )));
            }
            doc["path"] = json!(path);
        }
        if body.get("content").is_some() {
            let content = check_content(&body["content"])?;
            doc["content_sha256"] = json!(sha256_hex(content.as_bytes()));
            doc["content_size_bytes"] = json!(content.len());
            doc["content"] = json!(content);
        }
        doc["memory_version_id"] = json!(new_id("memver"));
        doc["updated_at"] = json!(now());
        self.save_doc(MEMORY, &doc).await?;
        Ok(doc)
    }

    pub(crate) async fn delete_memory(
        &self,
        store: &str,
        id: &str,
        expected: Option<&str>,
    ) -> ApiResult<Value> {
        let _write = self.writes.lock().await;
        let doc = self.memory(store, id)?;
        if let Some(e) = expected
            && doc["content_sha256"] != e
        {
            return Err(ApiError::MemoryPreconditionFailed(format!(
                "expected_content_sha256: memory {id} has changed"
            )));
        }
        self.state().memories.remove(id);
        self.store.delete_doc(MEMORY, id).await?;
        Ok(json!({"id": id, "type": "memory_deleted"}))
    }

    /// Memories under `prefix`, in path order; with `depth`, what lies
    /// deeper is rolled up into `memory_prefix` entries.
    pub(crate) fn memories(
        &self,
        store: &str,
        prefix: &str,
        depth: Option<usize>,
        full: bool,
    ) -> ApiResult<Vec<Value>> {
        self.store(store)?;
        let st = self.state();
        let mut found: Vec<&Value> = st
            .memories
            .values()
            .filter(|m| {
                m["memory_store_id"] == store
                    && m["path"].as_str().is_some_and(|p| p.starts_with(prefix))
            })
            .collect();
        found.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
        let mut out: Vec<Value> = Vec::new();
        let base = if prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        for m in found {
            let path = m["path"].as_str().unwrap_or_default();
            let rest: Vec<&str> = path
                .strip_prefix(base.as_str())
                .unwrap_or(path.trim_start_matches('/'))
                .split('/')
                .collect();
            match depth {
                Some(d) if rest.len() > d => {
                    let rolled = format!("{base}{}/", rest[..d].join("/"));
                    if !out
                        .iter()
                        .any(|o| o["type"] == "memory_prefix" && o["path"] == rolled)
                    {
                        out.push(json!({"type": "memory_prefix", "path": rolled}));
                    }
                }
                _ => out.push(view(m, full)),
            }
        }
        Ok(out)
    }

    /// Resolves a session's `resources` (memory stores only here).
    pub(crate) fn session_resources(&self, v: &Value) -> ApiResult<Value> {
        let list = match v {
            Value::Null => return Ok(json!([])),
            Value::Array(l) => l,
            _ => return Err(ApiError::invalid("resources: an array")),
        };
        list.iter()
            .enumerate()
            .map(|(i, r)| {
                let at = format!("resources[{i}]");
                if r["type"] != "memory_store" {
                    return Err(ApiError::invalid(format!(
                        "{at}.type: self_hosted environments take memory_store resources only"
                    )));
                }
                let id = r["memory_store_id"].as_str().unwrap_or_default();
                let store = self.store(id).map_err(|_| {
                    ApiError::invalid(format!("{at}.memory_store_id: {id} does not exist"))
                })?;
                if !store["archived_at"].is_null() {
                    return Err(ApiError::invalid(format!(
                        "{at}.memory_store_id: {id} is archived"
                    )));
                }
                let access = r["access"].as_str().unwrap_or("read_write");
                if !matches!(access, "read_write" | "read_only") {
                    return Err(ApiError::invalid(format!(
                        "{at}.access: read_write or read_only"
                    )));
                }
                Ok(json!({
                    "type": "memory_store", "memory_store_id": id, "access": access,
                    "name": store["name"], "description": store["description"],
                    "instructions": r["instructions"].as_str().unwrap_or(""),
                    "mount_path": mount_path(store["name"].as_str().unwrap_or_default()),
                }))
            })
            .collect::<ApiResult<Vec<_>>>()
            .map(Value::Array)
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
