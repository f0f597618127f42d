//! Forwarding a call to the node that owns its sandbox: a small reverse
//! proxy over a pooled HTTP/1 client.
//!
//! Bodies stream both ways (an upload of GiBs, an exec's event stream, a
//! download), and an HTTP upgrade (a WebSocket PTY) is passed through as
//! bytes once both sides have switched protocols. The caller's API key
//! never leaves this node: it was checked here, and the owner is told so by
//! the node token (a key every node derives from the shared sealing key)
//! and which node forwarded. A forwarded call is never forwarded again, so
//! nodes that disagree about an owner cannot bounce a call between them.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::routes::error::ApiError;

/// The token that authenticates one node to another.
pub const NODE_TOKEN: HeaderName = HeaderName::from_static("x-sandstone-node-token");
/// The node that forwarded a call (the receiver serves it or refuses it).
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("x-sandstone-forwarded-by");

/// What `Sealer::derive` is asked for: the node-to-node key.
pub const NODE_KEY_CONTEXT: &str = "sandstone node-to-node auth v1";

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
const HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub struct Forwarder {
    client: Client<HttpConnector, Body>,
    /// This node's id, sent as [`FORWARDED_BY`].
    node: HeaderValue,
    /// Hex of the node key, sent as [`NODE_TOKEN`]; marked sensitive so no
    /// header dump shows it.
    token: HeaderValue,
}

impl Forwarder {
    pub fn new(node: &str, key: &[u8; 32]) -> Forwarder {
        let mut connector = HttpConnector::new();
        // Small frames of event streams must not wait for a delayed ACK.
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .build(connector);
        let mut token = HeaderValue::from_str(&hex::encode(key)).expect("hex is a valid header");
        token.set_sensitive(true);
        Forwarder {
            client,
            node: HeaderValue::from_str(node).unwrap_or(HeaderValue::from_static("unnamed")),
            token,
        }
    }

    /// Whether `headers` carry this installation's node token.
    pub fn is_node(&self, headers: &HeaderMap) -> bool {
        headers
            .get(NODE_TOKEN)
            .is_some_and(|t| constant_time_eq(t.as_bytes(), self.token.as_bytes()))
    }

    /// Sends `req` to the node at `base` (its advertised URL) and streams
    /// its answer back.
    pub async fn forward(&self, owner: &str, base: &str, req: Request) -> Response {
        self.send(owner, base, req, false).await
    }

    /// [`Forwarder::forward`] keeping the `Host` the caller asked for: a
    /// preview's or service's name, which the owner routes by.
    pub async fn forward_by_host(&self, owner: &str, base: &str, req: Request) -> Response {
        self.send(owner, base, req, true).await
    }

    async fn send(&self, owner: &str, base: &str, req: Request, keep_host: bool) -> Response {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = match format!("{}{path}", base.trim_end_matches('/')).parse() {
            Ok(u) => u,
            Err(e) => return unreachable_owner(owner, base, &e),
        };
        let sent = relay(&self.client, uri, req, |h| {
            // An API call's key was checked here and stays here (its team
            // was set by this node's auth layer and goes along); a
            // preview's or service's request was not authenticated here:
            // its credential is its route's, which the owner checks.
            if keep_host {
                strip_internal(h);
            } else {
                strip_credentials(h);
                h.remove(NODE_TOKEN);
                h.remove(FORWARDED_BY);
                h.remove(header::HOST);
            }
            h.insert(NODE_TOKEN, self.token.clone());
            h.insert(FORWARDED_BY, self.node.clone());
        });
        match sent.await {
            Ok(r) => r,
            Err(e) => unreachable_owner(owner, base, &e),
        }
    }
}

