//! The agent loop's MCP servers: each session keeps one connection per
//! server (authenticated with the session's vault credential for its URL),
//! lists the tools of its `mcp_toolset`s for every model request, and runs
//! the model's `agent.mcp_tool_use` calls, at once or after the user
//! confirmed them. A server that cannot be reached or refuses the
//! credential is reported once as the session error the API defines and
//! its tools are left out; the turn goes on.

use crate::error::ApiResult;
use crate::mcp::{CallResult, Connection, McpError, ToolDef};
use crate::turn::{Events, open_calls, permission};
use crate::{Agents, Outbound};
use sandstone_agents_api::{
    AgentTool, ContentBlock, KnownEvent, McpServer, PermissionKind, Session, Verdict,
};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

/// A session's open connections, and the servers whose failure it was
/// told of (told again only after they worked once more).
#[derive(Default)]
pub(crate) struct McpPool {
    outbound: Option<Outbound>,
    http: OnceLock<reqwest::Client>,
    conns: Mutex<HashMap<(String, String), Arc<Connection>>>,
    failing: Mutex<HashSet<(String, String)>>,
}

/// An MCP tool offered to the model, with the permission its toolset
/// gives it.
pub(crate) struct McpTool {
    pub server: String,
    pub def: ToolDef,
    pub permission: (Value, Value),
}

impl McpPool {
    pub(crate) fn new(outbound: Option<Outbound>) -> McpPool {
        McpPool {
            outbound,
            ..McpPool::default()
        }
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        self.http.get_or_init(|| {
            // No redirects: a bearer token must not follow one elsewhere.
            let mut b = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(std::time::Duration::from_secs(10))
                .timeout(std::time::Duration::from_secs(300));
            if let Some(check) = &self.outbound {
                // Dialled here, never through an environment's proxy, which
                // would resolve the name unjudged.
                b = b
                    .dns_resolver(Arc::new(crate::outbound::Guarded(check.clone())))
                    .no_proxy();
            }
            b.build().unwrap_or_default()
        })
    }

    /// The operator's verdict on `url` when it names an address.
    pub(crate) fn check_url(&self, url: &str) -> Result<(), String> {
        self.outbound.as_ref().map_or(Ok(()), |check| {
            crate::outbound::check_url(check, url).map_err(|e| e.to_string())
        })
    }

    /// Forgets a session's connections (it was deleted).
    pub(crate) fn forget(&self, session: &str) {
        crate::lock(&self.conns).retain(|(s, _), _| s != session);
        crate::lock(&self.failing).retain(|(s, _)| s != session);
    }
}

/// What is asked of a server.
#[derive(Clone, Copy)]
enum Op<'a> {
    List,
    Call(&'a str, &'a Value),
}

enum Done {
    Listed(Vec<ToolDef>),
    Called(CallResult),
}

impl Op<'_> {
    async fn on(self, c: &Connection, http: &reqwest::Client) -> Result<Done, McpError> {
        Ok(match self {
            Op::List => Done::Listed(c.list_tools(http).await?),
            Op::Call(name, input) => Done::Called(c.call(http, name, input).await?),
        })
    }
}

fn server<'a>(doc: &'a Session, name: &str) -> Option<&'a McpServer> {
    doc.agent.mcp_servers.iter().find(|s| s.name == name)
}

impl Agents {
    /// An open connection to `server` for `session`: the cached one, or a
    /// new one. `refused`: the last one was refused, so an OAuth token is
    /// refreshed before trying again.
    async fn mcp_connection(
        &self,
        doc: &Session,
        server: &McpServer,
        refused: bool,
    ) -> Result<Arc<Connection>, McpError> {
        let key = (doc.id.clone(), server.name.clone());
        if !refused && let Some(c) = crate::lock(&self.mcp.conns).get(&key) {
            return Ok(c.clone());
        }
        self.mcp
            .check_url(&server.url)
            .map_err(|e| McpError::Connection(e.into()))?;
        let http = self.mcp.http();
        let token = self
            .vaults
            .mcp_token(&self.mcp, &doc.vault_ids, &server.url, refused)
            .await
            .map_err(|e| McpError::Authentication(e.into()))?;
        let c = Arc::new(Connection::open(http, &server.url, token).await?);
        crate::lock(&self.mcp.conns).insert(key, c.clone());
        Ok(c)
    }

    /// Does `op` on the session's connection to `server`, opening a new
    /// one once if the server forgot the old session or refused its token
    /// (when the connection was opened, or by this call).
    async fn with_mcp(
        &self,
        doc: &Session,
        server: &McpServer,
        op: Op<'_>,
    ) -> Result<Done, McpError> {
        let first = match self.mcp_connection(doc, server, false).await {
            Ok(c) => op.on(&c, self.mcp.http()).await,
            Err(e) => Err(e),
        };
        match first {
            Err(e @ (McpError::Expired | McpError::Authentication(_))) => {
                let refused = matches!(e, McpError::Authentication(_));
                let c = self.mcp_connection(doc, server, refused).await?;
                op.on(&c, self.mcp.http()).await
            }
            other => other,
        }
    }

