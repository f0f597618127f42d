//! A session's resources: memory stores (in any environment), GitHub
//! repositories (in `cloud` environments, cloned into the session's
//! sandbox when it is made) and files of the Files API (in `cloud`
//! environments, put read-only in the sandbox on each item, so one added
//! later appears from the next turn). A repository's `authorization_token`
//! is sealed apart from the session ([`crate::vaults`]) and reaches the
//! repository's host only through the egress proxy.

use crate::Agents;
use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, now};
use sandstone_agents_api::layout::{OUTPUTS_DIR, UPLOADS_DIR, WORKDIR};
use sandstone_agents_api::{Checkout, SessionResource};
use serde_json::Value;

/// A new session's resources, and the tokens of its repositories (by
/// resource id) to seal.
pub(crate) struct NewResources {
    pub resources: Vec<SessionResource>,
    pub tokens: Vec<(String, String)>,
}

/// The largest token accepted (a GitHub token is well under 1 KiB).
const MAX_TOKEN: usize = 16 * 1024;

impl Agents {
    /// A new session's `resources`, checked by field and resolved.
    pub(crate) async fn session_resources(
        &self,
        v: &Value,
        cloud: bool,
    ) -> ApiResult<NewResources> {
        let list = match v {
            Value::Null => {
                return Ok(NewResources {
                    resources: Vec::new(),
                    tokens: Vec::new(),
                });
            }
            Value::Array(l) => l,
            _ => return Err(ApiError::invalid("resources: an array")),
        };
        let mut out = NewResources {
            resources: Vec::new(),
            tokens: Vec::new(),
        };
        for (i, r) in list.iter().enumerate() {
            let at = format!("resources[{i}]");
            let r: SessionResource = sandstone_agents_api::from_value(r.clone())
                .map_err(|e| ApiError::invalid(format!("{at}.{e}")))?;
            let resolved = match r.kind.as_str() {
                SessionResource::MEMORY_STORE => self.memory.session_resource(r, &at)?,
                SessionResource::GITHUB_REPOSITORY if cloud => {
                    let (r, token) = repository(r, &at)?;
                    if let (Some(t), Some(id)) = (token, &r.id) {
                        out.tokens.push((id.clone(), t));
                    }
                    r
                }
                SessionResource::FILE if cloud => self.file_resource(r, &at).await?,
                SessionResource::GITHUB_REPOSITORY | SessionResource::FILE if !cloud => {
                    return Err(ApiError::invalid(format!(
                        "{at}.type: this is a self_hosted environment; its sessions take memory_store resources only"
                    )));
                }
                other => {
                    return Err(ApiError::invalid(format!(
                        "{at}.type: {other:?} is not supported (memory_store, or github_repository and file in a cloud environment)"
                    )));
                }
            };
            check_mount_free(&out.resources, &resolved, &at)?;
            out.resources.push(resolved);
        }
        Ok(out)
    }
}

impl Agents {
    /// A session's resources (`GET /v1/sessions/{id}/resources`).
    pub(crate) async fn resources(&self, session: &str) -> ApiResult<Vec<SessionResource>> {
        self.sessions.ensure(session).await?;
        Ok(self.sessions.session(session)?.resources)
    }

    /// One of a session's resources, by its `sesrsc_…` id.
    pub(crate) async fn resource(&self, session: &str, id: &str) -> ApiResult<SessionResource> {
        self.resources(session)
            .await?
            .into_iter()
            .find(|r| r.id.as_deref() == Some(id))
            .ok_or_else(|| ApiError::not_found("session resource", id))
    }

    /// `POST …/resources`: the API adds `file` resources only, to a
    /// session of a `cloud` environment; the file is in the session's
    /// sandbox when this returns, if it runs, or when it next starts.
    pub(crate) async fn add_resource(
        &self,
        session: &str,
        body: &Value,
    ) -> ApiResult<SessionResource> {
        self.sessions.ensure(session).await?;
        let doc = self.sessions.session(session)?;
        let r: SessionResource = sandstone_agents_api::from_value(body.clone())
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        if r.kind != SessionResource::FILE {
            return Err(ApiError::invalid(format!(
                "type: {:?} cannot be added to a session (the API adds file resources only)",
                r.kind
            )));
        }
        let env = self.registry.environment(&doc.environment_id)?;
        if env.config.cloud().is_none() {
            return Err(ApiError::invalid(
                "type: this is a self_hosted environment; its sessions take memory_store resources only",
            ));
        }
        let added = self.file_resource(r, "").await?;
        let doc = self
            .sessions
            .update_doc(session, |d| {
                check_mount_free(&d.resources, &added, "")?;
                d.resources.push(added.clone());
                Ok(())
            })
            .await?;
        self.files_changed(session).await?;
        Ok(doc
            .resources
            .into_iter()
            .find(|r| r.id == added.id)
            .unwrap_or(added))
    }

