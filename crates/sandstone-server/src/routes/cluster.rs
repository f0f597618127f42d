//! `/api/v1/nodes`, and the layer that sends each call to the node that
//! serves it: a sandbox's calls to its owner, a create to the node placement
//! picks ([`crate::cluster`] decides; this file only speaks HTTP).

use crate::cluster::Route;
use crate::error::{ApiError, ApiResult, ok};
use crate::forward::FORWARDED_BY;
use crate::lifecycle::{Intent, Takeover};
use crate::{AppState, Caller};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sandstone_api::timefmt::now_ms;
use sandstone_db::NodeRecord;
use serde::Serialize;

/// A node as the API shows it.
#[derive(Serialize)]
struct NodeView {
    id: String,
    url: String,
    capacity: i64,
    running: i64,
    templates: Vec<String>,
    draining: bool,
    /// Whether its lease holds now.
    live: bool,
    lease_expires_at: String,
    started_at: String,
    /// Whether it is the node that answered.
    this_node: bool,
}

fn view(n: NodeRecord, me: &str) -> NodeView {
    NodeView {
        live: n.live_at(now_ms()),
        this_node: n.id == me,
        lease_expires_at: sandstone_api::timefmt::rfc3339_ms(n.lease_expires_at),
        started_at: sandstone_api::timefmt::rfc3339_ms(n.started_at),
        id: n.id,
        url: n.url,
        capacity: n.capacity,
        running: n.running,
        templates: n.templates,
        draining: n.draining,
    }
}

pub async fn list(
    State(st): State<AppState>,
    axum::Extension(by): axum::Extension<Caller>,
) -> ApiResult<Response> {
    let me = st.cluster.me.id.clone();
    // A node's templates, less those other teams made.
    let teams = st.lifecycle.store.template_teams().await?;
    let visible = |t: &String| {
        let base = sandstone_volumes::template_base(t);
        teams.get(base).is_none_or(|owner| *owner == by.team)
    };
    let nodes: Vec<NodeView> = st
        .cluster
        .nodes()
        .await?
        .into_iter()
        .map(|mut n| {
            n.templates.retain(visible);
            view(n, &me)
        })
        .collect();
    Ok(ok(StatusCode::OK, serde_json::json!({ "nodes": nodes })))
}

pub async fn drain(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    set_draining(st, id, true).await
}

pub async fn undrain(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    set_draining(st, id, false).await
}

async fn set_draining(st: AppState, id: String, draining: bool) -> ApiResult<Response> {
    match st.cluster.set_draining(&id, draining).await {
        Err(sandstone_db::Error::NotFound) => return Err(ApiError::not_found("node", &id)),
        other => other?,
    }
    tracing::info!(node = %id, draining, "node drain changed");
    let me = st.cluster.me.id.clone();
    let node = st
        .cluster
        .nodes()
        .await?
        .into_iter()
        .find(|n| n.id == id)
        .ok_or_else(|| ApiError::not_found("node", &id))?;
    Ok(ok(StatusCode::OK, view(node, &me)))
}

/// The calls this layer routes: a sandbox's own (`/api/v1/sandboxes/{id}…`),
/// a snapshot's (its volume is on its sandbox's node) and a create
/// (`POST /api/v1/sandboxes`). The first two are also where a caller of
/// another team is turned away.
enum Target {
    Sandbox(String),
    Snapshot(String),
    /// A sandbox volume's (its files are on one node's pool).
    Volume(String),
    Create,
    Here,
}

/// A path segment as the handlers see it: axum percent-decodes path
/// parameters, so the team check must look at the same id (`%73b-…` is
/// `sb-…`). A segment that is not UTF-8 once decoded names nothing.
fn decoded(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .unwrap_or_default()
}

fn target(req: &Request) -> Target {
    let path = req.uri().path();
    if (req.method() == Method::DELETE || req.method() == Method::GET)
        && let Some(snap) = path.strip_prefix("/api/v1/sandbox-rootfs-snapshots/")
        && !snap.is_empty()
        && !snap.contains('/')
    {
        return Target::Snapshot(decoded(snap));
    }
    if let Some(rest) = path.strip_prefix("/api/v1/sandboxvolumes/")
        && let Some(id) = rest.split('/').next()
        && !id.is_empty()
    {
        return Target::Volume(decoded(id));
    }
    match path.strip_prefix("/api/v1/sandboxes") {
        Some("" | "/") if req.method() == Method::POST => Target::Create,
        Some(rest) => match rest.strip_prefix('/').and_then(|r| r.split('/').next()) {
            Some(id) if !id.is_empty() => Target::Sandbox(decoded(id)),
            _ => Target::Here,
        },
        None => Target::Here,
    }
}