    /// Tells the session once that `server` failed; a success clears it.
    async fn mcp_outcome<T>(
        &self,
        session: &str,
        server: &str,
        r: &Result<T, McpError>,
    ) -> ApiResult<()> {
        let key = (session.to_string(), server.to_string());
        let Err(e) = r else {
            crate::lock(&self.mcp.failing).remove(&key);
            return Ok(());
        };
        if !crate::lock(&self.mcp.failing).insert(key) {
            return Ok(());
        }
        tracing::info!(session, mcp_server = server, error = %e, "MCP server failed");
        self.sessions
            .emit(
                session,
                json!({"type": "session.error", "error": {
                "type": e.kind(), "mcp_server_name": server, "message": e.to_string(),
                "retry_status": {"type": "retrying"}}}),
            )
            .await
            .map(drop)
    }

    /// The tools of the session's enabled MCP toolsets.
    pub(crate) async fn mcp_tools(&self, doc: &Session) -> ApiResult<Vec<McpTool>> {
        let mut out = Vec::new();
        for t in &doc.agent.tools {
            let AgentTool::McpToolset(set) = t else {
                continue;
            };
            let Some(server) = server(doc, &set.mcp_server_name) else {
                continue;
            };
            let listed = match self.with_mcp(doc, server, Op::List).await {
                Ok(Done::Listed(tools)) => Ok(tools),
                Ok(Done::Called(_)) => Ok(Vec::new()),
                Err(e) => Err(e),
            };
            self.mcp_outcome(&doc.id, &server.name, &listed).await?;
            let defaults = set.default_config.clone().unwrap_or_default();
            for def in listed.unwrap_or_default() {
                let config = set.configs.iter().flatten().find(|c| c.name == def.name);
                let enabled = config
                    .and_then(|c| c.enabled)
                    .or(defaults.enabled)
                    .unwrap_or(true);
                let policy = config
                    .and_then(|c| c.permission_policy)
                    .or(defaults.permission_policy)
                    .map_or(PermissionKind::AlwaysAsk, |p| p.kind);
                if enabled {
                    out.push(McpTool {
                        server: server.name.clone(),
                        def,
                        permission: permission(Some(policy)),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Calls `name` on `server` and records what it answered as the
    /// result of call `id`.
    pub(crate) async fn run_mcp(
        &self,
        doc: &Session,
        id: &str,
        server_name: &str,
        name: &str,
        input: &Value,
    ) -> ApiResult<()> {
        let result = match server(doc, server_name) {
            Some(s) => {
                let r = match self.with_mcp(doc, s, Op::Call(name, input)).await {
                    Ok(Done::Called(r)) => Ok(r),
                    Ok(Done::Listed(_)) => Ok(CallResult {
                        content: Vec::new(),
                        is_error: true,
                    }),
                    Err(e) => Err(e),
                };
                self.mcp_outcome(&doc.id, server_name, &r).await?;
                r.unwrap_or_else(|e| CallResult {
                    content: vec![ContentBlock::text(e.to_string())],
                    is_error: true,
                })
            }
            None => CallResult {
                content: vec![ContentBlock::text(format!(
                    "MCP server {server_name} is not one of this agent's"
                ))],
                is_error: true,
            },
        };
        self.sessions
            .emit(
                &doc.id,
                json!({"type": "agent.mcp_tool_result", "mcp_tool_use_id": id,
                "content": result.content, "is_error": result.is_error}),
            )
            .await
            .map(drop)
    }

    /// Runs the open MCP calls the user has allowed; whether there were
    /// any.
    pub(crate) async fn run_confirmed_mcp(&self, session: &str) -> ApiResult<bool> {
        let events = self.sessions.events(session);
        let allowed = confirmed_mcp(&events);
        if allowed.is_empty() {
            return Ok(false);
        }
        let doc = self.sessions.session(session)?;
        for (id, server, name, input) in allowed {
            self.run_mcp(&doc, &id, &server, &name, &input).await?;
        }
        Ok(true)
    }
}

/// Open `agent.mcp_tool_use` calls with an `allow` confirmation: id,
/// server, tool and input.
fn confirmed_mcp(events: &Events) -> Vec<(String, String, String, Value)> {
    let open = open_calls(events);
    events
        .iter()
        .filter_map(|e| {
            let Some(KnownEvent::AgentMcpToolUse(t)) = e.known() else {
                return None;
            };
            let id = e.id.clone()?;
            let allowed = events.iter().any(|c| {
                matches!(c.known(), Some(KnownEvent::UserToolConfirmation(c))
                    if c.tool_use_id == id && c.result == Verdict::Allow)
            });
            (allowed && open.contains(&id)).then(|| {
                (
                    id,
                    t.mcp_server_name.clone().unwrap_or_default(),
                    t.name.clone(),
                    t.input.clone().unwrap_or(Value::Null),
                )
            })
        })
        .collect()
}
