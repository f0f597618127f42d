//! Server-sent events as the official SDKs read them: frames separated by a
//! blank line; `event:` names the type and `data:` lines carry JSON. A frame
//! without an `event:` line is dropped, as the Python SDK drops it.

use futures_util::StreamExt;
use sandstone_agents_api::SessionEvent;

/// Reads frames from a streaming response.
pub struct SseReader {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no frame end: a long frame
    /// arriving in many chunks is scanned once, not once per chunk.
    scanned: usize,
}

/// Largest frame accepted; a peer sending more is broken or hostile.
const MAX_FRAME: usize = 16 << 20;

impl SseReader {
    pub fn new(resp: reqwest::Response) -> SseReader {
        SseReader {
            body: resp.bytes_stream().boxed(),
            buf: Vec::new(),
            scanned: 0,
        }
    }

    /// The next event; `None` when the stream ended or broke.
    pub async fn next(&mut self) -> Option<SessionEvent> {
        loop {
            if let Some(frame) = take_frame(&mut self.buf, self.scanned) {
                self.scanned = 0;
                if let Some(v) = parse_frame(&frame) {
                    return Some(v);
                }
                continue;
            }
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_FRAME {
                return None;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }
}

/// Cuts the first complete frame (up to a blank line) off `buf`, looking
/// from just before `from` (a separator may straddle it). Works on bytes so
/// a character split across chunks is never mangled.
fn take_frame(buf: &mut Vec<u8>, from: usize) -> Option<String> {
    let start = from.saturating_sub(3);
    let find = |pat: &[u8]| {
        buf[start..]
            .windows(pat.len())
            .position(|w| w == pat)
            .map(|p| p + start)
    };
    let (end, sep) = [(find(b"\n\n"), 2), (find(b"\r\n\r\n"), 4)]
        .into_iter()
        .filter_map(|(at, len)| at.map(|a| (a, len)))
        .min()?;
    let frame = String::from_utf8_lossy(&buf[..end]).replace('\r', "");
    buf.drain(..end + sep);
    Some(frame)
}

/// A frame's event, if it names one and carries an event object (one that
/// does not parse is dropped, as a frame without data is).
fn parse_frame(frame: &str) -> Option<SessionEvent> {
    let mut event = None;
    let mut data = String::new();
    for line in frame.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    let event = event?;
    if event == "ping" || data.is_empty() {
        return None;
    }
    match serde_json::from_str::<SessionEvent>(&data) {
        Ok(ev) => Some(ev),
        Err(e) => {
            tracing::debug!(event, error = %e, "stream event not understood; dropped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_on_blank_lines_and_need_an_event_line() {
        let mut buf =
            b"event: agent.tool_use\r\ndata: {\"type\":\"x\",\"id\":\"a\"}\r\n\r\ndata: {\"type\":\"x\",\"id\":\"b\"}\n\nevent: ping\ndata: {}\n\nevent: x\ndata: {\"id\""
                .to_vec();
        let f1 = take_frame(&mut buf, 0).unwrap();
        assert_eq!(parse_frame(&f1).unwrap().id.as_deref(), Some("a"));
        let f2 = take_frame(&mut buf, 0).unwrap();
        assert!(parse_frame(&f2).is_none(), "no event line: dropped");
        let f3 = take_frame(&mut buf, 0).unwrap();
        assert!(parse_frame(&f3).is_none(), "pings carry no event");
        assert!(take_frame(&mut buf, 0).is_none(), "incomplete frame waits");
        let mut split = b"event: a\ndata: {}\r\n\r".to_vec();
        assert!(take_frame(&mut split, 0).is_none());
        let scanned = split.len();
        split.push(b'\n');
        assert!(
            take_frame(&mut split, scanned).is_some(),
            "a separator across chunks"
        );
        assert_eq!(buf, b"event: x\ndata: {\"id\"");
    }
}