    /// A `file` resource checked: its file exists, its mount path is one
    /// a link can go to ([`UPLOADS_DIR`]`/<file_id>` unless given).
    async fn file_resource(&self, r: SessionResource, at: &str) -> ApiResult<SessionResource> {
        let field = |name: &str| {
            if at.is_empty() {
                name.to_string()
            } else {
                format!("{at}.{name}")
            }
        };
        if let Some(k) = r.extra.keys().next() {
            return Err(ApiError::invalid(format!("{}: unknown field", field(k))));
        }
        let file_id = r.file_id.unwrap_or_default();
        if file_id.is_empty() {
            return Err(ApiError::invalid(format!(
                "{}: required, the id of an uploaded file",
                field("file_id")
            )));
        }
        if self.files.metadata(&file_id).await.is_err() {
            return Err(ApiError::invalid(format!(
                "{}: no file {file_id} (upload it with the Files API first)",
                field("file_id")
            )));
        }
        let mount_path = match r.mount_path {
            None => format!("{UPLOADS_DIR}/{file_id}"),
            Some(p) if valid_path(&p) && file_mount_allowed(&p, &file_id) => p,
            Some(_) => {
                return Err(ApiError::invalid(format!(
                    "{}: an absolute path without . or .. segments, directly in {UPLOADS_DIR} or outside it, and not {WORKDIR}, {OUTPUTS_DIR} or a directory above them",
                    field("mount_path")
                )));
            }
        };
        let t = now();
        Ok(SessionResource {
            id: Some(new_id("sesrsc")),
            kind: r.kind,
            file_id: Some(file_id),
            mount_path: Some(mount_path),
            created_at: Some(t.clone()),
            updated_at: Some(t),
            ..SessionResource::default()
        })
    }

    /// `POST …/resources/{id}`: a repository's new `authorization_token`,
    /// used from the next request its sandbox makes.
    pub(crate) async fn update_resource(
        &self,
        session: &str,
        id: &str,
        body: &Value,
    ) -> ApiResult<SessionResource> {
        let r = self.resource(session, id).await?;
        if !r.is_repository() {
            return Err(ApiError::invalid(format!(
                "authorization_token: resource {id} is a {}; only github_repository resources take a token",
                r.kind
            )));
        }
        if let Some(k) = body
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .find(|k| *k != "authorization_token")
        {
            return Err(ApiError::invalid(format!("{k}: unknown field")));
        }
        let token = match &body["authorization_token"] {
            Value::String(t) if !t.is_empty() && t.len() <= MAX_TOKEN => t.clone(),
            _ => {
                return Err(ApiError::invalid(format!(
                    "authorization_token: required, a string of 1 to {MAX_TOKEN} bytes"
                )));
            }
        };
        self.vaults.seal_resource_token(session, id, &token).await?;
        let t = now();
        let doc = self
            .sessions
            .update_doc(session, |d| {
                for r in d
                    .resources
                    .iter_mut()
                    .filter(|r| r.id.as_deref() == Some(id))
                {
                    r.updated_at = Some(t.clone());
                }
                Ok(())
            })
            .await?;
        doc.resources
            .into_iter()
            .find(|r| r.id.as_deref() == Some(id))
            .ok_or_else(|| ApiError::not_found("session resource", id))
    }

    /// `DELETE …/resources/{id}`: gone from the session, its token
    /// forgotten (a clone already made stays in the sandbox's files), a
    /// file taken out of a running sandbox.
    pub(crate) async fn delete_resource(&self, session: &str, id: &str) -> ApiResult<Value> {
        let gone = self.resource(session, id).await?;
        self.sessions
            .update_doc(session, |d| {
                d.resources.retain(|r| r.id.as_deref() != Some(id));
                Ok(())
            })
            .await?;
        if gone.is_file() {
            self.files_changed(session).await?;
        }
        self.vaults.forget_resource_token(id).await?;
        Ok(serde_json::json!({"id": id, "type": "session_resource_deleted"}))
    }
}

/// A `github_repository` resource checked, with its token taken out.
fn repository(mut r: SessionResource, at: &str) -> ApiResult<(SessionResource, Option<String>)> {
    let token = match r.extra.remove("authorization_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if !t.is_empty() && t.len() <= MAX_TOKEN => Some(t),
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "{at}.authorization_token: a string of 1 to {MAX_TOKEN} bytes"
            )));
        }
    };
    if let Some(k) = r.extra.keys().next() {
        return Err(ApiError::invalid(format!("{at}.{k}: unknown field")));
    }
    let url = r.url.take().unwrap_or_default();
    let parsed = reqwest::Url::parse(&url).ok().filter(|u| {
        matches!(u.scheme(), "https" | "http")
            && u.host_str().is_some()
            && u.username().is_empty()
            && u.password().is_none()
            && u.query().is_none()
            && u.path_segments()
                .is_some_and(|mut s| s.any(|p| !p.is_empty()))
    });
    let Some(parsed) = parsed else {
        return Err(ApiError::invalid(format!(
            "{at}.url: an https URL of a repository (https://github.com/owner/repo), without credentials"
        )));
    };
    let name = parsed
        .path_segments()
        .and_then(|mut s| s.rfind(|p| !p.is_empty()))
        .map(|n| n.trim_end_matches(".git").to_string())
        .unwrap_or_default();
    let mount_path = match r.mount_path.take() {
        None => format!("{}/{name}", WORKDIR),
        Some(p) if valid_path(&p) => p,
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "{at}.mount_path: an absolute path without . or .. segments"
            )));
        }
    };
    match &r.checkout {
        Some(Checkout::Branch { name }) if !valid_branch(name) => {
            return Err(ApiError::invalid(format!(
                "{at}.checkout.name: a branch name"
            )));
        }
        Some(Checkout::Commit { sha })
            if !matches!(sha.len(), 40 | 64) || !sha.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            return Err(ApiError::invalid(format!(
                "{at}.checkout.sha: a full commit SHA (40 hex digits)"
            )));
        }
        _ => {}
    }
    let t = now();
    Ok((
        SessionResource {
            id: Some(new_id("sesrsc")),
            kind: r.kind,
            url: Some(url),
            mount_path: Some(mount_path),
            checkout: r.checkout,
            created_at: Some(t.clone()),
            updated_at: Some(t),
            ..SessionResource::default()
        },
        token,
    ))
}

