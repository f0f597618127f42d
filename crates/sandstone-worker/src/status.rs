//! The worker's own small HTTP endpoint: `/metrics` (Prometheus) and
//! `/status` (what `sandstone worker status` prints).

use crate::metrics::Metrics;
use axum::Router;
use axum::routing::get;
use std::sync::Arc;

pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let m1 = metrics.clone();
    let app = Router::new()
        .route("/metrics", get(move || async move { m1.prometheus() }))
        .route(
            "/status",
            get(move || async move { axum::Json(metrics.status()) }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "status endpoint stopped");
    }
}
