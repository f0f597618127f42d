//! The agent loop. A session's next step is a function of its history:
//! open tool calls → wait for their results (the session is idle with
//! `requires_action`); new input since the last model request → call the
//! model; otherwise idle. One driver task per session runs that loop, so a
//! restart resumes a turn by looking at the events, nothing else.
//!
//! Across nodes, one driver runs per session: a node starts one only
//! with the session's claim in the database (renewed while it runs, let go
//! when the session is idle). A node that appends input while another
//! holds the claim leaves it to that one, which the append's signal wakes;
//! a driver that lets go looks at the history once more, so input that
//! arrived meanwhile is never left waiting.

use crate::error::ApiResult;
use crate::mcp_calls::McpTool;
use crate::{Agents, model};
use sandstone_agents_api::layout::{OUTPUTS_DIR, WORKDIR};
use sandstone_agents_api::{
    AgentTool, ContentBlock, KnownEvent, PermissionKind, Session, SessionAgent, SessionEvent,
    SessionResource, SessionUsage, ToolConfig, Verdict,
};
use sandstone_api::toolset::Tool;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const MODEL_RETRIES: u32 = 3;
/// How long a driver's claim on a session lasts unless renewed (a node
/// that died lets another drive after this).
const CLAIM_TTL: Duration = Duration::from_secs(30);

enum Step {
    CallModel,
    Wait(Vec<String>),
    Idle,
}

pub(crate) type Events = [Arc<SessionEvent>];

fn is_call(e: &SessionEvent) -> bool {
    matches!(
        e.known(),
        Some(
            KnownEvent::AgentToolUse(_)
                | KnownEvent::AgentCustomToolUse(_)
                | KnownEvent::AgentMcpToolUse(_)
        )
    )
}

fn is_interrupt(e: &SessionEvent) -> bool {
    matches!(e.known(), Some(KnownEvent::UserInterrupt(_)))
}

/// Whether a confirmation denied tool call `id`.
pub fn denied(events: &Events, id: &str) -> bool {
    events.iter().any(|e| {
        matches!(e.known(), Some(KnownEvent::UserToolConfirmation(c))
            if c.tool_use_id == id && c.result == Verdict::Deny)
    })
}

/// The call an answer (a result or confirmation) refers to.
pub fn answer_to(e: &KnownEvent) -> Option<&str> {
    match e {
        KnownEvent::UserToolResult(r) | KnownEvent::AgentToolResult(r) => Some(&r.tool_use_id),
        KnownEvent::UserCustomToolResult(r) => Some(&r.custom_tool_use_id),
        KnownEvent::AgentMcpToolResult(r) => Some(&r.mcp_tool_use_id),
        KnownEvent::UserToolConfirmation(c) => Some(&c.tool_use_id),
        _ => None,
    }
}

fn answered(events: &Events, id: &str) -> bool {
    events.iter().any(|e| {
        e.known().is_some_and(|k| {
            !matches!(k, KnownEvent::UserToolConfirmation(_)) && answer_to(k) == Some(id)
        })
    }) || denied(events, id)
}

/// Tool calls still waiting for a result (an interrupt closes earlier ones).
pub(crate) fn open_calls(events: &Events) -> Vec<String> {
    let since = events
        .iter()
        .rposition(|e| is_interrupt(e))
        .map_or(0, |i| i + 1);
    events[since..]
        .iter()
        .filter(|e| is_call(e))
        .filter_map(|e| e.id.clone())
        .filter(|id| !answered(events, id))
        .collect()
}

fn next_step(events: &Events, consumed: usize) -> Step {
    let open = open_calls(events);
    if !open.is_empty() {
        return Step::Wait(open);
    }
    let interrupted_at = events.iter().rposition(|e| is_interrupt(e));
    let new_input = events.iter().enumerate().skip(consumed).any(|(i, e)| {
        let input = match e.known() {
            Some(
                KnownEvent::UserMessage(_)
                | KnownEvent::UserToolResult(_)
                | KnownEvent::UserCustomToolResult(_)
                | KnownEvent::AgentToolResult(_)
                | KnownEvent::AgentMcpToolResult(_),
            ) => true,
            Some(KnownEvent::UserToolConfirmation(c)) => c.result == Verdict::Deny,
            _ => false,
        };
        input && interrupted_at.is_none_or(|at| i > at)
    });
    if new_input {
        Step::CallModel
    } else {
        Step::Idle
    }
}

