//! A session's resources: memory stores (in any environment) and GitHub
//! repositories (in `cloud` environments, cloned into the session's
//! sandbox when it is made). A repository's `authorization_token` is
//! sealed apart from the session ([`crate::vaults`]) and reaches the
//! repository's host only through the egress proxy.

use crate::Agents;
use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, now};
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
    pub(crate) fn session_resources(&self, v: &Value, cloud: bool) -> ApiResult<NewResources> {
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
                SessionResource::GITHUB_REPOSITORY | "file" if !cloud => {
                    return Err(ApiError::invalid(format!(
                        "{at}.type: this is a self_hosted environment; its sessions take memory_store resources only"
                    )));
                }
                other => {
                    return Err(ApiError::invalid(format!(
                        "{at}.type: {other:?} is not supported (memory_store, or github_repository in a cloud environment)"
                    )));
                }
            };
            if let Some(path) = &resolved.mount_path
                && out
                    .resources
                    .iter()
                    .any(|o| o.mount_path.as_ref() == Some(path))
            {
                return Err(ApiError::invalid(format!(
                    "{at}.mount_path: {path} is another resource's"
                )));
            }
            out.resources.push(resolved);
        }
        Ok(out)
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
        None => format!("{}/{name}", sandstone_agents_api::layout::WORKDIR),
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