/// Sends a call to the node that serves it, or lets it through here.
pub async fn to_owner(State(st): State<AppState>, req: Request, next: Next) -> Response {
    // Only another node's word counts: a caller's own header changes nothing.
    let forwarded =
        req.headers().contains_key(FORWARDED_BY) && st.cluster.forwarder.is_node(req.headers());
    let target = target(&req);
    if !matches!(target, Target::Here)
        && let Some(lapsed) = st.lifecycle.lease.lapsed_for()
    {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "lease_lapsed",
            format!(
                "node {} could not renew its lease ({} ms past its hold): it serves no sandbox until it has, and has checked which are still its own; try another node",
                st.cluster.me.id,
                lapsed.as_millis()
            ),
        )
        .into_response();
    }
    let id = match target {
        Target::Here => return next.run(req).await,
        Target::Create if forwarded => return next.run(req).await,
        Target::Create => return place(st, req, next).await,
        Target::Sandbox(id) => match st.lifecycle.team_of(&id).await {
            Ok(Some(team)) if !same_team(&req, &team) => {
                return other_team(&req, "sandbox", &id);
            }
            Ok(_) => id,
            Err(e) => return ApiError::from(e).into_response(),
        },
        Target::Volume(id) => return to_volume_node(&st, &id, forwarded, req, next).await,
        Target::Snapshot(snap) => match st.lifecycle.store.get_snapshot(&snap).await {
            Ok(s) if !same_team(&req, &s.team_id) => return other_team(&req, "snapshot", &snap),
            Ok(s) => s.sandbox_id,
            // No such snapshot: the route says so.
            Err(_) => return next.run(req).await,
        },
    };
    to_sandbox_owner(&st, &id, forwarded, req, next).await
}

/// Sends a call on volume `id` to the node whose pool holds it. Another
/// team's volume, or a missing one, is the route's to answer (404).
async fn to_volume_node(
    st: &AppState,
    id: &str,
    forwarded: bool,
    req: Request,
    next: Next,
) -> Response {
    let node = match st.lifecycle.volumes.get_volume(id).await {
        Ok(Some(v)) if same_team(&req, &v.team_id) => v.node_id,
        Ok(_) => return next.run(req).await,
        Err(e) => return ApiError::from(e).into_response(),
    };
    to_volumes_node(st, node, &[id.to_string()], forwarded, req, next).await
}