/// Starts the session's driver, or wakes the one that runs.
pub fn drive(agents: Arc<Agents>, session: &str) {
    let start = agents.sessions.with(session, |s| {
        if s.driving {
            s.wake.notify_one();
            false
        } else {
            s.driving = true;
            true
        }
    });
    if start.unwrap_or(false) {
        let id = session.to_string();
        tokio::spawn(async move {
            loop {
                if !agents.claim_turn(&id).await {
                    // Another node drives it (its signal reaches that one).
                    agents.stop_driving(&id);
                    return;
                }
                // A driver that dies must not leave the session marked
                // driven forever: the next event starts a new one.
                let mut driver = tokio::spawn(run(agents.clone(), id.clone()));
                let mut renew = tokio::time::interval(CLAIM_TTL / 3);
                renew.tick().await;
                let ended = loop {
                    tokio::select! {
                        r = &mut driver => break r,
                        _ = renew.tick() => {
                            if !agents.claim_turn(&id).await {
                                tracing::error!(session = %id, "lost the claim on driving this session");
                                driver.abort();
                            }
                        }
                    }
                };
                if ended.is_err() {
                    tracing::error!(session = %id, "agent loop failed");
                    agents.stop_driving(&id);
                }
                let origin = agents.notifier.origin().to_string();
                if let Err(e) = agents.sessions.store.release_driver(&id, &origin).await {
                    tracing::warn!(session = %id, error = %e, "releasing the claim on driving");
                }
                // Input another node appended while this one held the
                // claim: its signal may have come before the driver went
                // idle, or not at all.
                let _ = agents.sessions.catch_up(&id).await;
                let again = agents.sessions.with(&id, |s| {
                    let pending = !matches!(next_step(&s.events, s.consumed), Step::Idle);
                    if pending && !s.driving {
                        s.driving = true;
                        return true;
                    }
                    false
                });
                if ended.is_err() || !again.unwrap_or(false) {
                    return;
                }
            }
        });
    }
}

async fn run(agents: Arc<Agents>, session: String) {
    let mut announced: Vec<String> = Vec::new();
    loop {
        // Decide under the lock, so an event appended meanwhile either is
        // seen here or finds the driver still marked running.
        let decided = agents.sessions.with(&session, |s| {
            let step = next_step(&s.events, s.consumed);
            if let Step::Idle = step {
                s.driving = false;
            }
            (step, s.wake.clone())
        });
        let Ok((step, wake)) = decided else {
            return;
        };
        let outcome = match step {
            Step::Idle => return,
            Step::CallModel => agents.model_turn(&session).await,
            Step::Wait(open) => match agents.run_confirmed_mcp(&session).await {
                // Their results are new input: decide again.
                Ok(true) => Ok(()),
                Err(e) => Err(e),
                Ok(false) => {
                    if open != announced {
                        announced = open.clone();
                        let r = agents
                            .set_idle(
                                &session,
                                json!({"type": "requires_action", "event_ids": open}),
                            )
                            .await;
                        if r.is_err() {
                            return agents.stop_driving(&session);
                        }
                    }
                    wake.notified().await;
                    Ok(())
                }
            },
        };
        if let Err(e) = outcome {
            tracing::error!(session = %session, error = %e, "agent loop stopped");
            return agents.stop_driving(&session);
        }
    }
}

/// The toolset tools an agent has configured, with their permissions.
fn sandbox_tools(agent: &SessionAgent) -> impl Iterator<Item = &ToolConfig> {
    agent
        .tools
        .iter()
        .filter_map(|t| match t {
            AgentTool::Toolset(t) => t.configs.as_deref(),
            AgentTool::Custom(_) | AgentTool::McpToolset(_) => None,
        })
        .flatten()
}

