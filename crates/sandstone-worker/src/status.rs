//! The worker's own small HTTP endpoint: `/metrics` (Prometheus, counts
//! only) and `/status` (what `sandstone worker status` prints). `/status`
//! names sessions and sandboxes, so it asks for the Sandstone API key the
//! worker itself uses: another local user learns nothing from it.

use crate::metrics::Metrics;
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sandstone_api::Secret;
use std::sync::Arc;

pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, key: Secret) {
    let m1 = metrics.clone();
    let key = Arc::new(key);
    let app = Router::new()
        .route("/metrics", get(move || async move { m1.prometheus() }))
        .route(
            "/status",
            get(move |headers: HeaderMap| async move { status(&metrics, &key, &headers) }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "status endpoint stopped");
    }
}

fn status(metrics: &Metrics, key: &Secret, headers: &HeaderMap) -> Response {
    let sent = sandstone_api::auth::api_key(|name| headers.get(name).and_then(|v| v.to_str().ok()));
    // Compared without an early exit, so timing says nothing of the key.
    let matches = sent.is_some_and(|s| {
        s.len() == key.expose().len()
            && s.bytes()
                .zip(key.expose().bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if !matches {
        return (
            StatusCode::UNAUTHORIZED,
            "the worker's Sandstone API key is required\n",
        )
            .into_response();
    }
    axum::Json(metrics.status()).into_response()
}
