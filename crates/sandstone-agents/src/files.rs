//! The Files API: uploaded files, their metadata and their bytes. Each file
//! is two documents, its metadata and its content (base64), so a listing
//! never reads contents. Nothing is cached: every node answers from the
//! store.

use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, now};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sandstone_agents_api::{Deleted, Extra, FileMetadata, FileTag};
use sandstone_api::timefmt::{now_us, parse_rfc3339_us, rfc3339_us};
use sandstone_db::agents::AgentsStore;
use serde_json::json;
use std::sync::Arc;

pub const FILE: &str = "file";
const CONTENT: &str = "file_content";
/// The largest upload (under the router's 32 MiB body limit, with room
/// for the form): content is kept in the metadata database.
pub const MAX_FILE: usize = 30 << 20;

/// An upload as the multipart form sent it.
pub(crate) struct Upload {
    pub filename: String,
    pub mime_type: Option<String>,
    pub bytes: Vec<u8>,
    pub expires_in_seconds: Option<u64>,
}

pub(crate) struct Files {
    store: Arc<dyn AgentsStore>,
}

/// Whether `f` has expired (then it is gone for every call).
fn expired(f: &FileMetadata) -> bool {
    f.expires_at
        .as_deref()
        .and_then(parse_rfc3339_us)
        .is_some_and(|t| t <= now_us())
}

impl Files {
    pub(crate) fn new(store: Arc<dyn AgentsStore>) -> Files {
        Files { store }
    }

    pub(crate) async fn upload(&self, u: Upload) -> ApiResult<FileMetadata> {
        if u.filename.is_empty()
            || u.filename.chars().count() > 255
            || u.filename.contains(['/', '\0'])
        {
            return Err(ApiError::invalid(
                "file: a filename of 1 to 255 characters, without / or NUL",
            ));
        }
        if u.bytes.len() > MAX_FILE {
            return Err(ApiError::invalid(format!("file: at most {MAX_FILE} bytes")));
        }
        let expires_at = match u.expires_in_seconds {
            None => None,
            Some(s @ 1..=31_536_000) => Some(rfc3339_us(now_us() + s as i64 * 1_000_000)),
            Some(_) => {
                return Err(ApiError::invalid(
                    "expires_in_seconds: between 1 and 31536000",
                ));
            }
        };
        let doc = FileMetadata {
            tag: FileTag,
            id: new_id("file"),
            filename: u.filename,
            mime_type: u
                .mime_type
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "application/octet-stream".into()),
            size_bytes: u.bytes.len() as u64,
            created_at: now(),
            downloadable: Some(true),
            expires_at,
            extra: Extra::new(),
        };
        // The content first: metadata never names bytes that are missing.
        let content = json!({"id": doc.id, "content": B64.encode(&u.bytes)});
        self.store.put_doc(CONTENT, &doc.id, &content).await?;
        self.store.put_doc(FILE, &doc.id, &json!(doc)).await?;
        Ok(doc)
    }

    pub(crate) async fn metadata(&self, id: &str) -> ApiResult<FileMetadata> {
        self.store
            .get_doc(FILE, id)
            .await?
            .map(crate::validate::typed::<FileMetadata>)
            .transpose()?
            .filter(|f| !expired(f))
            .ok_or_else(|| ApiError::not_found("file", id))
    }

    /// Newest first; `ids` picks those files only.
    pub(crate) async fn list(&self, ids: &[String]) -> ApiResult<Vec<FileMetadata>> {
        let mut out = Vec::new();
        for v in self.store.load_docs(FILE).await? {
            let f: FileMetadata = crate::validate::typed(v)?;
            if !expired(&f) && (ids.is_empty() || ids.contains(&f.id)) {
                out.push(f);
            }
        }
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(out)
    }

    pub(crate) async fn content(&self, id: &str) -> ApiResult<(FileMetadata, Vec<u8>)> {
        let meta = self.metadata(id).await?;
        let doc = self
            .store
            .get_doc(CONTENT, id)
            .await?
            .ok_or_else(|| ApiError::internal(format!("file {id}: its content is missing")))?;
        let bytes = B64
            .decode(doc["content"].as_str().unwrap_or_default())
            .map_err(|e| ApiError::internal(format!("file {id}: stored content: {e}")))?;
        Ok((meta, bytes))
    }

    pub(crate) async fn delete(&self, id: &str) -> ApiResult<Deleted> {
        self.metadata(id).await?;
        // Metadata first: a file is gone once it no longer lists.
        self.store.delete_doc(FILE, id).await?;
        self.store.delete_doc(CONTENT, id).await?;
        Ok(Deleted {
            id: id.to_string(),
            kind: "file_deleted".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_read_from_the_metadata() {
        let mut f = FileMetadata {
            tag: FileTag,
            id: "file_1".into(),
            filename: "a".into(),
            mime_type: "text/plain".into(),
            size_bytes: 0,
            created_at: now(),
            downloadable: Some(true),
            expires_at: None,
            extra: Extra::new(),
        };
        assert!(!expired(&f));
        f.expires_at = Some(rfc3339_us(now_us() - 1));
        assert!(expired(&f));
        f.expires_at = Some(rfc3339_us(now_us() + 60_000_000));
        assert!(!expired(&f));
    }
}