/// The Messages API `tools` of an agent: enabled sandbox tools (web tools
/// run on the server and are not offered here), custom tools, and the MCP
/// servers' tools (one whose name an earlier tool has is left out).
fn model_tools(agent: &SessionAgent, mcp: &[McpTool]) -> Vec<Value> {
    let mut out = Vec::new();
    for t in &agent.tools {
        let configs = match t {
            AgentTool::Toolset(t) => t.configs.as_deref().unwrap_or_default(),
            AgentTool::Custom(c) => {
                out.push(json!({"name": c.name, "description": c.description, "input_schema": c.input_schema}));
                continue;
            }
            AgentTool::McpToolset(_) => continue,
        };
        for c in configs {
            let tool = Tool::from_name(&c.name);
            if let Some(tool) = tool.filter(|t| c.enabled == Some(true) && t.runs_in_sandbox()) {
                out.push(json!({"name": tool.name(), "description": tool.description(), "input_schema": tool.input_schema()}));
            }
        }
    }
    for m in mcp {
        if !out.iter().any(|t| t["name"] == m.def.name.as_str()) {
            out.push(json!({"name": m.def.name, "description": m.def.description, "input_schema": m.def.input_schema}));
        }
    }
    out
}

fn result_block(tool_use_id: &str, content: Option<&Vec<ContentBlock>>, is_error: bool) -> Value {
    json!({"type": "tool_result", "tool_use_id": tool_use_id, "content": content.map_or(&[][..], |c| c.as_slice()), "is_error": is_error})
}

/// The conversation as Messages API messages, rebuilt from the events.
fn messages(events: &Events) -> Vec<Value> {
    let mut out: Vec<(&str, Vec<Value>)> = Vec::new();
    let mut push = |role: &'static str, block: Value| match out.last_mut() {
        Some((r, blocks)) if *r == role => blocks.push(block),
        _ => out.push((role, vec![block])),
    };
    let text = |t: &str| vec![ContentBlock::text(t)];
    let mut open: Vec<&str> = Vec::new();
    for e in events {
        let Some(known) = e.known() else { continue };
        match known {
            KnownEvent::UserMessage(m) => {
                for b in &m.content {
                    push("user", json!(b));
                }
            }
            KnownEvent::AgentMessage(m) => {
                for b in &m.content {
                    push("assistant", json!(b));
                }
            }
            KnownEvent::AgentToolUse(t)
            | KnownEvent::AgentCustomToolUse(t)
            | KnownEvent::AgentMcpToolUse(t) => {
                let id = e.id.as_deref().unwrap_or_default();
                open.push(id);
                push(
                    "assistant",
                    json!({"type": "tool_use", "id": id, "name": t.name, "input": t.input}),
                );
            }
            KnownEvent::UserToolResult(_)
            | KnownEvent::AgentToolResult(_)
            | KnownEvent::UserCustomToolResult(_)
            | KnownEvent::AgentMcpToolResult(_) => {
                let (id, content, is_error) = match known {
                    KnownEvent::UserCustomToolResult(r) => {
                        (&r.custom_tool_use_id, &r.content, r.is_error)
                    }
                    KnownEvent::AgentMcpToolResult(r) => {
                        (&r.mcp_tool_use_id, &r.content, r.is_error)
                    }
                    KnownEvent::UserToolResult(r) | KnownEvent::AgentToolResult(r) => {
                        (&r.tool_use_id, &r.content, r.is_error)
                    }
                    _ => continue,
                };
                open.retain(|o| o != id);
                push(
                    "user",
                    result_block(id, content.as_ref(), is_error == Some(true)),
                );
            }
            KnownEvent::UserToolConfirmation(c) if c.result == Verdict::Deny => {
                open.retain(|o| *o != c.tool_use_id);
                let msg = c
                    .deny_message
                    .as_deref()
                    .unwrap_or("The user denied this tool call.");
                push("user", result_block(&c.tool_use_id, Some(&text(msg)), true));
            }
            KnownEvent::UserInterrupt(_) => {
                let interrupted = text("Interrupted by the user.");
                for id in std::mem::take(&mut open) {
                    push("user", result_block(id, Some(&interrupted), true));
                }
            }
            _ => {}
        }
    }
    out.into_iter()
        .map(|(role, mut blocks)| {
            // The API wants a user turn's tool results before its text.
            blocks.sort_by_key(|b| b["type"] != "tool_result");
            json!({"role": role, "content": blocks})
        })
        .collect()
}

/// How a tool call the model made is handled.
enum Call {
    /// A sandbox tool the agent has enabled, with its permission.
    Toolset(Value, Value),
    /// A custom tool the agent declared.
    Custom,
    /// A tool of one of the agent's MCP servers (named), with its
    /// permission.
    Mcp(String, Value, Value),
    /// Anything else (a disabled or server-side tool, an unknown name):
    /// refused here, never run by a worker.
    Refused,
}

