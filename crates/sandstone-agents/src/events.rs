//! Session events that clients and workers send: validated (a 400 naming
//! the field), checked against the session's history, appended in order,
//! and the session's turn woken. Emitting, listing and streaming events is
//! the sessions component's.

use crate::Agents;
use crate::error::{ApiError, ApiResult};
use crate::turn::{answer_to, denied};
use sandstone_agents_api::{EvaluatedPermission, EventType, KnownEvent, SessionEvent};
use serde_json::Value;
use std::sync::Arc;

const SENDABLE: [&str; 5] = [
    "user.message",
    "user.interrupt",
    "user.tool_confirmation",
    "user.custom_tool_result",
    "user.tool_result",
];

fn content_blocks(v: &Value, at: &str, required: bool) -> ApiResult<()> {
    let blocks = match v {
        Value::Null if !required => return Ok(()),
        Value::Array(b) if !(required && b.is_empty()) => b,
        _ => {
            return Err(ApiError::invalid(format!(
                "{at}: an array of content blocks"
            )));
        }
    };
    for (i, b) in blocks.iter().enumerate() {
        match b["type"].as_str() {
            Some("text") if b["text"].is_string() => {}
            Some("text") => {
                return Err(ApiError::invalid(format!(
                    "{at}[{i}].text: required, a string"
                )));
            }
            Some("image" | "document" | "search_result")
                if b["source"].is_object() || b["type"] == "search_result" => {}
            Some("redacted") => {
                return Err(ApiError::invalid(format!(
                    "{at}[{i}]: redacted blocks cannot be sent"
                )));
            }
            _ => {
                return Err(ApiError::invalid(format!(
                    "{at}[{i}].type: text, image or document"
                )));
            }
        }
    }
    Ok(())
}

fn id_field(e: &Value, name: &str, at: &str) -> ApiResult<()> {
    match e[name].as_str() {
        Some(s) if !s.is_empty() => Ok(()),
        _ => Err(ApiError::invalid(format!(
            "{at}.{name}: required, an event id"
        ))),
    }
}

/// Checks one sent event's fields.
fn validate(e: &Value, at: &str) -> ApiResult<SessionEvent> {
    let kind = e["type"].as_str().unwrap_or_default();
    match kind {
        "user.message" => content_blocks(&e["content"], &format!("{at}.content"), true)?,
        "user.interrupt" => {}
        "user.tool_confirmation" => {
            id_field(e, "tool_use_id", at)?;
            if !matches!(e["result"].as_str(), Some("allow" | "deny")) {
                return Err(ApiError::invalid(format!("{at}.result: allow or deny")));
            }
            if !e["deny_message"].is_null() && e["result"] != "deny" {
                return Err(ApiError::invalid(format!(
                    "{at}.deny_message: only with result deny"
                )));
            }
        }
        "user.custom_tool_result" | "user.tool_result" => {
            let key = if kind == "user.tool_result" {
                "tool_use_id"
            } else {
                "custom_tool_use_id"
            };
            id_field(e, key, at)?;
            content_blocks(&e["content"], &format!("{at}.content"), false)?;
            if !e["is_error"].is_null() && !e["is_error"].is_boolean() {
                return Err(ApiError::invalid(format!("{at}.is_error: a boolean")));
            }
        }
        _ => {
            return Err(ApiError::invalid(format!(
                "{at}.type: one of {}",
                SENDABLE.join(", ")
            )));
        }
    }
    let mut clean: SessionEvent =
        crate::validate::body(e).map_err(|err| ApiError::invalid(format!("{at}.{err}")))?;
    clean.id = None;
    clean.processed_at = None;
    Ok(clean)
}

