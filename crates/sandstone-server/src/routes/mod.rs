pub mod cluster;
pub mod contexts;
pub mod credentials;
pub mod error;
pub mod files;
pub mod keys;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod observability;
pub mod previews;
pub mod registry;
pub mod sandboxes;
pub mod sessions;
pub mod snapshots;
pub mod ssh_keys;
pub mod templates;
pub mod tools;
pub mod uploads;
pub mod volumes;
pub mod webhooks;

/// Accepts a WebSocket for `by`: `pump` serves it until it ends, or until
/// the key that opened it stops letting requests in (a check at the
/// upgrade is not enough for a connection that lasts).
pub(crate) fn accept_ws<F, Fut>(
    st: &crate::AppState,
    by: &crate::Caller,
    upgrade: axum::extract::ws::WebSocketUpgrade,
    pump: F,
) -> axum::response::Response
where
    F: FnOnce(axum::extract::ws::WebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let revoked = st.keys.clone().revoked(by.key.clone());
    upgrade
        .protocols([sandstone_api::auth::WS_PROTOCOL])
        // What a client sends is a request or input: held to a JSON body's
        // bound, not axum's 64 MiB.
        .max_message_size(crate::MAX_JSON_BODY)
        .on_upgrade(move |socket| async move {
            tokio::select! {
                _ = pump(socket) => {}
                _ = revoked => {}
            }
        })
}