/// What the agent's configuration says about a call to `name`.
fn classify(agent: &SessionAgent, mcp: &[McpTool], name: &str) -> Call {
    match sandbox_tools(agent).find(|c| c.name == name) {
        Some(c)
            if c.enabled == Some(true)
                && Tool::from_name(name).is_some_and(Tool::runs_in_sandbox) =>
        {
            let (perm, evaluation) = permission(c.permission_policy.map(|p| p.kind));
            Call::Toolset(perm, evaluation)
        }
        Some(_) => Call::Refused,
        None if agent
            .tools
            .iter()
            .any(|t| matches!(t, AgentTool::Custom(c) if c.name == name)) =>
        {
            Call::Custom
        }
        None => match mcp.iter().find(|m| m.def.name == name) {
            Some(m) => Call::Mcp(
                m.server.clone(),
                m.permission.0.clone(),
                m.permission.1.clone(),
            ),
            None => Call::Refused,
        },
    }
}

/// The permission a toolset policy gives a call.
pub(crate) fn permission(policy: Option<PermissionKind>) -> (Value, Value) {
    match policy {
        Some(PermissionKind::AlwaysAsk) => (json!("ask"), json!({"type": "always_ask"})),
        Some(PermissionKind::Auto) => (json!("allow"), json!({"type": "auto"})),
        _ => (json!("allow"), json!({"type": "always_allow"})),
    }
}

impl Agents {
    /// Takes or renews this node's claim on driving `session`.
    async fn claim_turn(&self, session: &str) -> bool {
        let now = sandstone_api::timefmt::now_us() / 1000;
        let ttl = CLAIM_TTL.as_millis() as i64;
        let claimed = self
            .sessions
            .store
            .claim_driver(session, self.notifier.origin(), now, now + ttl)
            .await;
        claimed.unwrap_or_else(|e| {
            tracing::warn!(session = %session, error = %e, "claiming the session's turn");
            false
        })
    }

    fn stop_driving(&self, session: &str) {
        let _ = self.sessions.with(session, |s| s.driving = false);
    }

    /// A turn starts: the session is running (announced once).
    async fn begin_turn(&self, session: &str) -> ApiResult<()> {
        let status = self
            .sessions
            .status(session)
            .ok_or_else(|| crate::error::ApiError::not_found("session", session))?;
        let Some(running) = status.begin_turn() else {
            return Ok(());
        };
        if self.sessions.set_status(session, running).await? {
            self.emit(session, json!({"type": "session.status_running"}))
                .await?;
        }
        Ok(())
    }

    async fn set_idle(&self, session: &str, stop_reason: Value) -> ApiResult<()> {
        self.sessions
            .update_doc(session, |d| {
                d.status = d.status.end_turn();
                Ok(())
            })
            .await?;
        self.emit(
            session,
            json!({"type": "session.status_idle", "stop_reason": stop_reason}),
        )
        .await
        .map(|_| ())
    }

    /// Persists `ev` at the end of the session's history.
    async fn emit(&self, session: &str, ev: Value) -> ApiResult<Arc<SessionEvent>> {
        self.sessions.emit(session, ev).await
    }

    /// Marks everything so far as part of a model request.
    async fn consume(&self, session: &str, upto: usize) -> ApiResult<()> {
        self.sessions.consume(session, upto).await
    }