/// No two resources at one mount path.
fn check_mount_free(
    resources: &[SessionResource],
    new: &SessionResource,
    at: &str,
) -> ApiResult<()> {
    match &new.mount_path {
        Some(path)
            if resources
                .iter()
                .any(|o| o.mount_path.as_ref() == Some(path)) =>
        {
            let field = if at.is_empty() {
                "mount_path".to_string()
            } else {
                format!("{at}.mount_path")
            };
            Err(ApiError::invalid(format!(
                "{field}: {path} is another resource's"
            )))
        }
        _ => Ok(()),
    }
}

/// Where a file's link may go: directly in the uploads directory (no
/// link then; not under another file's id, which is where that file goes
/// when it is linked elsewhere), or anywhere else but the directories the
/// session's layout needs and those above them (a link there would
/// replace them).
fn file_mount_allowed(p: &str, file_id: &str) -> bool {
    if let Some(name) = p
        .strip_prefix(UPLOADS_DIR)
        .and_then(|r| r.strip_prefix('/'))
    {
        return !name.is_empty()
            && !name.contains('/')
            && (name == file_id || !name.starts_with("file_"));
    }
    ![UPLOADS_DIR, WORKDIR, OUTPUTS_DIR, "/mnt/memory"]
        .iter()
        .any(|d| *d == p || d.starts_with(&format!("{p}/")))
}

fn valid_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && p.len() <= 1024
        && !p
            .split('/')
            .any(|s| s == "." || s == ".." || s.chars().any(char::is_control))
}

/// A branch name git takes, never an option.
fn valid_branch(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && !n.starts_with(['-', '/'])
        && !n.contains("..")
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_goes_in_the_uploads_directory_or_where_no_layout_directory_is() {
        let ok = |p: &str| file_mount_allowed(p, "file_a");
        assert!(ok("/mnt/session/uploads/file_a"));
        assert!(ok("/mnt/session/uploads/data.csv"));
        assert!(ok("/workspace/in/data.csv"));
        assert!(ok("/srv/data.csv"));
        for bad in [
            "/mnt/session/uploads/file_b",
            "/mnt/session/uploads/a/b",
            "/mnt/session/uploads",
            "/mnt/session",
            "/mnt",
            "/workspace",
            "/mnt/session/outputs",
        ] {
            assert!(!ok(bad), "{bad}");
        }
    }

    fn repo(v: Value) -> ApiResult<(SessionResource, Option<String>)> {
        repository(sandstone_agents_api::from_value(v).unwrap(), "resources[0]")
    }

    #[test]
    fn repositories_are_checked_by_field_and_their_token_taken_out() {
        let (r, t) = repo(serde_json::json!({"type": "github_repository",
            "url": "https://github.com/o/tool.git", "authorization_token": "ghp_x",
            "checkout": {"type": "branch", "name": "release/1.0"}}))
        .unwrap();
        assert_eq!(t.as_deref(), Some("ghp_x"));
        assert_eq!(r.mount_path.as_deref(), Some("/workspace/tool"));
        assert!(r.id.unwrap().starts_with("sesrsc_"));
        assert!(r.extra.is_empty());
        for (v, field) in [
            (
                serde_json::json!({"url": "https://u:p@github.com/o/r"}),
                "url",
            ),
            (serde_json::json!({"url": "ftp://github.com/o/r"}), "url"),
            (
                serde_json::json!({"url": "https://github.com/o/r", "mount_path": "/a/../b"}),
                "mount_path",
            ),
            (
                serde_json::json!({"url": "https://github.com/o/r", "checkout": {"type": "branch", "name": "--upload-pack=x"}}),
                "checkout.name",
            ),
            (
                serde_json::json!({"url": "https://github.com/o/r", "checkout": {"type": "commit", "sha": "abc"}}),
                "checkout.sha",
            ),
            (
                serde_json::json!({"url": "https://github.com/o/r", "authorization_token": 5}),
                "authorization_token",
            ),
        ] {
            let mut v = v;
            v["type"] = "github_repository".into();
            let e = repo(v).unwrap_err().to_string();
            assert!(e.starts_with(&format!("resources[0].{field}")), "{e}");
        }
    }
}
