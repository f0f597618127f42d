//! A pass-through HTTP proxy in front of the daemon's `/v1` API that
//! injects the control-plane faults a worker must survive: 5xx on result
//! posts, a 412 on a heartbeat. It records every request line it forwards.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Faults {
    /// Answer this many `user.tool_result` posts with 503.
    pub fail_result_posts: u32,
    /// Answer the next heartbeat with 412.
    pub heartbeat_412: bool,
    /// Deliver every stream chunk naming an `agent.tool_use` twice.
    pub duplicate_tool_uses: bool,
    /// Turn the next polled work item into a healthcheck item.
    pub healthcheck_next_poll: bool,
    /// `METHOD path?query` of every request, in order.
    pub seen: Vec<String>,
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    faults: Arc<Mutex<Faults>>,
    cuts: tokio::sync::watch::Receiver<u64>,
    http: reqwest::Client,
}

pub struct FaultProxy {
    pub url: String,
    pub faults: Arc<Mutex<Faults>>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> FaultProxy {
        let faults = Arc::new(Mutex::new(Faults::default()));
        let (cut, cuts) = tokio::sync::watch::channel(0);
        let state = Proxy {
            upstream: upstream.to_string(),
            faults: faults.clone(),
            cuts,
            http: reqwest::Client::new(),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        FaultProxy { url, faults, cut }
    }

    /// Ends every event stream open through the proxy now.
    pub fn cut_streams(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn seen(&self, needle: &str) -> usize {
        let f = self.faults.lock().unwrap();
        f.seen.iter().filter(|s| s.contains(needle)).count()
    }
}

fn error(status: StatusCode, body: serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn forward(State(p): State<Proxy>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.to_string())
        .unwrap_or_default();
    let headers: HeaderMap = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .unwrap();
    let is_result = method == "POST"
        && path.contains("/events")
        && String::from_utf8_lossy(&body).contains("user.tool_result");
    let fault = {
        let mut f = p.faults.lock().unwrap();
        f.seen.push(format!("{method} {path}"));
        if is_result && f.fail_result_posts > 0 {
            f.fail_result_posts -= 1;
            Some(error(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"type": "error", "error": {"type": "api_error", "message": "injected"}}),
            ))
        } else if path.contains("/heartbeat") && f.heartbeat_412 {
            f.heartbeat_412 = false;
            Some(error(
                StatusCode::PRECONDITION_FAILED,
                json!({"type": "error", "error": {"type": "invalid_request_error", "message": "injected",
                    "details": {"error_code": "heartbeat_precondition_failed",
                        "current_state": {"state": "active", "ttl_seconds": 30,
                            "last_heartbeat": "2026-01-01T00:00:00Z", "lease_extended": false}}}}),
            ))
        } else {
            None
        }
    };
    if let Some(r) = fault {
        return r;
    }
    let mut out = p
        .http
        .request(method, format!("{}{path}", p.upstream))
        .body(body);
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            out = out.header(k, v);
        }
    }
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_GATEWAY, json!({"error": e.to_string()})),
    };
    let mut builder = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if k != "content-length" && k != "transfer-encoding" {
            builder = builder.header(k, v);
        }
    }
    if path.contains("/work/poll") {
        let mut item: serde_json::Value = resp.json().await.unwrap_or_default();
        let mut f = p.faults.lock().unwrap();
        if f.healthcheck_next_poll && item.is_object() {
            f.healthcheck_next_poll = false;
            item["data"]["type"] = json!("healthcheck");
        }
        return builder.body(Body::from(item.to_string())).unwrap();
    }
    let duplicate = path.contains("/events/stream") && p.faults.lock().unwrap().duplicate_tool_uses;
    let chunks = futures_util::StreamExt::flat_map(resp.bytes_stream(), move |chunk| {
        let twice = duplicate
            && chunk
                .as_ref()
                .is_ok_and(|c| String::from_utf8_lossy(c).contains("\"agent.tool_use\""));
        let copies = match &chunk {
            Ok(c) if twice => vec![Ok(c.clone()), Ok(c.clone())],
            _ => vec![chunk],
        };
        futures_util::stream::iter(copies)
    });
    let mut cuts = p.cuts.clone();
    cuts.mark_unchanged();
    let body = futures_util::StreamExt::take_until(chunks, async move {
        let _ = cuts.changed().await;
    });
    builder.body(Body::from_stream(body)).unwrap()
}