    /// What the model is told of where its tools run: the working
    /// directory, the outputs directory, each skill (name, description,
    /// where its files are) and each memory store (where it is mounted,
    /// whether it is writable, what it holds), each file and repository.
    fn surroundings(&self, doc: &sandstone_agents_api::Session) -> String {
        let mut out = format!(
            "<environment>\nYour tools run in a sandbox of your own. The working directory is \
             {WORKDIR}; what you write there stays for the next turn. Put deliverables for \
             the user in {OUTPUTS_DIR}.\n"
        );
        let skills: Vec<String> = doc
            .agent
            .skills
            .iter()
            .filter_map(|r| {
                let v = self
                    .skills
                    .skill_version(&r.skill_id, r.version.as_deref().unwrap_or("latest"))
                    .ok()?;
                Some(format!(
                    "- {} ({WORKDIR}/skills/{}/SKILL.md): {}",
                    v.doc.name, v.doc.directory, v.doc.description
                ))
            })
            .collect();
        if !skills.is_empty() {
            out += "Skills (read a skill's SKILL.md before you use it):\n";
            out += &skills.join("\n");
            out += "\n";
        }
        let stores: Vec<String> = doc
            .resources
            .iter()
            .filter(|r| r.is_memory_store())
            .map(|r| {
                let access = match r.access {
                    Some(sandstone_agents_api::Access::ReadOnly) => "read-only",
                    _ => "read-write",
                };
                let mut line = format!(
                    "- {} ({access}): {}",
                    r.mount_path.as_deref().unwrap_or_default(),
                    r.name.as_deref().unwrap_or_default()
                );
                for more in [&r.description, &r.instructions].into_iter().flatten() {
                    if !more.is_empty() {
                        line += &format!(". {more}");
                    }
                }
                line
            })
            .collect();
        if !stores.is_empty() {
            out += "Memory stores, mounted as directories of files:\n";
            out += &stores.join("\n");
            out += "\n";
        }
        let mounted: Vec<String> = doc
            .resources
            .iter()
            .filter_map(|r| match r.kind.as_str() {
                SessionResource::FILE => Some(format!(
                    "- {} (read-only): file {}",
                    r.mount_path.as_deref()?,
                    r.file_id.as_deref()?
                )),
                SessionResource::GITHUB_REPOSITORY => Some(format!(
                    "- {}: a clone of {}",
                    r.mount_path.as_deref()?,
                    r.url.as_deref()?
                )),
                _ => None,
            })
            .collect();
        if !mounted.is_empty() {
            out += "Files and repositories of this session:\n";
            out += &mounted.join("\n");
            out += "\n";
        }
        out + "</environment>"
    }

