//! The Managed Agents control plane as the worker sees it: the work queue
//! (poll, ack, heartbeat, stop), the session and its events, skills and
//! memory stores. Every call is bearer-only (no `X-Api-Key`), as the
//! official SDK's scoped client sends them.

use crate::secret::Secret;
use reqwest::{Method, StatusCode};
use sandstone_agents_api::LONG_POLL_HEADER;
use sandstone_agents_api::{
    ErrorBody, FieldError, Memory, MemoryEntry, MemoryParams, Page, Precondition, SendEvents,
    SentEvents, Session, SessionEvent, SkillVersion, WorkHeartbeat, WorkItem, WorkStop,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

const MANAGED_AGENTS_BETA: &str = "managed-agents-2026-04-01";
const MEMORY_BETA: &str = "agent-memory-2026-07-22";

/// What went wrong talking to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum CmaError {
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("transport error: {0}")]
    Transport(String),
    /// A success whose body does not fit the protocol (names the field).
    #[error("unexpected response body: {0}")]
    Body(#[from] FieldError),
}

impl CmaError {
    pub fn status(&self) -> Option<u16> {
        match self {
            CmaError::Status { status, .. } => Some(*status),
            CmaError::Transport(_) | CmaError::Body(_) => None,
        }
    }

    /// A 4xx other than 408/409/429 will not get better by retrying.
    pub fn is_fatal(&self) -> bool {
        self.status()
            .is_some_and(|s| (400..500).contains(&s) && ![408, 409, 429].contains(&s))
    }
}

pub type CmaResult<T> = Result<T, CmaError>;

/// Which beta header a call carries.
#[derive(Clone, Copy)]
enum Beta {
    ManagedAgents,
    Memory,
    None,
}

/// One control plane, shared by every item a worker serves.
#[derive(Clone)]
pub struct Cma {
    base: String,
    http: reqwest::Client,
}

