//! Who is calling: a server API key (`Authorization: Bearer` or
//! `X-Api-Key`), an environment key (the worker's standing credential) or a
//! work item's sessions token (one session's calls only). Keys are stored
//! as hashes and checked on every request, so a revoked key stops at once.
//! Also requires the Managed Agents beta header.

use crate::error::{ApiError, ApiResult};
use crate::registry::KEY;
use crate::teams::Owners;
use crate::{Agents, KeyGrant};
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sandstone_agents_api::Access;
use sandstone_api::auth::Action;
use sandstone_db::token_hash;
use std::sync::Arc;

pub const BETA: &str = "managed-agents-2026-04-01";
/// Memory store endpoints take their own beta instead.
pub const MEMORY_BETA: &str = "agent-memory-2026-07-22";
pub const ENV_KEY_PREFIX: &str = "sk-sst-env-";
pub const SESSIONS_TOKEN_PREFIX: &str = "sk-sst-req-";

#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// A server API key, acting in its team.
    Api {
        team: String,
    },
    Environment(String),
    /// A sessions token: the session and the work item it came with.
    Session {
        session: String,
        work: String,
    },
}

impl Caller {
    /// A server API key's team; anything else is refused.
    pub fn require_api(&self) -> ApiResult<&str> {
        match self {
            Caller::Api { team } => Ok(team),
            _ => Err(ApiError::forbidden(
                "this endpoint needs a server API key, not an environment key or sessions token",
            )),
        }
    }

    /// API keys or the environment's own key.
    pub fn require_environment(&self, env: &str) -> ApiResult<()> {
        match self {
            Caller::Api { .. } => Ok(()),
            Caller::Environment(e) if e == env => Ok(()),
            _ => Err(ApiError::forbidden(format!(
                "this credential is not valid for environment {env}"
            ))),
        }
    }

    /// As `require_environment`, or the sessions token that came with
    /// this very work item (a token never acts on another item).
    pub fn require_work(&self, env: &str, work: &str) -> ApiResult<()> {
        match self {
            Caller::Session { work: w, .. } if w == work => Ok(()),
            Caller::Session { .. } => Err(ApiError::forbidden(format!(
                "this sessions token is not valid for work {work}"
            ))),
            _ => self.require_environment(env),
        }
    }

    /// API keys, or the sessions token of a session the store is attached
    /// to (environment keys are refused here, as the API does); writes
    /// need a `read_write` attachment.
    pub fn require_store(&self, agents: &Agents, store: &str, write: bool) -> ApiResult<()> {
        match self {
            Caller::Api { .. } => Ok(()),
            Caller::Session { session, .. } => match agents.sessions.store_access(session, store) {
                Some(access) if !write || access == Access::ReadWrite => Ok(()),
                Some(_) => Err(ApiError::forbidden(format!(
                    "memory store {store} is attached read_only to this session"
                ))),
                None => Err(ApiError::forbidden(format!(
                    "this credential is not valid for memory store {store}"
                ))),
            },
            _ => Err(ApiError::forbidden(format!(
                "this credential is not valid for memory store {store}"
            ))),
        }
    }

    /// API keys, or a worker serving a session whose agent uses the skill.
    pub fn require_skill(&self, agents: &Agents, skill: &str) -> ApiResult<()> {
        let uses = |session: &str| agents.sessions.uses_skill(session, skill);
        let ok = match self {
            Caller::Api { .. } => true,
            Caller::Session { session, .. } => uses(session),
            Caller::Environment(env) => agents.sessions.of_environment(env).iter().any(|s| uses(s)),
        };
        if ok {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this credential is not valid for skill {skill}"
            )))
        }
    }

    /// API keys, the key of the session's environment, or the session's
    /// own sessions token.
    pub fn require_session(&self, agents: &Agents, session: &str) -> ApiResult<()> {
        match self {
            Caller::Api { .. } => Ok(()),
            Caller::Environment(e)
                if agents.sessions.environment(session).as_deref() == Some(e) =>
            {
                Ok(())
            }
            Caller::Session { session: s, .. } if s == session => Ok(()),
            _ => Err(ApiError::forbidden(format!(
                "this credential is not valid for session {session}"
            ))),
        }
    }
}

