//! A streaming client for an Anthropic-compatible Messages API: sends one
//! request, reads the SSE answer into complete content blocks. The key is
//! sent only to the configured base URL and never appears in an error.

use serde::Deserialize;
use serde_json::{Map, Value};

/// A model's answer: its content blocks, why it stopped, and its `usage`
/// object as the API reported it.
pub struct Answer {
    pub content: Vec<Block>,
    pub stop_reason: String,
    pub usage: Map<String, Value>,
}

/// A content block of an answer: what the agent loop acts on.
#[derive(Debug, PartialEq)]
pub enum Block {
    Text(String),
    ToolUse {
        name: String,
        input: Value,
    },
    /// Anything else (thinking, server tools): not acted on.
    Other,
}

/// A block as `content_block_start` opens it; text and tool input arrive
/// in deltas.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        #[serde(default)]
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

/// One event of the Messages API stream; its shape is checked before use:
/// a malformed stream is an error for this turn, never a panic of the
/// session's driver.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        #[serde(default)]
        message: StartedMessage,
    },
    ContentBlockStart {
        content_block: Value,
    },
    ContentBlockDelta {
        #[serde(default)]
        index: usize,
        #[serde(default)]
        delta: Delta,
    },
    ContentBlockStop {
        #[serde(default)]
        index: usize,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDelta,
        #[serde(default)]
        usage: Option<Value>,
    },
    MessageStop,
    Error {
        #[serde(default)]
        error: ErrorObject,
    },
    #[serde(other)]
    Other,
}

#[derive(Default, Deserialize)]
struct StartedMessage {
    #[serde(default)]
    usage: Value,
}

#[derive(Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Delta {
    #[serde(rename = "text_delta")]
    Text {
        #[serde(default)]
        text: String,
    },
    #[serde(rename = "input_json_delta")]
    InputJson {
        #[serde(default)]
        partial_json: String,
    },
    #[default]
    #[serde(other)]
    Other,
}

#[derive(Default, Deserialize)]
struct MessageDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

/// The `error` of an error event or an error response.
#[derive(Default, Deserialize)]
struct ErrorObject {
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorObject,
}

#[derive(Debug)]
pub struct ModelError {
    pub status: Option<u16>,
    pub message: String,
}

impl ModelError {
    /// 429, 5xx, 529 and transport failures are worth retrying.
    pub fn retryable(&self) -> bool {
        self.status
            .is_none_or(|s| s == 408 || s == 409 || s == 429 || s >= 500)
    }

    /// The `session.error` type this failure is reported as.
    pub fn kind(&self) -> &'static str {
        match self.status {
            Some(529) => "model_overloaded_error",
            Some(429) => "model_rate_limited_error",
            _ => "model_request_failed_error",
        }
    }
}

fn failed(status: Option<u16>, message: impl Into<String>) -> ModelError {
    ModelError {
        status,
        message: message.into(),
    }
}

/// The Messages API's HTTP client, built on the first model call: building
/// it loads the host's trust store for HTTPS (about 1 MiB resident), which
/// a daemon whose agent loop never runs need not hold.
#[derive(Default)]
pub struct Http(std::sync::OnceLock<reqwest::Client>);

impl Http {
    fn get(&self) -> Result<&reqwest::Client, ModelError> {
        if let Some(c) = self.0.get() {
            return Ok(c);
        }
        // No redirects: the model key must not follow one to another host
        // (reqwest keeps custom headers across hosts).
        let c = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(300))
            .build()
            .map_err(|e| failed(None, format!("HTTP client: {e}")))?;
        // Two first calls at once may both build one; the first stored wins.
        Ok(self.0.get_or_init(|| c))
    }
}

pub async fn call(http: &Http, config: &crate::Config, body: &Value) -> Result<Answer, ModelError> {
    let http = http.get()?;
    let url = format!(
        "{}/v1/messages",
        config.model_base_url.trim_end_matches('/')
    );
    let mut req = http
        .post(&url)
        .header("anthropic-version", "2023-06-01")
        .json(&body);
    if let Some(k) = &config.model_api_key {
        req = req.header("x-api-key", k);
    }
    let resp = req.send().await.map_err(|e| {
        failed(
            None,
            format!("cannot reach the model API: {}", without_url(&e)),
        )
    })?;
    let status = resp.status().as_u16();
    if status != 200 {
        let text = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<ErrorBody>(&text)
            .ok()
            .and_then(|b| b.error.message)
            .unwrap_or_else(|| format!("HTTP {status}"));
        // The message reaches session events: a provider that echoes the
        // key it was sent must not publish it there.
        let msg = match &config.model_api_key {
            Some(k) if !k.is_empty() => msg.replace(k.as_str(), "[redacted]"),
            _ => msg,
        };
        return Err(failed(Some(status), msg));
    }
    read_stream(resp).await
}

/// reqwest's errors name the URL; the base URL is configuration, fine to
/// show, but keep messages short.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "");
    }
    s
}