struct Call<'a> {
    method: Method,
    path: String,
    token: &'a Secret,
    query: Vec<(&'static str, String)>,
    /// The JSON body, serialised once when the call is built (a retry
    /// sends the same bytes).
    body: Option<bytes::Bytes>,
    beta: Beta,
    timeout: Option<Duration>,
    headers: Vec<(&'static str, String)>,
    /// Extra tries after a transient failure (as the SDK core's two).
    retries: u32,
}

impl<'a> Call<'a> {
    /// A call on a store's memories (`rest` after `/memories`), which take
    /// the memory beta.
    fn memories(method: Method, store: &str, rest: &str, token: &'a Secret) -> Self {
        let path = format!("/v1/memory_stores/{store}/memories{rest}");
        Call {
            beta: Beta::Memory,
            ..Call::new(method, path, token)
        }
    }

    fn new(method: Method, path: String, token: &'a Secret) -> Self {
        Call {
            // Reads are safe to repeat; writes say so themselves.
            retries: if method == Method::GET { 2 } else { 0 },
            method,
            path,
            token,
            query: Vec::new(),
            body: None,
            beta: Beta::ManagedAgents,
            timeout: None,
            headers: Vec::new(),
        }
    }

    fn json(&mut self, body: &impl Serialize) {
        let bytes = serde_json::to_vec(body).expect("the wire model always serialises");
        self.body = Some(bytes.into());
    }
}

/// What one poll got.
#[derive(Debug)]
pub struct Polled {
    pub item: Option<WorkItem>,
    /// The server held the poll open until work came (Sandstone's control
    /// plane): poll again at once after an empty answer.
    pub server_waits: bool,
}

impl Cma {
    pub fn new(base: &str) -> Cma {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a default HTTP client builds");
        Cma {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    fn request(&self, c: &Call<'_>) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(c.method.clone(), format!("{}{}", self.base, c.path))
            .bearer_auth(c.token.expose())
            .query(&c.query)
            .timeout(c.timeout.unwrap_or(Duration::from_secs(600)));
        match c.beta {
            Beta::ManagedAgents => req = req.header("anthropic-beta", MANAGED_AGENTS_BETA),
            Beta::Memory => req = req.header("anthropic-beta", MEMORY_BETA),
            Beta::None => {}
        }
        for (k, v) in &c.headers {
            req = req.header(*k, v);
        }
        if let Some(b) = &c.body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.clone());
        }
        req
    }

    /// Sends, retrying transient failures (transport, 408, 429, 5xx)
    /// `c.retries` times after 0.5 s, then 1 s.
    async fn send(&self, c: Call<'_>) -> CmaResult<reqwest::Response> {
        let mut delay = Duration::from_millis(500);
        for _ in 0..c.retries {
            match self.send_once(&c).await {
                // A 409 here means "already done" (a stopped item): final.
                Err(e) if !e.is_fatal() && e.status() != Some(409) => {
                    tracing::debug!(path = %c.path, error = %e, "control plane call failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                other => return other,
            }
        }
        self.send_once(&c).await
    }

    async fn send_once(&self, c: &Call<'_>) -> CmaResult<reqwest::Response> {
        let resp = self
            .request(c)
            .send()
            .await
            .map_err(|e| CmaError::Transport(without_url(e)))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let message = match sandstone_agents_api::parse::<ErrorBody>(&body) {
            Ok(b) => b.error.message,
            Err(_) => status.canonical_reason().unwrap_or("error").to_string(),
        };
        Err(CmaError::Status {
            status: status.as_u16(),
            message,
        })
    }

    async fn json<T: DeserializeOwned>(&self, c: Call<'_>) -> CmaResult<T> {
        let body = self
            .send(c)
            .await?
            .bytes()
            .await
            .map_err(|e| CmaError::Transport(without_url(e)))?;
        Ok(sandstone_agents_api::parse(&body)?)
    }

    fn work_path(env: &str, rest: &str) -> String {
        format!("/v1/environments/{env}/work{rest}")
    }

    /// One long poll: the item (`None` when the queue had nothing, a JSON
    /// `null`), and whether the server held the poll open waiting for one
    /// ([`LONG_POLL_HEADER`]).
    pub async fn poll(
        &self,
        env: &str,
        key: &Secret,
        worker_id: &str,
        block_ms: u64,
    ) -> CmaResult<Polled> {
        let mut c = Call::new(Method::GET, Self::work_path(env, "/poll"), key);
        c.query.push(("block_ms", block_ms.to_string()));
        c.headers
            .push(("Anthropic-Worker-ID", worker_id.to_string()));
        c.timeout = Some(Duration::from_millis(block_ms) + Duration::from_secs(30));
        // The poll loop has its own back-off.
        c.retries = 0;
        let resp = self.send(c).await?;
        let server_waits = resp
            .headers()
            .get(LONG_POLL_HEADER)
            .is_some_and(|v| v.as_bytes() == b"true");
        let body = resp
            .bytes()
            .await
            .map_err(|e| CmaError::Transport(without_url(e)))?;
        Ok(Polled {
            item: sandstone_agents_api::parse(&body)?,
            server_waits,
        })
    }

    pub async fn ack(&self, env: &str, work: &str, key: &Secret) -> CmaResult<WorkItem> {
        let path = Self::work_path(env, &format!("/{work}/ack"));
        self.json(Call::new(Method::POST, path, key)).await
    }

    /// One heartbeat; `expected` is `NO_HEARTBEAT` first, then the server's
    /// last `last_heartbeat` echoed verbatim.
    pub async fn heartbeat(
        &self,
        env: &str,
        work: &str,
        token: &Secret,
        expected: &str,
        timeout: Duration,
    ) -> CmaResult<WorkHeartbeat> {
        let path = Self::work_path(env, &format!("/{work}/heartbeat"));
        let mut c = Call::new(Method::POST, path, token);
        c.query
            .push(("expected_last_heartbeat", expected.to_string()));
        c.timeout = Some(timeout);
        self.json(c).await
    }

    /// Stops an item; an item already stopped (409) counts as done.
    pub async fn stop(&self, env: &str, work: &str, token: &Secret, force: bool) -> CmaResult<()> {
        let path = Self::work_path(env, &format!("/{work}/stop"));
        let mut c = Call::new(Method::POST, path, token);
        c.json(&WorkStop {
            force: force.then_some(true),
            ..WorkStop::default()
        });
        c.timeout = Some(Duration::from_secs(30));
        c.retries = 2;
        match self.send(c).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(409) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn session(&self, sid: &str, token: &Secret) -> CmaResult<Session> {
        let c = Call::new(Method::GET, format!("/v1/sessions/{sid}"), token);
        self.json(c).await
    }

    /// A session's whole history, oldest first.
    pub async fn events(&self, sid: &str, token: &Secret) -> CmaResult<Vec<SessionEvent>> {
        let path = format!("/v1/sessions/{sid}/events");
        self.pages(
            &path,
            token,
            Beta::ManagedAgents,
            vec![("limit", "1000".into())],
        )
        .await
    }

    async fn pages<T: DeserializeOwned>(
        &self,
        path: &str,
        token: &Secret,
        beta: Beta,
        query: Vec<(&'static str, String)>,
    ) -> CmaResult<Vec<T>> {
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut c = Call::new(Method::GET, path.to_string(), token);
            c.beta = beta;
            c.query = query.clone();
            if let Some(p) = &page {
                c.query.push(("page", p.clone()));
            }
            let p: Page<T> = self.json(c).await?;
            out.extend(p.data);
            match p.next_page {
                // A cursor that does not move would loop forever.
                Some(next) if !next.is_empty() && page.as_deref() != Some(next.as_str()) => {
                    page = Some(next)
                }
                _ => return Ok(out),
            }
        }
    }

    /// The live stream (SSE); nothing is replayed, so open it before
    /// listing history.
    pub async fn stream(&self, sid: &str, token: &Secret) -> CmaResult<reqwest::Response> {
        let mut c = Call::new(
            Method::GET,
            format!("/v1/sessions/{sid}/events/stream"),
            token,
        );
        c.timeout = Some(Duration::from_secs(24 * 3600));
        c.headers.push(("accept", "text/event-stream".into()));
        self.send(c).await
    }

    pub async fn send_events(
        &self,
        sid: &str,
        token: &Secret,
        events: &SendEvents,
    ) -> CmaResult<SentEvents> {
        let mut c = Call::new(Method::POST, format!("/v1/sessions/{sid}/events"), token);
        c.json(events);
        c.timeout = Some(Duration::from_secs(30));
        self.json(c).await
    }

    pub async fn skill_version(
        &self,
        skill: &str,
        version: &str,
        token: &Secret,
    ) -> CmaResult<SkillVersion> {
        let mut c = Call::new(
            Method::GET,
            format!("/v1/skills/{skill}/versions/{version}"),
            token,
        );
        c.beta = Beta::None;
        self.json(c).await
    }

    pub async fn skill_content(
        &self,
        skill: &str,
        version: &str,
        token: &Secret,
    ) -> CmaResult<bytes::Bytes> {
        let mut c = Call::new(
            Method::GET,
            format!("/v1/skills/{skill}/versions/{version}/content"),
            token,
        );
        c.beta = Beta::None;
        c.headers.push(("accept", "application/binary".into()));
        self.send(c)
            .await?
            .bytes()
            .await
            .map_err(|e| CmaError::Transport(without_url(e)))
    }

    /// Every memory of a store; `full` includes contents.
    pub async fn memories(
        &self,
        store: &str,
        token: &Secret,
        full: bool,
    ) -> CmaResult<Vec<MemoryEntry>> {
        let (view, limit) = if full {
            ("full", "20")
        } else {
            ("basic", "100")
        };
        let path = format!("/v1/memory_stores/{store}/memories");
        let query = vec![("view", view.to_string()), ("limit", limit.to_string())];
        self.pages(&path, token, Beta::Memory, query).await
    }

    pub async fn memory(&self, store: &str, id: &str, token: &Secret) -> CmaResult<Memory> {
        let mut c = Call::memories(Method::GET, store, &format!("/{id}"), token);
        c.query.push(("view", "full".into()));
        self.json(c).await
    }

    pub async fn create_memory(
        &self,
        store: &str,
        path: &str,
        content: &str,
        token: &Secret,
    ) -> CmaResult<Memory> {
        let mut c = Call::memories(Method::POST, store, "", token);
        c.json(&MemoryParams {
            path: Some(Some(path.to_string())),
            content: Some(Some(content.to_string())),
            ..MemoryParams::default()
        });
        self.json(c).await
    }

    pub async fn update_memory(
        &self,
        store: &str,
        id: &str,
        content: &str,
        precondition_sha: &str,
        token: &Secret,
    ) -> CmaResult<Memory> {
        let mut c = Call::memories(Method::POST, store, &format!("/{id}"), token);
        c.json(&MemoryParams {
            content: Some(Some(content.to_string())),
            precondition: Some(Some(Precondition::ContentSha256 {
                content_sha256: precondition_sha.to_string(),
            })),
            ..MemoryParams::default()
        });
        self.json(c).await
    }

    pub async fn delete_memory(
        &self,
        store: &str,
        id: &str,
        expected_sha: &str,
        token: &Secret,
    ) -> CmaResult<()> {
        let mut c = Call::memories(Method::DELETE, store, &format!("/{id}"), token);
        c.query
            .push(("expected_content_sha256", expected_sha.to_string()));
        self.send(c).await.map(|_| ())
    }
}

/// reqwest errors name the URL; ours carry no secrets in URLs, but keep
/// messages short and stable for logs.
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connect failed"
    } else if e.is_decode() || e.is_body() {
        "bad response body"
    } else {
        "request failed"
    };
    match e.status() {
        Some(s) if s != StatusCode::OK => format!("{kind} (HTTP {s})"),
        _ => kind.to_string(),
    }
}
