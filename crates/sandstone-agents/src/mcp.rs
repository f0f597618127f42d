//! A Model Context Protocol client over streamable HTTP, for the agent
//! loop's `mcp_toolset` tools: `initialize` (keeping the server's
//! `Mcp-Session-Id`), `tools/list` and `tools/call`, each a JSON-RPC POST
//! whose answer is JSON or a server-sent event stream. A connection is
//! opened once per session and server and reused by every call; one the
//! server forgot (404) is opened again.

use sandstone_agents_api::{ContentBlock, HttpAnswer};
use sandstone_api::Secret;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};

/// The protocol revision asked for (the server may answer an older one).
const PROTOCOL: &str = "2025-06-18";

/// Why an MCP server could not be used: the session errors the API
/// defines.
#[derive(Debug, Clone, thiserror::Error)]
pub enum McpError {
    #[error("{0}")]
    Connection(Failure),
    /// 401 or 403: its credential was missing or refused.
    #[error("{0}")]
    Authentication(Failure),
    /// The server forgot the session (404): open a new one.
    #[error("the MCP session expired")]
    Expired,
}

impl McpError {
    /// The `session.error` type.
    pub fn kind(&self) -> &'static str {
        match self {
            McpError::Authentication(_) => "mcp_authentication_failed_error",
            _ => "mcp_connection_failed_error",
        }
    }
}

/// What went wrong, and the server's error answer when it gave one.
#[derive(Debug, Clone)]
pub struct Failure {
    pub message: String,
    pub answer: Option<HttpAnswer>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            message,
            answer: None,
        }
    }
}

/// The most of an error answer's body kept.
const ANSWER_BODY: usize = 1024;

/// An error answer as a validation shows it: its body cut short, with
/// every one of `secrets` (a server may echo what it was sent) replaced.
pub fn capture(status: u16, content_type: &str, body: &str, secrets: &[&str]) -> HttpAnswer {
    let mut body = body.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        body = body.replace(s, "[redacted]");
    }
    let body_truncated = body.chars().count() > ANSWER_BODY;
    HttpAnswer {
        status_code: status,
        content_type: content_type.to_string(),
        body: body.chars().take(ANSWER_BODY).collect(),
        body_truncated,
    }
}

/// Whether the server at `url` takes `token`: a session initialized and
/// its tools listed, or the step that failed (`initialize`, `tools/list`)
/// and why.
pub async fn probe(
    http: &reqwest::Client,
    url: &str,
    token: Secret,
) -> Result<(), (&'static str, McpError)> {
    let c = Connection::open(http, url, Some(token))
        .await
        .map_err(|e| ("initialize", e))?;
    c.list_tools(http).await.map_err(|e| ("tools/list", e))?;
    Ok(())
}

/// One of a server's tools, as offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

/// What a call answered.
pub struct CallResult {
    pub content: Vec<ContentBlock>,
    pub is_error: bool,
}

/// An initialized MCP session with one server.
pub struct Connection {
    url: String,
    token: Option<Secret>,
    session: Option<String>,
    protocol: String,
    next_id: AtomicU64,
}

impl Connection {
    /// Initializes a session with the server at `url`, sending `token` as
    /// a bearer token.
    pub async fn open(
        http: &reqwest::Client,
        url: &str,
        token: Option<Secret>,
    ) -> Result<Connection, McpError> {
        let mut c = Connection {
            url: url.to_string(),
            token,
            session: None,
            protocol: PROTOCOL.to_string(),
            next_id: AtomicU64::new(1),
        };
        let params = json!({"protocolVersion": PROTOCOL, "capabilities": {},
            "clientInfo": {"name": "sandstone", "version": env!("CARGO_PKG_VERSION")}});
        let (result, session) = c.post(http, "initialize", Some(params)).await?;
        c.session = session;
        if let Some(v) = result["protocolVersion"].as_str() {
            c.protocol = v.to_string();
        }
        c.notify(http, "notifications/initialized").await?;
        Ok(c)
    }