/// Sends `req` to `uri` through `client` and streams the answer back: hop
/// headers stay on this hop, `adjust` sets what the next one sees, and an
/// HTTP upgrade (a WebSocket) becomes a byte tunnel once both sides have
/// switched protocols. The reverse proxy of both node forwarding and
/// sandbox previews.
pub(crate) async fn relay<C>(
    client: &Client<C, Body>,
    uri: Uri,
    mut req: Request,
    adjust: impl FnOnce(&mut HeaderMap),
) -> Result<Response, hyper_util::client::legacy::Error>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let upgrade = wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    // A tunnel an API key opened ends with the key, as the owner's own
    // WebSockets do (the owner sees the call as this node's).
    let key = req.extensions().get::<crate::keys::KeyLife>().cloned();
    let (mut parts, body) = req.into_parts();
    let protocol = parts.headers.get(header::UPGRADE).cloned();
    strip_hop(&mut parts.headers);
    adjust(&mut parts.headers);
    if let Some(p) = protocol.filter(|_| upgrade.is_some()) {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, p);
    }
    parts.uri = uri;
    let mut resp = client.request(Request::from_parts(parts, body)).await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_side) = upgrade
    {
        let far_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(client_io), Ok(far_io)) = (client_side.await, far_side.await) else {
                return;
            };
            let mut a = TokioIo::new(client_io);
            let mut b = TokioIo::new(far_io);
            // Either side closing ends the tunnel; nothing to report.
            let ended = async {
                match key {
                    Some(key) => key.ended().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                _ = ended => {}
            }
        });
        let (mut parts, _) = resp.into_parts();
        let protocol = parts.headers.get(header::UPGRADE).cloned();
        strip_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(p) = protocol {
            parts.headers.insert(header::UPGRADE, p);
        }
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(body)))
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers and those `Connection` names.
fn strip_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

/// Takes `name` out of the `Connection` header's list, so that a hop
/// cannot be told to drop a header this node sets.
pub(crate) fn unname_in_connection(headers: &mut HeaderMap, name: &str) {
    let values: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    if !values
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(name))
    {
        return;
    }
    headers.remove(header::CONNECTION);
    let kept: Vec<&str> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(name))
        .collect();
    if let Ok(v) = HeaderValue::from_str(&kept.join(", "))
        && !kept.is_empty()
    {
        headers.insert(header::CONNECTION, v);
    }
}

/// Removes the caller's API key, which stays on the node that checked it.
fn strip_credentials(headers: &mut HeaderMap) {
    headers.remove(header::AUTHORIZATION);
    headers.remove("x-api-key");
}

/// Removes the headers nodes tell each other things by (the node token,
/// who forwarded, the caller's team): whatever a caller or a sandbox's
/// server sent under those names is made up, and what a node sent must
/// never reach a sandbox, where the token would be an admin's key.
pub(crate) fn strip_internal(headers: &mut HeaderMap) {
    headers.remove(NODE_TOKEN);
    headers.remove(FORWARDED_BY);
    headers.remove(crate::TEAM_HEADER);
}

fn unreachable_owner(owner: &str, base: &str, e: &dyn std::fmt::Display) -> Response {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "node_unreachable",
        format!("the sandbox's node {owner} ({base}) did not answer: {e}"),
    )
    .into_response()
}

/// Compares without stopping at the first difference, so the time taken
/// says nothing about how much of a guessed token was right.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_headers_and_credentials_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        h.insert("x-api-key", HeaderValue::from_static("k"));
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(NODE_TOKEN, HeaderValue::from_static("forged"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert(crate::TEAM_HEADER, HeaderValue::from_static("t"));
        strip_hop(&mut h);
        strip_credentials(&mut h);
        strip_internal(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn only_this_installations_token_is_a_node() {
        let f = Forwarder::new("node-a", &[7; 32]);
        let mut h = HeaderMap::new();
        assert!(!f.is_node(&h));
        h.insert(
            NODE_TOKEN,
            HeaderValue::from_str(&hex::encode([7; 32])).unwrap(),
        );
        assert!(f.is_node(&h));
        h.insert(
            NODE_TOKEN,
            HeaderValue::from_str(&hex::encode([8; 32])).unwrap(),
        );
        assert!(!f.is_node(&h));
        h.insert(NODE_TOKEN, HeaderValue::from_static("07"));
        assert!(!f.is_node(&h));
    }
}