    /// One model request and what it produces.
    async fn model_turn(&self, session: &str) -> ApiResult<()> {
        self.begin_turn(session).await?;
        let events = self.sessions.events(session);
        let doc = self.sessions.session(session)?;
        let surroundings = self.surroundings(&doc);
        let mcp = self.mcp_tools(&doc).await?;
        let agent = &doc.agent;
        let mut body = json!({
            "model": agent.model.id,
            "max_tokens": self.config.max_tokens,
            "messages": messages(&events),
            "stream": true,
            // The agent's own prompt, then where it runs, as the official
            // harness tells the model.
            "system": match &agent.system {
                Some(system) => format!("{system}\n\n{surroundings}"),
                None => surroundings,
            },
        });
        let tools = model_tools(agent, &mcp);
        if !tools.is_empty() {
            body["tools"] = json!(tools);
        }
        let start = self
            .emit(session, json!({"type": "span.model_request_start"}))
            .await?;
        let Ok(cancel) = self.sessions.with(session, |s| s.cancel.clone()) else {
            return Ok(());
        };
        let mut attempt = 0;
        // An interrupt ends the turn: noticed by the wake-up while waiting,
        // or by the history (a wake-up can come before anyone waits).
        let answer = loop {
            let result = tokio::select! {
                r = model::call(&self.http, &self.config, &body) => Some(r),
                _ = cancel.notified() => None,
            };
            let result = match result {
                Some(r) if !self.interrupted_after(session, events.len()) => r,
                _ => return self.end_interrupted(session, &start).await,
            };
            match result {
                Ok(a) => break a,
                Err(e) if e.retryable() && attempt < MODEL_RETRIES => {
                    attempt += 1;
                    self.emit(session, json!({"type": "session.error", "error": {"type": e.kind(), "message": e.message, "retry_status": {"type": "retrying"}}})).await?;
                    self.emit(session, json!({"type": "session.status_rescheduled"}))
                        .await?;
                    let slept = tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250 << attempt)) => true,
                        _ = cancel.notified() => false,
                    };
                    if !slept || self.interrupted_after(session, events.len()) {
                        return self.end_interrupted(session, &start).await;
                    }
                }
                Err(e) => {
                    self.consume(session, events.len()).await?;
                    self.emit(session, json!({"type": "span.model_request_end", "model_request_start_id": start.id, "is_error": true, "model_usage": {}})).await?;
                    self.emit(session, json!({"type": "session.error", "error": {"type": e.kind(), "message": e.message, "retry_status": {"type": "exhausted"}}})).await?;
                    return self
                        .set_idle(session, json!({"type": "retries_exhausted"}))
                        .await;
                }
            }
        };
        self.consume(session, events.len()).await?;
        self.record_answer(&doc, &mcp, &start, answer).await
    }

    /// Whether a `user.interrupt` arrived after the first `n` events.
    fn interrupted_after(&self, session: &str, n: usize) -> bool {
        self.sessions
            .events(session)
            .iter()
            .skip(n)
            .any(|e| is_interrupt(e))
    }

    /// Ends a turn the user interrupted: no answer is recorded.
    async fn end_interrupted(&self, session: &str, start: &SessionEvent) -> ApiResult<()> {
        self.consume(session, self.sessions.event_count(session))
            .await?;
        self.emit(session, json!({"type": "span.model_request_end", "model_request_start_id": start.id, "is_error": true, "model_usage": {}})).await?;
        self.set_idle(session, json!({"type": "end_turn"})).await
    }

    async fn record_answer(
        &self,
        doc: &Session,
        mcp: &[McpTool],
        start: &SessionEvent,
        a: model::Answer,
    ) -> ApiResult<()> {
        let (session, agent) = (doc.id.as_str(), &doc.agent);
        let tokens = |k: &str| a.usage.get(k).and_then(Value::as_u64).unwrap_or(0);
        let usage = SessionUsage {
            input_tokens: tokens("input_tokens"),
            output_tokens: tokens("output_tokens"),
            cache_read_input_tokens: tokens("cache_read_input_tokens"),
            cache_creation_input_tokens: tokens("cache_creation_input_tokens"),
            ..SessionUsage::default()
        };
        self.emit(session, json!({"type": "span.model_request_end", "model_request_start_id": start.id, "is_error": false, "model_usage": usage})).await?;
        self.sessions
            .update_doc(session, |d| {
                let total = &mut d.usage;
                total.input_tokens += usage.input_tokens;
                total.output_tokens += usage.output_tokens;
                total.cache_read_input_tokens += usage.cache_read_input_tokens;
                total.cache_creation_input_tokens += usage.cache_creation_input_tokens;
                Ok(())
            })
            .await?;
        let mut text: Vec<Value> = Vec::new();
        let mut calls = 0;
        for block in a.content {
            if let model::Block::Text(t) = &block {
                text.push(json!({"type": "text", "text": t}));
                continue;
            }
            if !text.is_empty() {
                self.emit(
                    session,
                    json!({"type": "agent.message", "content": std::mem::take(&mut text)}),
                )
                .await?;
            }
            let model::Block::ToolUse { name, input } = &block else {
                continue;
            };
            calls += 1;
            let name = name.as_str();
            match classify(agent, mcp, name) {
                Call::Toolset(perm, evaluation) => {
                    self.emit(session, json!({"type": "agent.tool_use", "name": name, "input": input, "evaluated_permission": perm, "evaluation": evaluation})).await?;
                }
                Call::Custom => {
                    self.emit(
                        session,
                        json!({"type": "agent.custom_tool_use", "name": name, "input": input}),
                    )
                    .await?;
                }
                Call::Mcp(server, perm, evaluation) => {
                    let allowed = perm == "allow";
                    let call = self.emit(session, json!({"type": "agent.mcp_tool_use", "name": name, "input": input, "mcp_server_name": server, "evaluated_permission": perm, "evaluation": evaluation})).await?;
                    // Run on the server now; one that asks waits for the
                    // user's confirmation (`run_confirmed_mcp`).
                    if allowed {
                        let id = call.id.clone().unwrap_or_default();
                        self.run_mcp(doc, &id, &server, name, input).await?;
                    }
                }
                Call::Refused => {
                    // Denied on the server: workers never run a call the
                    // server denied, and the model learns why.
                    let call = self.emit(session, json!({"type": "agent.tool_use", "name": name, "input": input, "evaluated_permission": "deny", "evaluation": {"type": "always_allow"}})).await?;
                    let why = format!("tool {name} is not available to this agent");
                    self.emit(session, json!({"type": "agent.tool_result", "tool_use_id": call.id, "is_error": true, "content": [{"type": "text", "text": why}]})).await?;
                }
            }
        }
        if !text.is_empty() {
            self.emit(session, json!({"type": "agent.message", "content": text}))
                .await?;
        }
        if calls == 0 {
            self.set_idle(session, json!({"type": "end_turn"})).await?;
        }
        Ok(())
    }
}