fn has_beta(headers: &HeaderMap, beta: &str) -> bool {
    headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|b| b.trim() == beta)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    sandstone_api::auth::api_key(|name| headers.get(name).and_then(|v| v.to_str().ok()))
        .map(str::to_string)
}

/// What a `/v1` request does, as a key's role sees it: a file's, a
/// skill's or a memory's bytes are contents (a viewer lists them but does
/// not download them), and a poll for work takes the work (it hands out a
/// sessions token that writes).
fn action(method: &axum::http::Method, path: &str) -> Action {
    let read = method == axum::http::Method::GET || method == axum::http::Method::HEAD;
    let contents = (path.contains("/files/") || path.contains("/skills/"))
        && path.ends_with("/content")
        || path.contains("/memories/");
    if !read || path.ends_with("/work/poll") {
        Action::Write
    } else if contents {
        Action::ReadContents
    } else {
        Action::Read
    }
}

/// Who is calling; `action` (what the request does, and `what` it is
/// named) must be one the caller's key may do.
async fn identify(
    agents: &Agents,
    headers: &HeaderMap,
    action: Action,
    what: &str,
) -> ApiResult<Caller> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError::unauthorized("missing credentials: send Authorization: Bearer <key> or X-Api-Key")
    })?;
    if token.starts_with(ENV_KEY_PREFIX) {
        let hash = token_hash(&token);
        return agents
            .registry
            .fresh(KEY, &hash, |r| r.environment_of_key(&hash))
            .await
            .map(Caller::Environment);
    }
    if token.starts_with(SESSIONS_TOKEN_PREFIX) {
        let (session, work) = agents.queue.session_of_token(&token_hash(&token)).await?;
        agents.sessions.ensure(&session).await?;
        return Ok(Caller::Session { session, work });
    }
    if let Some(KeyGrant { role, team }) = (agents.api_keys)(token.clone()).await {
        if !role.may(action) {
            // Only a prefix of its hash is ever recorded, and only here.
            let hash = token_hash(&token);
            tracing::warn!(target: "sandstone::audit", key_hash = &hash[..12],
                role = %role, request = what, "request refused by the key's role");
            return Err(ApiError::forbidden(format!(
                "this API key's role ({role}) may not {what}"
            )));
        }
        return Ok(Caller::Api { team });
    }
    Err(ApiError::unauthorized("invalid API key"))
}

pub async fn middleware(
    State(agents): State<Arc<Agents>>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    let beta = if path.contains("/memory_stores") {
        MEMORY_BETA
    } else {
        BETA
    };
    // The SDKs send skills and files requests without a beta header.
    let exempt = path.contains("/skills") || path.contains("/files");
    if !exempt && !has_beta(req.headers(), beta) {
        return ApiError::invalid(format!("missing beta header: send anthropic-beta: {beta}"))
            .into_response();
    }
    let what = format!("{} {}", req.method(), req.uri().path());
    let act = action(req.method(), req.uri().path());
    let caller = match identify(&agents, req.headers(), act, &what).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    // An object another team made is not there for this key.
    if let Caller::Api { team } = &caller
        && let Some((kind, id)) = Owners::named_in(req.uri().path())
        && let Err(e) = agents.owners.check(team, kind, &id).await
    {
        return e.into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::action;
    use axum::http::Method;
    use sandstone_api::auth::Action;

    #[test]
    fn bytes_are_contents_and_a_poll_takes_work() {
        let get = |p: &str| action(&Method::GET, p);
        assert_eq!(get("/files/file_1/content"), Action::ReadContents);
        assert_eq!(get("/skills/s/versions/1/content"), Action::ReadContents);
        assert_eq!(get("/memory_stores/m/memories/mem_1"), Action::ReadContents);
        assert_eq!(get("/memory_stores/m/memories"), Action::Read);
        assert_eq!(get("/environments/e/work/poll"), Action::Write);
        assert_eq!(get("/sessions/s/events"), Action::Read);
        assert_eq!(action(&Method::POST, "/agents"), Action::Write);
    }
}