/// Validates a list of sent events (all or nothing).
pub fn validate_all(v: &Value, field: &str, initial: bool) -> ApiResult<Vec<SessionEvent>> {
    let list = match v {
        Value::Null if initial => return Ok(Vec::new()),
        Value::Array(l) if !l.is_empty() && l.len() <= 50 => l,
        _ => {
            return Err(ApiError::invalid(format!(
                "{field}: an array of 1 to 50 events"
            )));
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            let at = format!("{field}[{i}]");
            if initial && e["type"] != "user.message" {
                return Err(ApiError::invalid(format!(
                    "{at}.type: initial events are user.message"
                )));
            }
            validate(e, &at)
        })
        .collect()
}

/// What a sent result or confirmation refers to, checked against the
/// session's history: it must name a tool call that is still open.
fn check_reference(events: &[Arc<SessionEvent>], e: &SessionEvent, at: &str) -> ApiResult<()> {
    let Some(sent) = e.known() else {
        return Ok(());
    };
    let answers = sent.event_type();
    let (key, uses): (&str, &[EventType]) = match answers {
        EventType::UserToolResult => ("tool_use_id", &[EventType::AgentToolUse]),
        EventType::UserCustomToolResult => ("custom_tool_use_id", &[EventType::AgentCustomToolUse]),
        EventType::UserToolConfirmation => (
            "tool_use_id",
            &[EventType::AgentToolUse, EventType::AgentMcpToolUse],
        ),
        _ => return Ok(()),
    };
    let id = answer_to(sent).unwrap_or_default();
    let call = events
        .iter()
        .filter(|x| x.id.as_deref() == Some(id))
        .find_map(|x| x.known().filter(|k| uses.contains(&k.event_type())))
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "{at}.{key}: no {} event {id} in this session",
                uses[0]
            ))
        })?;
    let answered = events
        .iter()
        .filter_map(|x| x.known())
        .any(|k| k.event_type() == answers && answer_to(k) == Some(id));
    if answered {
        return Err(ApiError::conflict(format!(
            "{at}.{key}: {id} already has a {answers}"
        )));
    }
    let asks = matches!(call, KnownEvent::AgentToolUse(t) | KnownEvent::AgentMcpToolUse(t)
        if t.evaluated_permission == Some(EvaluatedPermission::Ask));
    if answers == EventType::UserToolConfirmation && !asks {
        return Err(ApiError::invalid(format!(
            "{at}.tool_use_id: {id} does not wait for a confirmation"
        )));
    }
    if answers == EventType::UserToolResult && denied(events, id) {
        return Err(ApiError::conflict(format!(
            "{at}.tool_use_id: {id} was denied"
        )));
    }
    Ok(())
}

impl Agents {
    /// Appends events a client or worker sent, after checking them
    /// against the session's state; wakes the session's turn. The check and
    /// the appends hold the session's append lock: two results for one
    /// call cannot both pass.
    pub(crate) async fn append_user_events(
        self: &Arc<Self>,
        session: &str,
        events: Vec<SessionEvent>,
    ) -> ApiResult<Vec<SessionEvent>> {
        let sessions = &self.sessions;
        let appends = sessions.appends_of(session)?;
        let held = appends.lock().await;
        sessions.with(session, |s| {
            if s.doc.is_over() {
                return Err(ApiError::invalid(format!(
                    "session {session} is terminated"
                )));
            }
            let mut seen: Vec<Arc<SessionEvent>> = s.events.clone();
            for (i, e) in events.iter().enumerate() {
                check_reference(&seen, e, &format!("events[{i}]"))?;
                let mut placed = e.clone();
                placed.id = Some(format!("pending-{i}"));
                seen.push(Arc::new(placed));
            }
            Ok(())
        })??;
        let mut out = Vec::new();
        let mut message = false;
        for e in events {
            match e.known() {
                Some(KnownEvent::UserMessage(_)) => message = true,
                Some(KnownEvent::UserInterrupt(_)) => sessions.interrupt(session),
                _ => {}
            }
            let ev = sessions.emit_locked(session, e, true).await?;
            out.push((*ev).clone());
        }
        drop(held);
        if message {
            let env = sessions.environment(session).unwrap_or_default();
            self.queue_work(&env, session).await?;
        }
        crate::turn::drive(self.clone(), session);
        Ok(out)
    }
}