/// Forwards to node `node`, which holds volumes `ids`, while it lives;
/// once its lease has run out, takes over those of them it still holds
/// (each with a checkpoint) and serves here. A forwarded call is served
/// here (or refused by the route).
async fn to_volumes_node(
    st: &AppState,
    node: String,
    ids: &[String],
    forwarded: bool,
    req: Request,
    next: Next,
) -> Response {
    if forwarded {
        return next.run(req).await;
    }
    match st.cluster.route_to(node).await {
        Ok(Route::Remote { node, url }) => st.cluster.forwarder.forward(&node, &url, req).await,
        Ok(Route::OwnerDown { node }) => {
            for id in ids {
                if let Err(e) = st.lifecycle.take_over_volume(id, &node).await {
                    return ApiError::from(e).into_response();
                }
            }
            next.run(req).await
        }
        Ok(Route::Local) => next.run(req).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Whether the call acts for `team` (the auth layer gave it a caller).
fn same_team(req: &Request, team: &str) -> bool {
    req.extensions()
        .get::<Caller>()
        .is_some_and(|c| c.team == team)
}

/// Another team's object: answered exactly as one that does not exist, so
/// a caller learns nothing of it, and audited.
fn other_team(req: &Request, what: &str, id: &str) -> Response {
    let caller = req.extensions().get::<Caller>();
    tracing::warn!(target: "sandstone::audit",
        team = caller.map_or("", |c| c.team.as_str()),
        key = caller.and_then(|c| c.key.as_ref()).map_or("", |k| k.id.as_str()),
        method = %req.method(), path = req.uri().path(), object = id,
        "refused: {what} of another team");
    ApiError::not_found(what, id).into_response()
}

async fn to_sandbox_owner(
    st: &AppState,
    id: &str,
    forwarded: bool,
    req: Request,
    next: Next,
) -> Response {
    match st.cluster.route(&st.lifecycle, id).await {
        Ok(Route::Local) => next.run(req).await,
        // A forwarded call is served here or refused, never sent on: the
        // two nodes disagree about the owner, and asking again is the
        // caller's decision.
        Ok(Route::Remote { node, .. }) if forwarded => not_owner(id, &node),
        Ok(Route::Remote { node, url }) => st.cluster.forwarder.forward(&node, &url, req).await,
        // A paused or lost sandbox of a node that is gone moves here (its
        // files come from its last checkpoint), and anything to be deleted;
        // the rest waits for its node.
        Ok(Route::OwnerDown { node }) => {
            match st.lifecycle.take_over(id, &node, intent(&req)).await {
                Ok(Takeover::Taken | Takeover::Lost) => next.run(req).await,
                Ok(Takeover::No) => ApiError::unavailable(format!(
                    "sandbox {id} belongs to node {node}, whose lease has expired; \
                 it is unavailable until that node returns (a paused or lost \
                 sandbox with a checkpoint moves to another node; a running one \
                 is marked lost first)"
                ))
                .into_response(),
                Err(e) => ApiError::from(e).into_response(),
            }
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Whether the call resumes (or deletes) its sandbox: what moves a lost
/// sandbox to the node it reaches.
fn intent(req: &Request) -> Intent {
    let path = req.uri().path();
    if req.method() == Method::POST && path.ends_with("/resume") {
        Intent::Resume
    } else if req.method() == Method::DELETE && path.matches('/').count() == 4 {
        Intent::Delete
    } else {
        Intent::Serve
    }
}

fn not_owner(id: &str, owner: &str) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_owner",
        format!("sandbox {id} is served by node {owner}, not this one"),
    )
    .into_response()
}

/// Reads the claim's template (the body is small JSON, under the same limit
/// the create route applies) and hands the create to the node placement
/// picks. A cluster of one never reads the body here.
async fn place(st: AppState, req: Request, next: Next) -> Response {
    if !st.cluster.has_peers() {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, crate::MAX_JSON_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body rejected: {e}"),
            )
            .into_response();
        }
    };
    // A body that does not parse is the create route's to reject, here.
    let claim = serde_json::from_slice::<sandstone_api::ClaimRequest>(&bytes).ok();
    let req = Request::from_parts(parts, Body::from(bytes));
    // With volumes: where they are (the first one's node; the others must
    // be there too, which that node checks).
    if let Some(c) = &claim
        && let Some(first) = c.mounts.first()
        && let Ok(Some(v)) = st
            .lifecycle
            .volumes
            .get_volume(&first.sandboxvolume_id)
            .await
        && same_team(&req, &v.team_id)
    {
        let ids: Vec<String> = c
            .mounts
            .iter()
            .map(|m| m.sandboxvolume_id.clone())
            .collect();
        return to_volumes_node(&st, v.node_id, &ids, false, req, next).await;
    }
    // From a snapshot: where the snapshot's volume is (its sandbox's
    // node). With an object store any node can fetch it, so a dead or
    // unknown owner is no reason to wait: placement picks a node with the
    // snapshot's template, as for any create.
    let mut snapshot_template = None;
    if let Some(snap) = claim.as_ref().and_then(|c| c.snapshot_id.as_deref())
        && let Ok(s) = st.lifecycle.store.get_snapshot(snap).await
    {
        if !st.lifecycle.has_object_store() {
            return to_sandbox_owner(&st, &s.sandbox_id, false, req, next).await;
        }
        match st.cluster.route(&st.lifecycle, &s.sandbox_id).await {
            Ok(Route::Local) => return next.run(req).await,
            Ok(Route::Remote { node, url }) => {
                return st.cluster.forwarder.forward(&node, &url, req).await;
            }
            Ok(Route::OwnerDown { .. }) | Err(_) => {}
        }
        snapshot_template = Some(s.template);
    }
    let template = claim
        .and_then(|c| c.template)
        .filter(|t| !t.is_empty() && t != "default")
        .or(snapshot_template);
    match st.cluster.place(&st.lifecycle, template.as_deref()) {
        Some(node) => st.cluster.forwarder.forward(&node.id, &node.url, req).await,
        None => next.run(req).await,
    }
}