/// Assembles the answer from the stream's events.
async fn read_stream(resp: reqwest::Response) -> Result<Answer, ModelError> {
    use futures_util::StreamExt;
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut answer = Answer {
        content: Vec::new(),
        stop_reason: String::new(),
        usage: Map::new(),
    };
    // Tool inputs arrive as JSON text in pieces.
    let mut partial: Vec<String> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| failed(None, format!("model stream: {}", without_url(&e))))?;
        buf.extend_from_slice(&chunk);
        while let Some(end) = find_frame_end(&buf) {
            let frame: Vec<u8> = buf.drain(..end).collect();
            let text = String::from_utf8_lossy(&frame);
            let data: String = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect::<Vec<_>>()
                .join("\n");
            if data.is_empty() {
                continue;
            }
            let ev: StreamEvent = serde_json::from_str(&data)
                .map_err(|e| failed(None, format!("model stream: bad event: {e}")))?;
            if apply(&mut answer, &mut partial, ev)? {
                return Ok(answer);
            }
        }
    }
    Err(failed(None, "model stream ended before message_stop"))
}

/// The end of the first complete SSE frame (after its blank line).
fn find_frame_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Applies one stream event; `true` at `message_stop`.
fn apply(a: &mut Answer, partial: &mut Vec<String>, ev: StreamEvent) -> Result<bool, ModelError> {
    match ev {
        StreamEvent::MessageStart { message } => {
            if let Value::Object(usage) = message.usage {
                a.usage = usage;
            }
        }
        StreamEvent::ContentBlockStart { content_block } => {
            if !content_block.is_object() {
                return Err(failed(
                    None,
                    "model stream: a content block that is not an object",
                ));
            }
            let block = match serde_json::from_value(content_block) {
                Ok(StartBlock::Text { text }) => Block::Text(text),
                Ok(StartBlock::ToolUse { name, input }) => Block::ToolUse { name, input },
                Ok(StartBlock::Other) => Block::Other,
                Err(e) => return Err(failed(None, format!("model stream: bad block: {e}"))),
            };
            a.content.push(block);
            partial.push(String::new());
        }
        StreamEvent::ContentBlockDelta { index, delta } => {
            let (Some(block), Some(json_text)) = (a.content.get_mut(index), partial.get_mut(index))
            else {
                return Err(failed(None, "model stream: a delta for an unknown block"));
            };
            match (delta, block) {
                (Delta::Text { text }, Block::Text(t)) => t.push_str(&text),
                (Delta::InputJson { partial_json }, _) => json_text.push_str(&partial_json),
                _ => {}
            }
        }
        StreamEvent::ContentBlockStop { index } => {
            if let (Some(Block::ToolUse { input, .. }), Some(text)) =
                (a.content.get_mut(index), partial.get(index))
                && !text.is_empty()
            {
                *input = serde_json::from_str(text).map_err(|e| {
                    failed(None, format!("model stream: tool input is not JSON: {e}"))
                })?;
            }
        }
        StreamEvent::MessageDelta { delta, usage } => {
            if let Some(r) = delta.stop_reason {
                a.stop_reason = r;
            }
            if let Some(Value::Object(o)) = usage {
                a.usage.extend(o);
            }
        }
        StreamEvent::MessageStop => return Ok(true),
        StreamEvent::Error { error } => {
            return Err(failed(
                Some(529),
                error
                    .message
                    .unwrap_or_else(|| "model stream error".to_string()),
            ));
        }
        StreamEvent::Other => {}
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(events: &[Value]) -> Result<Answer, ModelError> {
        let mut a = Answer {
            content: Vec::new(),
            stop_reason: String::new(),
            usage: Map::new(),
        };
        let mut partial = Vec::new();
        for ev in events {
            let ev = serde_json::from_value(ev.clone())
                .map_err(|e| failed(None, format!("model stream: bad event: {e}")))?;
            if apply(&mut a, &mut partial, ev)? {
                return Ok(a);
            }
        }
        Err(failed(None, "no message_stop"))
    }

    #[test]
    fn a_stream_is_assembled_and_malformed_ones_are_errors() {
        let a = run(&[
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 5}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "bash", "input": {}}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"comm"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "and\": \"ls\"}"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}}),
            json!({"type": "message_stop"}),
        ])
        .unwrap();
        assert_eq!(
            a.content[0],
            Block::ToolUse {
                name: "bash".into(),
                input: json!({"command": "ls"})
            }
        );
        assert_eq!(
            (a.stop_reason.as_str(), Value::Object(a.usage)),
            ("tool_use", json!({"input_tokens": 5, "output_tokens": 7}))
        );
        for bad in [
            vec![json!({"type": "content_block_start", "index": 0, "content_block": "text"})],
            vec![
                json!({"type": "content_block_delta", "index": 3, "delta": {"type": "text_delta", "text": "x"}}),
            ],
            vec![
                json!({"type": "message_start", "message": {"usage": 3}}),
                json!({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 1}}),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use"}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{"}}),
                json!({"type": "content_block_stop", "index": 0}),
            ],
        ] {
            assert!(run(&bad).is_err(), "{bad:?}");
        }
    }
}
