//! The `/v1` routes. Conventions (cma-protocol §1.2, §5.1): `POST` creates
//! and updates, `?beta=true` is ignored, query arrays use brackets
//! (`types[]=a&types[]=b`), lists page with `limit`/`page` → `next_page`.

use crate::Agents;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::registry::AGENT;
use crate::sessions::SessionFilter;
use crate::validate::paginate;
use crate::work::Poll;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Multipart, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use sandstone_agents_api::{KnownEvent, WorkStop};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

type S = State<Arc<Agents>>;

/// Query parameters, with `name[]` collected into lists.
struct Query(Vec<(String, String)>);

impl Query {
    fn one(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<String> {
        let bracket = format!("{name}[]");
        self.0
            .iter()
            .filter(|(k, _)| *k == bracket || k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn flag(&self, name: &str) -> bool {
        self.one(name) == Some("true")
    }

    fn limit(&self) -> ApiResult<Option<usize>> {
        self.one("limit")
            .map(|l| {
                l.parse()
                    .map_err(|_| ApiError::invalid("limit: an integer"))
            })
            .transpose()
    }
}

/// The query string as pairs (repeated and `name[]` keys kept).
impl<St: Send + Sync> FromRequestParts<St> for Query {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, ApiError> {
        let axum::extract::Query(pairs) =
            axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::invalid(format!("query: {e}")))?;
        Ok(Query(pairs))
    }
}

/// A handler argument that admits only server API keys: what environment
/// keys and sessions tokens may not do is declared in the signature. It
/// holds the key's team.
struct Api(String);

impl<St: Send + Sync> FromRequestParts<St> for Api {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .ok_or_else(|| ApiError::unauthorized("missing credentials"))?
            .require_api()
            .map(|team| Api(team.to_string()))
    }
}

/// A JSON body (an empty one is `{}`); malformed JSON is a 400.
fn body(bytes: &Bytes) -> ApiResult<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("request body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::invalid("request body: a JSON object"));
    }
    Ok(v)
}

fn ok(v: impl serde::Serialize) -> ApiResult<Response> {
    Ok(Json(v).into_response())
}

fn page(items: Vec<impl serde::Serialize>, q: &Query, max: usize) -> ApiResult<Response> {
    ok(paginate(items, q.limit()?, q.one("page"), max)?)
}

/// A page of the top-level objects `team` owns (others are not there for
/// it), paged after the filter so pages stay full.
async fn team_page(
    a: &Agents,
    team: &str,
    items: Vec<impl serde::Serialize>,
    q: &Query,
    max: usize,
) -> ApiResult<Response> {
    let mut mine = Vec::with_capacity(items.len());
    for item in items {
        let v = serde_json::to_value(item).map_err(|e| ApiError::Internal(e.to_string()))?;
        if a.owners
            .owns(team, v["id"].as_str().unwrap_or_default())
            .await?
        {
            mine.push(v);
        }
    }
    page(mine, q, max)
}

/// Answers with a new top-level object, recorded as `team`'s.
async fn created(a: &Agents, team: &str, object: impl serde::Serialize) -> ApiResult<Response> {
    let v = serde_json::to_value(object).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(id) = v["id"].as_str() {
        a.owners.set(id, team).await?;
    }
    ok(v)
}

/// Refuses a body that refers to another team's objects (a session's
/// agent, environment, vaults and resources; an agent's custom skills), as
/// if they did not exist.
async fn check_references(a: &Agents, team: &str, b: &Value) -> ApiResult<()> {
    let mut refs: Vec<(&str, &str)> = Vec::new();
    let agent = &b["agent"];
    if let Some(id) = agent.as_str().or_else(|| agent["id"].as_str()) {
        refs.push(("agent", id));
    }
    if let Some(id) = b["environment_id"].as_str() {
        refs.push(("environment", id));
    }
    for v in b["vault_ids"].as_array().into_iter().flatten() {
        refs.extend(v.as_str().map(|id| ("vault", id)));
    }
    let resources = b["resources"].as_array().into_iter().flatten();
    for r in resources.chain(std::iter::once(b)) {
        refs.extend(r["file_id"].as_str().map(|id| ("file", id)));
        refs.extend(r["memory_store_id"].as_str().map(|id| ("memory store", id)));
    }
    for s in b["skills"].as_array().into_iter().flatten() {
        if s["type"] == "custom" {
            refs.extend(s["skill_id"].as_str().map(|id| ("skill", id)));
        }
    }
    for (what, id) in refs {
        a.owners.check(team, what, id).await?;
    }
    Ok(())
}

