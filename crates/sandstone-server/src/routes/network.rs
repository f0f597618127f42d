//! A sandbox's network policy (`GET/PUT .../network`) and its egress audit
//! records (`GET .../observability/events`).

use crate::AppState;
use crate::error::{ApiError, ApiResult, ok};
use crate::extract::JsonBody;
use crate::routes::sandboxes::row;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandstone_egress::hint::{Denied, allow_hint};
use serde_json::json;
use std::collections::HashMap;

pub async fn get(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let r = row(&st, &id).await?;
    Ok(ok(StatusCode::OK, st.lifecycle.effective_policy(&r)?))
}

pub async fn put(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(policy): JsonBody<serde_json::Value>,
) -> ApiResult<Response> {
    let r = st.lifecycle.set_network(&id, policy).await?;
    Ok(ok(StatusCode::OK, st.lifecycle.effective_policy(&r)?))
}

/// The fields of a stored audit record a hint needs.
#[derive(serde::Deserialize)]
struct Recorded {
    kind: String,
    protocol: String,
    decision: String,
    dest_name: Option<String>,
    dest_ip: Option<String>,
    dest_port: u16,
}

fn number(q: &HashMap<String, String>, key: &str, default: i64, max: i64) -> ApiResult<i64> {
    match q.get(key) {
        None => Ok(default),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (0..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("invalid query parameter `{key}`: 0 to {max}"))
            }),
    }
}

/// `?after=<seq>&limit=<n>&denied=true`: records oldest first, each with
/// its `seq` for the next page (or `--follow`).
pub async fn events(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let r = row(&st, &id).await?;
    let after = number(&q, "after", 0, i64::MAX)?;
    let limit = number(&q, "limit", 100, 1000)?;
    let denied = q.get("denied").is_some_and(|v| v == "true" || v == "1");
    let rows = st
        .lifecycle
        .store
        .list_audit(&id, after, denied, limit)
        .await?;
    let policy = st
        .lifecycle
        .effective_policy(&r)
        .ok()
        .and_then(|p| p.compile().ok());
    let hint = |e: &serde_json::Value| {
        let (policy, op) = (policy.as_ref()?, st.lifecycle.operator_rules()?);
        let rec = serde_json::from_value::<Recorded>(e.clone()).ok()?;
        if rec.decision != "deny" {
            return None;
        }
        let denied = Denied {
            name: rec.dest_name.as_deref(),
            ip: rec.dest_ip.as_deref().and_then(|ip| ip.parse().ok()),
            port: rec.dest_port,
            dns: rec.kind == "dns",
            stated: matches!(rec.protocol.as_str(), "http" | "tls"),
        };
        allow_hint(&id, policy, op, &denied)
    };
    let events: Vec<_> = rows
        .into_iter()
        .map(|(seq, mut e)| {
            if let Some(h) = hint(&e) {
                e["allow_hint"] = json!(h);
            }
            e["seq"] = json!(seq);
            e
        })
        .collect();
    Ok(ok(
        StatusCode::OK,
        json!({"events": events, "count": events.len()}),
    ))
}