    /// Every tool the server lists (following its pages).
    pub async fn list_tools(&self, http: &reqwest::Client) -> Result<Vec<ToolDef>, McpError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        // A server that pages forever is cut off.
        for _ in 0..100 {
            let params = cursor.as_ref().map(|c| json!({"cursor": c}));
            let (r, _) = self.post(http, "tools/list", params).await?;
            for t in r["tools"].as_array().into_iter().flatten() {
                let Some(name) = t["name"].as_str() else {
                    continue;
                };
                out.push(ToolDef {
                    name: name.to_string(),
                    description: t["description"].as_str().unwrap_or_default().to_string(),
                    input_schema: match &t["inputSchema"] {
                        Value::Object(_) => t["inputSchema"].clone(),
                        _ => json!({"type": "object"}),
                    },
                });
            }
            match r["nextCursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = Some(c.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    pub async fn call(
        &self,
        http: &reqwest::Client,
        name: &str,
        arguments: &Value,
    ) -> Result<CallResult, McpError> {
        let args = if arguments.is_object() {
            arguments.clone()
        } else {
            json!({})
        };
        let (r, _) = self
            .post(
                http,
                "tools/call",
                Some(json!({"name": name, "arguments": args})),
            )
            .await?;
        let content = r["content"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| match c["text"].as_str() {
                Some(t) if c["type"] == "text" => ContentBlock::text(t),
                // Images, audio and resources the model is shown as JSON.
                _ => ContentBlock::text(c.to_string()),
            })
            .collect();
        Ok(CallResult {
            content,
            is_error: r["isError"].as_bool().unwrap_or(false),
        })
    }

    fn request(&self, http: &reqwest::Client) -> reqwest::RequestBuilder {
        let mut req = http
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", &self.protocol);
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        req
    }

    async fn notify(&self, http: &reqwest::Client, method: &str) -> Result<(), McpError> {
        let resp = self
            .request(http)
            .json(&json!({"jsonrpc": "2.0", "method": method}))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.check(resp).await.map(drop)
    }

    fn unreachable(&self, e: reqwest::Error) -> McpError {
        McpError::Connection(format!("MCP server {}: {}", self.url, e.without_url()).into())
    }

    /// A response's status as an error, or the response.
    async fn check(&self, resp: reqwest::Response) -> Result<reqwest::Response, McpError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.text().await.unwrap_or_default();
        // A server may echo what it was sent: never its token.
        let token = self.token.as_ref().map_or("", |t| t.expose());
        let answer = capture(status.as_u16(), &content_type, &body, &[token]);
        let said: String = answer.body.chars().take(300).collect();
        let failure = Failure {
            message: format!("MCP server {} answered {status}: {said}", self.url),
            answer: Some(answer),
        };
        Err(match status.as_u16() {
            401 | 403 => McpError::Authentication(failure),
            404 if self.session.is_some() => McpError::Expired,
            _ => McpError::Connection(failure),
        })
    }

    /// One JSON-RPC request: its `result`, and the session id the answer
    /// set.
    async fn post(
        &self,
        http: &reqwest::Client,
        method: &str,
        params: Option<Value>,
    ) -> Result<(Value, Option<String>), McpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut body = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if let Some(p) = params {
            body["params"] = p;
        }
        let resp = self
            .request(http)
            .json(&body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let resp = self.check(resp).await?;
        let session = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/event-stream"));
        let text = resp.text().await.map_err(|e| self.unreachable(e))?;
        let message = if sse {
            answer_in_stream(&text, id)
        } else {
            serde_json::from_str(&text).ok()
        }
        .ok_or_else(|| {
            McpError::Connection(
                format!("MCP server {}: no JSON-RPC answer to {method}", self.url).into(),
            )
        })?;
        if let Some(e) = message.get("error") {
            return Err(McpError::Connection(
                format!(
                    "MCP server {}: {method}: {}",
                    self.url,
                    e["message"].as_str().unwrap_or("error")
                )
                .into(),
            ));
        }
        Ok((message["result"].clone(), session))
    }
}

/// The JSON-RPC answer with `id` among a server-sent event stream's
/// `data:` payloads.
fn answer_in_stream(text: &str, id: u64) -> Option<Value> {
    let mut data = String::new();
    let mut found = None;
    // A blank line ends an event; the last one may end without one.
    for line in text.lines().chain(std::iter::once("")) {
        if let Some(d) = line.strip_prefix("data:") {
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        } else if line.is_empty()
            && !data.is_empty()
            && let Ok(v) = serde_json::from_str::<Value>(&std::mem::take(&mut data))
            && v["id"] == json!(id)
        {
            found = Some(v);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_found_among_an_event_streams_messages() {
        let stream = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n\
                      event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"ok\":true}}\n";
        let v = answer_in_stream(stream, 7).unwrap();
        assert_eq!(v["result"]["ok"], true);
        assert!(answer_in_stream(stream, 8).is_none());
    }
}