async fn create_agent(State(a): S, Api(team): Api, b: Bytes) -> ApiResult<Response> {
    let b = body(&b)?;
    check_references(&a, &team, &b).await?;
    created(&a, &team, a.create_agent(&b).await?).await
}

async fn list_agents(State(a): S, Api(team): Api, q: Query) -> ApiResult<Response> {
    let all = a.registry.agents(q.flag("include_archived"));
    team_page(&a, &team, all, &q, 100).await
}

async fn get_agent(State(a): S, _: Api, Path(id): Path<String>, q: Query) -> ApiResult<Response> {
    let version = q
        .one("version")
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ApiError::invalid("version: an integer"))
        })
        .transpose()?;
    ok(a.registry
        .fresh(AGENT, &format!("{id}@1"), |r| r.agent(&id, version))
        .await?)
}

async fn update_agent(
    State(a): S,
    Api(team): Api,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult<Response> {
    let b = body(&b)?;
    check_references(&a, &team, &b).await?;
    ok(a.update_agent(&id, &b).await?)
}

async fn archive_agent(State(a): S, _: Api, Path(id): Path<String>) -> ApiResult<Response> {
    ok(a.registry.archive_agent(&id).await?)
}

async fn agent_versions(
    State(a): S,
    _: Api,
    Path(id): Path<String>,
    q: Query,
) -> ApiResult<Response> {
    page(a.registry.agent_versions(&id)?, &q, 100)
}

async fn create_environment(State(a): S, Api(team): Api, b: Bytes) -> ApiResult<Response> {
    let env = a.registry.create_environment(&body(&b)?).await?;
    // Owned before it is prepared: a cloud environment's sandboxes are
    // made in its team.
    a.owners.set(&env.id, &team).await?;
    a.prepare_cloud(&env);
    ok(env)
}

async fn list_environments(State(a): S, Api(team): Api, q: Query) -> ApiResult<Response> {
    let all = a.registry.environments(q.flag("include_archived"));
    team_page(&a, &team, all, &q, 100).await
}

async fn get_environment(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    c.require_environment(&id)?;
    ok(a.registry.fresh_environment(&id).await?)
}

async fn update_environment(
    State(a): S,
    _: Api,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult<Response> {
    let (env, changed) = a.registry.update_environment(&id, &body(&b)?).await?;
    if changed {
        a.prepare_cloud(&env);
        a.dispatch(&env.id).await;
    }
    ok(env)
}

async fn delete_environment(State(a): S, _: Api, Path(id): Path<String>) -> ApiResult<Response> {
    ok(a.delete_environment(&id).await?)
}

async fn archive_environment(State(a): S, _: Api, Path(id): Path<String>) -> ApiResult<Response> {
    ok(a.registry.archive_environment(&id).await?)
}

async fn create_key(State(a): S, _: Api, Path(id): Path<String>) -> ApiResult<Response> {
    ok(a.registry.create_key(&id).await?)
}

async fn list_keys(State(a): S, _: Api, Path(id): Path<String>, q: Query) -> ApiResult<Response> {
    page(a.registry.keys(&id)?, &q, 100)
}

async fn revoke_key(
    State(a): S,
    _: Api,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult<Response> {
    ok(a.registry.revoke_key(&id, &key).await?)
}

async fn poll(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path(env): Path<String>,
    q: Query,
    headers: HeaderMap,
) -> ApiResult<Response> {
    c.require_environment(&env)?;
    let worker = headers
        .get("anthropic-worker-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let p = Poll::parse(q.one("block_ms"), q.one("reclaim_older_than_ms"), worker)?;
    a.registry.fresh_environment(&env).await?;
    let mut resp = ok(a.queue.poll(&env, &p).await?)?;
    // This poll waited for work (and wakes the moment it arrives): a
    // worker may poll again at once after an empty answer instead of
    // sleeping as it must against a server that does not say so.
    resp.headers_mut().insert(
        sandstone_agents_api::LONG_POLL_HEADER,
        axum::http::HeaderValue::from_static("true"),
    );
    Ok(resp)
}

async fn ack(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path((env, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    c.require_environment(&env)?;
    ok(a.queue.ack(&env, &id).await?)
}

async fn heartbeat(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path((env, id)): Path<(String, String)>,
    q: Query,
) -> ApiResult<Response> {
    c.require_work(&env, &id)?;
    let ttl = q
        .one("desired_ttl_seconds")
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::invalid("desired_ttl_seconds: an integer"))
        })
        .transpose()?;
    ok(a.queue
        .heartbeat(&env, &id, q.one("expected_last_heartbeat"), ttl)
        .await?)
}

async fn stop(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path((env, id)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult<Response> {
    c.require_work(&env, &id)?;
    let stop: WorkStop = crate::validate::body(&body(&b)?)?;
    ok(a.queue.stop(&env, &id, stop.force.unwrap_or(false)).await?)
}

async fn work_stats(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path(env): Path<String>,
) -> ApiResult<Response> {
    c.require_environment(&env)?;
    a.registry.fresh_environment(&env).await?;
    ok(a.queue.stats(&env).await?)
}

async fn work_list(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path(env): Path<String>,
    q: Query,
) -> ApiResult<Response> {
    if !matches!(&c, Caller::Environment(e) if *e == env) {
        return Err(ApiError::forbidden(
            "listing work needs the environment's key",
        ));
    }
    a.registry.fresh_environment(&env).await?;
    page(a.queue.list(&env).await?, &q, 1000)
}

async fn work_get(
    State(a): S,
    _: Api,
    Path((env, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    ok(a.queue.item(&env, &id).await?)
}

async fn work_update(
    State(a): S,
    _: Api,
    Path((env, id)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult<Response> {
    ok(a.queue.update(&env, &id, &body(&b)?).await?)
}

async fn create_session(State(a): S, Api(team): Api, b: Bytes) -> ApiResult<Response> {
    let b = body(&b)?;
    check_references(&a, &team, &b).await?;
    created(&a, &team, a.create_session(&b).await?).await
}

async fn list_sessions(State(a): S, Api(team): Api, q: Query) -> ApiResult<Response> {
    let filter = SessionFilter {
        include_archived: q.flag("include_archived"),
        agent_id: q.one("agent_id").map(str::to_string),
        statuses: q.all("statuses"),
        ascending: q.one("order") == Some("asc"),
    };
    team_page(&a, &team, a.sessions.list(&filter).await?, &q, 100).await
}

async fn get_session(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    a.sessions.ensure(&id).await?;
    c.require_session(&a, &id)?;
    ok(a.sessions.session(&id)?)
}

async fn update_session(
    State(a): S,
    Api(team): Api,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult<Response> {
    a.sessions.ensure(&id).await?;
    let b = body(&b)?;
    check_references(&a, &team, &b).await?;
    ok(a.update_session(&id, &b).await?)
}

async fn archive_session(State(a): S, _: Api, Path(id): Path<String>) -> ApiResult<Response> {
    a.sessions.ensure(&id).await?;
    ok(a.archive_session(&id).await?)
}

async fn delete_session(State(a): S, _: Api, Path(id): Path<String>) -> ApiResult<Response> {
    a.sessions.ensure(&id).await?;
    ok(a.delete_session(&id).await?)
}

async fn send_events(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult<Response> {
    a.sessions.ensure(&id).await?;
    c.require_session(&a, &id)?;
    let events = crate::events::validate_all(&body(&b)?["events"], "events", false)?;
    ok(json!({"data": a.append_user_events(&id, events).await?}))
}

async fn list_events(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    q: Query,
) -> ApiResult<Response> {
    a.sessions.ensure(&id).await?;
    c.require_session(&a, &id)?;
    let events = a
        .sessions
        .list_events(&id, &q.all("types"), q.one("order") == Some("desc"))?;
    page(events, &q, 1000)
}

/// Live events as SSE: `event: <type>` on every frame (the SDKs drop
/// frames without it), pings to keep proxies from closing the stream. A
/// reader that falls too far behind is disconnected; it reconnects and
/// reconciles from the list, as the SDKs do.
async fn stream_events(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    a.sessions.ensure(&id).await?;
    c.require_session(&a, &id)?;
    let rx = a.sessions.subscribe(&id)?;
    let stream = futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Ok(ev) => {
                let last = matches!(ev.known(), Some(KnownEvent::SessionDeleted(_)));
                let kind = match ev.type_name() {
                    "" => "message",
                    t => t,
                };
                let frame = Event::default()
                    .event(kind)
                    .data(serde_json::to_string(&*ev).unwrap_or_default());
                Some((
                    Ok::<_, std::convert::Infallible>(frame),
                    (!last).then_some(rx),
                ))
            }
            Err(_) => None,
        }
    });
    let ping = Event::default().event("ping").data(r#"{"type":"ping"}"#);
    Ok(Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .event(ping),
        )
        .into_response())
}

async fn create_store(State(a): S, Api(team): Api, b: Bytes) -> ApiResult<Response> {
    created(&a, &team, a.memory.create_store(&body(&b)?).await?).await
}

async fn list_stores(State(a): S, Api(team): Api, q: Query) -> ApiResult<Response> {
    let all = a.memory.stores(q.flag("include_archived"));
    team_page(&a, &team, all, &q, 100).await
}

async fn get_store(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    c.require_store(&a, &id, false)?;
    ok(a.memory.store(&id)?)
}

async fn update_store(
    State(a): S,
    _: Api,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult<Response> {
    ok(a.memory.update_store(&id, &body(&b)?).await?)
}

async fn delete_store(State(a): S, _: Api, Path(id): Path<String>) -> ApiResult<Response> {
    ok(a.memory.delete_store(&id).await?)
}

async fn archive_store(State(a): S, _: Api, Path(id): Path<String>) -> ApiResult<Response> {
    ok(a.memory.archive_store(&id).await?)
}

async fn list_resources(
    State(a): S,
    _: Api,
    Path(id): Path<String>,
    q: Query,
) -> ApiResult<Response> {
    page(a.resources(&id).await?, &q, 100)
}

async fn add_resource(
    State(a): S,
    Api(team): Api,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult<Response> {
    let b = body(&b)?;
    check_references(&a, &team, &b).await?;
    ok(a.add_resource(&id, &b).await?)
}

async fn get_resource(
    State(a): S,
    _: Api,
    Path((id, rid)): Path<(String, String)>,
) -> ApiResult<Response> {
    ok(a.resource(&id, &rid).await?)
}

async fn update_resource(
    State(a): S,
    _: Api,
    Path((id, rid)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult<Response> {
    ok(a.update_resource(&id, &rid, &body(&b)?).await?)
}

async fn delete_resource(
    State(a): S,
    _: Api,
    Path((id, rid)): Path<(String, String)>,
) -> ApiResult<Response> {
    ok(a.delete_resource(&id, &rid).await?)
}

async fn create_vault(State(a): S, Api(team): Api, b: Bytes) -> ApiResult<Response> {
    created(&a, &team, a.vaults.create_vault(&body(&b)?).await?).await
}

async fn list_vaults(State(a): S, Api(team): Api, q: Query) -> ApiResult<Response> {
    let all = a.vaults.vaults(q.flag("include_archived")).await?;
    team_page(&a, &team, all, &q, 100).await
}

async fn get_vault(State(a): S, _: Api, Path(id): Path<String>) -> ApiResult<Response> {
    ok(a.vaults.vault(&id).await?)
}

async fn update_vault(
    State(a): S,
    _: Api,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult<Response> {
    ok(a.vaults.update_vault(&id, &body(&b)?).await?)
}

async fn delete_vault(State(a): S, _: Api, Path(id): Path<String>) -> ApiResult<Response> {
    ok(a.vaults.delete_vault(&id).await?)
}

async fn archive_vault(State(a): S, _: Api, Path(id): Path<String>) -> ApiResult<Response> {
    ok(a.vaults.archive_vault(&id).await?)
}

async fn create_credential(
    State(a): S,
    _: Api,
    Path(vault): Path<String>,
    b: Bytes,
) -> ApiResult<Response> {
    ok(a.vaults.create_credential(&vault, &body(&b)?).await?)
}

async fn list_credentials(
    State(a): S,
    _: Api,
    Path(vault): Path<String>,
    q: Query,
) -> ApiResult<Response> {
    let all = a
        .vaults
        .credentials(&vault, q.flag("include_archived"))
        .await?;
    page(all, &q, 100)
}

async fn get_credential(
    State(a): S,
    _: Api,
    Path((vault, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    ok(a.vaults.credential(&vault, &id).await?)
}

async fn update_credential(
    State(a): S,
    _: Api,
    Path((vault, id)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult<Response> {
    ok(a.vaults.update_credential(&vault, &id, &body(&b)?).await?)
}

async fn delete_credential(
    State(a): S,
    _: Api,
    Path((vault, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    ok(a.vaults.delete_credential(&vault, &id).await?)
}

async fn archive_credential(
    State(a): S,
    _: Api,
    Path((vault, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    ok(a.vaults.archive_credential(&vault, &id).await?)
}

async fn validate_credential(
    State(a): S,
    _: Api,
    Path((vault, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    ok(a.vaults.validate_mcp_oauth(&a.mcp, &vault, &id).await?)
}

/// `view=full|basic`, with the endpoint's default.
fn full_view(q: &Query, default_full: bool) -> ApiResult<bool> {
    match q.one("view") {
        None => Ok(default_full),
        Some("full") => Ok(true),
        Some("basic") => Ok(false),
        Some(_) => Err(ApiError::invalid("view: basic or full")),
    }
}

async fn create_memory(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path(store): Path<String>,
    q: Query,
    b: Bytes,
) -> ApiResult<Response> {
    c.require_store(&a, &store, true)?;
    let full = full_view(&q, false)?;
    ok(crate::memory::view(
        a.memory.create_memory(&store, &body(&b)?).await?,
        full,
    ))
}

async fn list_memories(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path(store): Path<String>,
    q: Query,
) -> ApiResult<Response> {
    c.require_store(&a, &store, false)?;
    let depth = q
        .one("depth")
        .map(|d| {
            d.parse::<usize>()
                .map_err(|_| ApiError::invalid("depth: an integer"))
        })
        .transpose()?;
    let full = full_view(&q, false)?;
    let max = if full { 20 } else { 100 };
    page(
        a.memory
            .memories(&store, q.one("path_prefix").unwrap_or("/"), depth, full)?,
        &q,
        max,
    )
}

async fn get_memory(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path((store, id)): Path<(String, String)>,
    q: Query,
) -> ApiResult<Response> {
    c.require_store(&a, &store, false)?;
    let full = full_view(&q, true)?;
    ok(crate::memory::view(a.memory.memory(&store, &id)?, full))
}

async fn update_memory(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path((store, id)): Path<(String, String)>,
    q: Query,
    b: Bytes,
) -> ApiResult<Response> {
    c.require_store(&a, &store, true)?;
    let full = full_view(&q, false)?;
    ok(crate::memory::view(
        a.memory.update_memory(&store, &id, &body(&b)?).await?,
        full,
    ))
}

async fn delete_memory(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path((store, id)): Path<(String, String)>,
    q: Query,
) -> ApiResult<Response> {
    c.require_store(&a, &store, true)?;
    ok(a.memory
        .delete_memory(&store, &id, q.one("expected_content_sha256"))
        .await?)
}

/// A skill upload: `files[]` (or `files`) parts named by their paths, or
/// one archive; `display_name` optional.
async fn upload(mut form: Multipart) -> ApiResult<(Vec<crate::skills::File>, Option<String>)> {
    let bad =
        |e: axum::extract::multipart::MultipartError| ApiError::invalid(format!("files: {e}"));
    let (mut files, mut display_name) = (Vec::new(), None);
    while let Some(field) = form.next_field().await.map_err(bad)? {
        match field.name().unwrap_or_default() {
            "files[]" | "files" => {
                let path = field.file_name().unwrap_or_default().to_string();
                let data = field.bytes().await.map_err(bad)?.to_vec();
                files.push(crate::skills::File {
                    path,
                    data,
                    executable: false,
                });
            }
            "display_name" => display_name = Some(field.text().await.map_err(bad)?),
            other => {
                return Err(ApiError::invalid(format!(
                    "{other}: not a field of a skill upload"
                )));
            }
        }
    }
    if let [one] = files.as_slice()
        && crate::skills::is_archive(&one.data)
    {
        files = crate::skills::expand(&one.data)?;
    }
    Ok((files, display_name))
}

async fn upload_file(State(a): S, Api(team): Api, mut form: Multipart) -> ApiResult<Response> {
    let bad = |e: axum::extract::multipart::MultipartError| ApiError::invalid(format!("file: {e}"));
    let (mut file, mut expires) = (None, None);
    while let Some(field) = form.next_field().await.map_err(bad)? {
        match field.name().unwrap_or_default() {
            "file" => {
                let filename = field.file_name().unwrap_or_default().to_string();
                let mime_type = field.content_type().map(str::to_string);
                let bytes = field.bytes().await.map_err(bad)?.to_vec();
                file = Some((filename, mime_type, bytes));
            }
            "expires_in_seconds" => {
                let text = field.text().await.map_err(bad)?;
                expires = Some(text.trim().parse::<u64>().map_err(|_| {
                    ApiError::invalid("expires_in_seconds: a whole number of seconds")
                })?);
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "{other}: not a field of a file upload"
                )));
            }
        }
    }
    let (filename, mime_type, bytes) =
        file.ok_or_else(|| ApiError::invalid("file: required (a multipart file field)"))?;
    let file = a
        .files
        .upload(crate::files::Upload {
            filename,
            mime_type,
            bytes,
            expires_in_seconds: expires,
        })
        .await?;
    created(&a, &team, file).await
}

async fn list_files(State(a): S, Api(team): Api, q: Query) -> ApiResult<Response> {
    let ids = q.all("ids");
    if ids.len() > 100 {
        return Err(ApiError::invalid("ids: at most 100"));
    }
    if !ids.is_empty() && q.one("page").is_some() {
        return Err(ApiError::invalid("ids: cannot be combined with page"));
    }
    if q.one("scope_id").is_some() {
        // Session-scoped files (a hosted session's outputs) are never
        // made here: outputs stay in the session's sandbox.
        return page(Vec::<Value>::new(), &q, 1000);
    }
    team_page(&a, &team, a.files.list(&ids).await?, &q, 1000).await
}

async fn get_file(State(a): S, _: Api, Path(id): Path<String>) -> ApiResult<Response> {
    ok(a.files.metadata(&id).await?)
}

async fn delete_file(State(a): S, _: Api, Path(id): Path<String>) -> ApiResult<Response> {
    ok(a.files.delete(&id).await?)
}

async fn file_content(State(a): S, _: Api, Path(id): Path<String>) -> ApiResult<Response> {
    let (meta, bytes) = a.files.content(&id).await?;
    let disposition = format!(
        "attachment; filename=\"{}\"",
        meta.filename.replace(['"', '\\', '\r', '\n'], "_")
    );
    let headers = [
        ("content-type", meta.mime_type),
        ("content-disposition", disposition),
    ];
    Ok((headers, bytes).into_response())
}

async fn create_skill(State(a): S, Api(team): Api, form: Multipart) -> ApiResult<Response> {
    let (files, display_name) = upload(form).await?;
    created(&a, &team, a.skills.create_skill(files, display_name).await?).await
}

async fn list_skills(State(a): S, Api(team): Api, q: Query) -> ApiResult<Response> {
    team_page(&a, &team, a.skills.skills(), &q, 100).await
}

async fn get_skill(State(a): S, _: Api, Path(id): Path<String>) -> ApiResult<Response> {
    ok(a.skills.skill(&id)?)
}

async fn delete_skill(State(a): S, _: Api, Path(id): Path<String>) -> ApiResult<Response> {
    ok(a.skills.delete_skill(&id).await?)
}

async fn delete_skill_version(
    State(a): S,
    _: Api,
    Path((id, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    ok(a.skills.delete_skill_version(&id, &version).await?)
}

async fn create_skill_version(
    State(a): S,
    _: Api,
    Path(id): Path<String>,
    form: Multipart,
) -> ApiResult<Response> {
    let (files, _) = upload(form).await?;
    ok(a.skills.create_skill_version(&id, files).await?)
}

async fn list_skill_versions(
    State(a): S,
    _: Api,
    Path(id): Path<String>,
    q: Query,
) -> ApiResult<Response> {
    page(a.skills.skill_versions(&id)?, &q, 100)
}

/// Workers read the versions and archives of their sessions' skills.
async fn get_skill_version(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path((id, v)): Path<(String, String)>,
) -> ApiResult<Response> {
    c.require_skill(&a, &id)?;
    ok(a.skills.skill_version(&id, &v)?.doc)
}

async fn skill_content(
    State(a): S,
    Extension(c): Extension<Caller>,
    Path((id, v)): Path<(String, String)>,
) -> ApiResult<Response> {
    c.require_skill(&a, &id)?;
    let tar = a.skills.skill_version(&id, &v)?.archive;
    Ok(([("content-type", "application/x-tar")], tar).into_response())
}

pub fn router(agents: Arc<Agents>) -> Router {
    let env = "/environments/{env}";
    let work = "/environments/{env}/work/{work}";
    Router::new()
        .route("/agents", post(create_agent).get(list_agents))
        .route("/agents/{id}", get(get_agent).post(update_agent))
        .route("/agents/{id}/archive", post(archive_agent))
        .route("/agents/{id}/versions", get(agent_versions))
        .route(
            "/environments",
            post(create_environment).get(list_environments),
        )
        .route(
            env,
            get(get_environment)
                .post(update_environment)
                .delete(delete_environment),
        )
        .route(&format!("{env}/archive"), post(archive_environment))
        .route(&format!("{env}/keys"), post(create_key).get(list_keys))
        .route(&format!("{env}/keys/{{key}}/revoke"), post(revoke_key))
        .route(&format!("{env}/work"), get(work_list))
        .route(&format!("{env}/work/poll"), get(poll))
        .route(&format!("{env}/work/stats"), get(work_stats))
        .route(work, get(work_get).post(work_update))
        .route(&format!("{work}/ack"), post(ack))
        .route(&format!("{work}/heartbeat"), post(heartbeat))
        .route(&format!("{work}/stop"), post(stop))
        .route("/sessions", post(create_session).get(list_sessions))
        .route(
            "/sessions/{id}",
            get(get_session).post(update_session).delete(delete_session),
        )
        .route("/sessions/{id}/archive", post(archive_session))
        .route(
            "/sessions/{id}/resources",
            get(list_resources).post(add_resource),
        )
        .route(
            "/sessions/{id}/resources/{rid}",
            get(get_resource)
                .post(update_resource)
                .delete(delete_resource),
        )
        .route("/sessions/{id}/events", post(send_events).get(list_events))
        .route("/sessions/{id}/events/stream", get(stream_events))
        .route("/skills", post(create_skill).get(list_skills))
        .route("/skills/{id}", get(get_skill).delete(delete_skill))
        .route(
            "/skills/{id}/versions",
            post(create_skill_version).get(list_skill_versions),
        )
        .route(
            "/skills/{id}/versions/{version}",
            get(get_skill_version).delete(delete_skill_version),
        )
        .route(
            "/skills/{id}/versions/{version}/content",
            get(skill_content),
        )
        .layer(axum::extract::DefaultBodyLimit::max(32 << 20))
        .route("/memory_stores", post(create_store).get(list_stores))
        .route(
            "/memory_stores/{id}",
            get(get_store).post(update_store).delete(delete_store),
        )
        .route("/memory_stores/{id}/archive", post(archive_store))
        .route(
            "/memory_stores/{id}/memories",
            post(create_memory).get(list_memories),
        )
        .route(
            "/memory_stores/{id}/memories/{mid}",
            get(get_memory).post(update_memory).delete(delete_memory),
        )
        .route("/files", post(upload_file).get(list_files))
        .route("/files/{id}", get(get_file).delete(delete_file))
        .route("/files/{id}/content", get(file_content))
        .route("/vaults", post(create_vault).get(list_vaults))
        .route(
            "/vaults/{id}",
            get(get_vault).post(update_vault).delete(delete_vault),
        )
        .route("/vaults/{id}/archive", post(archive_vault))
        .route(
            "/vaults/{id}/credentials",
            post(create_credential).get(list_credentials),
        )
        .route(
            "/vaults/{id}/credentials/{cid}",
            get(get_credential)
                .post(update_credential)
                .delete(delete_credential),
        )
        .route(
            "/vaults/{id}/credentials/{cid}/archive",
            post(archive_credential),
        )
        .route(
            "/vaults/{id}/credentials/{cid}/mcp_oauth_validate",
            post(validate_credential),
        )
        .fallback(|| async { ApiError::not_found("route", "").into_response() })
        .layer(axum::middleware::from_fn_with_state(
            agents.clone(),
            crate::auth::middleware,
        ))
        .with_state(agents)
}

/// The one place errors become HTTP: a status and Anthropic's error shape,
/// `{"type":"error","error":{"type","message","details"?},"request_id"}`,
/// with the id also in a `request-id` header.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = match &self {
            ApiError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "authentication_error"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "permission_error"),
            ApiError::NotFound { .. } | ApiError::EnvironmentNotFound(_) => {
                (StatusCode::NOT_FOUND, "not_found_error")
            }
            ApiError::Conflict(_) | ApiError::AlreadyStopped(_) => {
                (StatusCode::CONFLICT, "conflict_error")
            }
            ApiError::HeartbeatPrecondition { .. } => {
                (StatusCode::PRECONDITION_FAILED, "invalid_request_error")
            }
            ApiError::MemoryPathConflict(_) => (StatusCode::CONFLICT, "memory_path_conflict_error"),
            ApiError::MemoryPreconditionFailed(_) => {
                (StatusCode::CONFLICT, "memory_precondition_failed_error")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "api_error"),
        };
        let details = match &self {
            ApiError::EnvironmentNotFound(_) => {
                Some(json!({"error_code": "environment_not_found"}))
            }
            ApiError::HeartbeatPrecondition { current, .. } => Some(json!({
                "error_code": "heartbeat_precondition_failed",
                "current_state": current,
            })),
            _ => None,
        };
        // A retry cannot fix these conflicts: `x-should-retry: false`.
        let no_retry = matches!(self, ApiError::AlreadyStopped(_));
        let message = self.to_string();
        if status.is_server_error() {
            tracing::error!(status = %status, message = %message, "managed agents error");
        }
        let request_id = crate::ids::new_id("req");
        let mut error = json!({"type": kind, "message": message});
        if let Some(d) = details {
            error["details"] = d;
        }
        let body = json!({"type": "error", "error": error, "request_id": request_id});
        let mut r = (status, Json(body)).into_response();
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            r.headers_mut().insert("request-id", v);
        }
        if no_retry {
            r.headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        r
    }
}
