//! A sandbox's durable log: the record layout PID 1 writes and the daemon
//! reads, and the entries `GET /sandboxes/{id}/observability/logs` answers.
//!
//! The log is a directory of segments named `<sequence, 16 hex>.log`, each
//! a run of records: `u32 length` (of what follows), `u64 unix ms`, `u8
//! kind`, `u8 context id length`, the id, the data (all little-endian).
//! Sequences only grow, so a position (segment, offset) orders records
//! across the segments the budget removes.

use serde::{Deserialize, Serialize};

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Stdout,
    Stderr,
    Pty,
    /// The context ended; the data is its exit code in decimal (empty when
    /// unknown).
    Exit,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Stdout => 0,
            Kind::Stderr => 1,
            Kind::Pty => 2,
            Kind::Exit => 3,
        }
    }

    fn of(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Stdout,
            1 => Kind::Stderr,
            2 => Kind::Pty,
            3 => Kind::Exit,
            _ => return None,
        })
    }
}

const HEAD: usize = 4 + 8 + 1 + 1;

/// One record, ready to append.
pub fn encode(at_ms: u64, kind: Kind, context: &str, data: &[u8]) -> Vec<u8> {
    let mut out = header(at_ms, kind, context, data.len());
    out.extend_from_slice(data);
    out
}

/// A record's bytes before its data (`data_len` bytes of it), for a
/// writer that appends the data from where it already is.
pub fn header(at_ms: u64, kind: Kind, context: &str, data_len: usize) -> Vec<u8> {
    // Context ids are at most 255 bytes (the API checks them); a longer
    // one is cut rather than corrupting the record.
    let id = &context.as_bytes()[..context.len().min(255)];
    let len = 8 + 1 + 1 + id.len() + data_len;
    let mut out = Vec::with_capacity(4 + len - data_len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&at_ms.to_le_bytes());
    out.push(kind.byte());
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out
}

/// A record read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<'a> {
    pub at_ms: u64,
    pub kind: Kind,
    pub context: &'a str,
    pub data: &'a [u8],
    /// Where the next record starts.
    pub next: usize,
}

/// The record at `offset` of a segment's bytes; `None` at the end or at a
/// torn last record (one being written, or cut by a crash).
pub fn decode(buf: &[u8], offset: usize) -> Option<Record<'_>> {
    let rest = buf.get(offset..)?;
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let body = rest.get(4..4 + len)?;
    if len < HEAD - 4 {
        return None;
    }
    let at_ms = u64::from_le_bytes(body[..8].try_into().ok()?);
    let kind = Kind::of(body[8])?;
    let id_len = body[9] as usize;
    let context = std::str::from_utf8(body.get(10..10 + id_len)?).ok()?;
    Some(Record {
        at_ms,
        kind,
        context,
        data: &body[10 + id_len..],
        next: offset + 4 + len,
    })
}

pub fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.log")
}

pub fn segment_seq(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".log")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// A place in the log: a record's segment and offset, and a line in it.
/// Written as `<seq>-<offset>-<line>` (opaque to clients); the default
/// is the start of the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub seq: u64,
    pub offset: u64,
    pub line: u32,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}-{:x}-{:x}", self.seq, self.offset, self.line)
    }
}

impl std::str::FromStr for Cursor {
    type Err = ();

    fn from_str(s: &str) -> Result<Cursor, ()> {
        let mut parts = s.split('-').map(|p| u64::from_str_radix(p, 16).ok());
        let (Some(Some(seq)), Some(Some(offset)), Some(Some(line)), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(());
        };
        Ok(Cursor {
            seq,
            offset,
            line: u32::try_from(line).map_err(|_| ())?,
        })
    }
}

/// Sandbox0's `SandboxObservabilityLogStream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
    Pty,
}

/// Sandbox0's `SandboxObservabilityLogEntry`: one line of a context's
/// output (or, with `attributes.event = "exit"`, its end).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub team_id: String,
    pub sandbox_id: String,
    pub region_id: String,
    pub cluster_id: String,
    pub context_id: String,
    pub occurred_at: String,
    pub ingested_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<LogStream>,
    pub message: String,
    pub cursor: String,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// Sandbox0's `SandboxObservabilityLogsResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogPage {
    pub logs: Vec<LogEntry>,
    /// Where to go on from (after the last entry): also the place to
    /// resume a watch.
    pub next_cursor: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_cursors_round_trip() {
        let mut seg = encode(7, Kind::Stdout, "ctx-1", b"hello\n");
        seg.extend(encode(8, Kind::Exit, "ctx-1", b"0"));
        let a = decode(&seg, 0).unwrap();
        assert_eq!(
            (a.at_ms, a.kind, a.context, a.data),
            (7, Kind::Stdout, "ctx-1", &b"hello\n"[..])
        );
        let b = decode(&seg, a.next).unwrap();
        assert_eq!((b.kind, b.data), (Kind::Exit, &b"0"[..]));
        assert_eq!(decode(&seg, b.next), None);
        // A torn last record reads as the end.
        assert_eq!(decode(&seg[..seg.len() - 1], a.next), None);
        assert_eq!(segment_seq(&segment_name(42)), Some(42));
        assert_eq!(segment_seq("x.log"), None);
        let c = Cursor {
            seq: 3,
            offset: 4096,
            line: 2,
        };
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
        assert!("3-4".parse::<Cursor>().is_err());
        assert!("3-4-5-6".parse::<Cursor>().is_err());
    }
}
