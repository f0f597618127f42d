//! A sandbox's webhook deliveries (a Sandstone extension: Sandbox0 keeps
//! its delivery state to itself).

use crate::AppState;
use crate::error::{ApiError, ApiResult, ok};
use crate::routes::sandboxes::row;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandstone_api::timefmt::rfc3339_ms;
use sandstone_api::webhooks::{WebhookDeliveries, WebhookDelivery};
use sandstone_db::webhooks::{DeliveryRow, DeliveryState};

/// The most one answer lists.
const MAX_LIMIT: i64 = 1000;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Newest first, this many (default 100, at most 1000).
    limit: Option<i64>,
}

fn to_api(d: DeliveryRow) -> WebhookDelivery {
    WebhookDelivery {
        event_id: d.event_id,
        event_type: d.event_type,
        state: d.state.as_str().into(),
        attempts: d.attempts,
        last_status: d.last_status,
        last_error: d.last_error,
        created_at: rfc3339_ms(d.created_at),
        next_attempt_at: (d.state == DeliveryState::Pending).then(|| rfc3339_ms(d.next_attempt_at)),
        delivered_at: d.delivered_at.map(rfc3339_ms),
    }
}

pub async fn deliveries(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> ApiResult<Response> {
    let limit = page.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "invalid field `limit`: 1 to {MAX_LIMIT}"
        )));
    }
    row(&st, &id).await?;
    let rows = st.lifecycle.webhooks.deliveries(&id, limit).await?;
    Ok(ok(
        StatusCode::OK,
        WebhookDeliveries {
            deliveries: rows.into_iter().map(to_api).collect(),
        },
    ))
}
