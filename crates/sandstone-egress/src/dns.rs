//! The policy DNS resolver: a sandbox's DNS (redirected here by the
//! firewall) is answered for names its policy allows — forwarded to the
//! upstream resolver — and NXDOMAIN for the rest; both are audited. The A
//! records it passes on teach the proxy which name an address stands for.

use crate::audit::{AuditEvent, EventKind, Verdict, now_ms};
use crate::state::Egress;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// The question of a DNS message: (lower-case name, type, end offset).
pub fn question(msg: &[u8]) -> Option<(String, u16, usize)> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) == 0 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // no compression in a question we accept
        }
        labels.push(
            std::str::from_utf8(msg.get(at..at + len)?)
                .ok()?
                .to_ascii_lowercase(),
        );
        at += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
    Some((labels.join("."), qtype, at + 4))
}

/// An NXDOMAIN answer to `query` (its id and question kept).
pub fn nxdomain(query: &[u8], question_end: usize) -> Vec<u8> {
    let mut r = query[..question_end.min(query.len())].to_vec();
    r[2] = 0x80 | (query[2] & 0x01); // QR, keep RD
    r[3] = 0x80 | 3; // RA, NXDOMAIN
    r[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
    r[4..6].copy_from_slice(&[0, 1]);
    r
}

/// Skips a (possibly compressed) name; returns the offset after it.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *msg.get(at)?;
        if len & 0xC0 == 0xC0 {
            return Some(at + 2);
        }
        if len == 0 {
            return Some(at + 1);
        }
        at += 1 + len as usize;
    }
    None
}

/// The A records of an answer, with the smallest TTL of its records.
pub fn answer_records(msg: &[u8]) -> (Vec<Ipv4Addr>, Option<u32>) {
    let parse = || -> Option<(Vec<Ipv4Addr>, Option<u32>)> {
        let (_, _, mut at) = question(msg)?;
        let answers = u16::from_be_bytes([msg[6], msg[7]]);
        let mut out = Vec::new();
        let mut ttl: Option<u32> = None;
        for _ in 0..answers {
            at = skip_name(msg, at)?;
            let kind = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
            let rec_ttl = u32::from_be_bytes(msg.get(at + 4..at + 8)?.try_into().ok()?);
            let len = u16::from_be_bytes([*msg.get(at + 8)?, *msg.get(at + 9)?]) as usize;
            let data = msg.get(at + 10..at + 10 + len)?;
            ttl = Some(ttl.map_or(rec_ttl, |t| t.min(rec_ttl)));
            if kind == 1 && len == 4 {
                out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
            }
            at += 10 + len;
        }
        Some((out, ttl))
    };
    parse().unwrap_or_default()
}

/// The A records of an answer.
pub fn a_records(msg: &[u8]) -> Vec<Ipv4Addr> {
    answer_records(msg).0
}

/// Answers by (name, type), kept for their TTL (clamped to 5 s..5 min;
/// negative answers 5 s).
#[derive(Default)]
pub struct Cache {
    entries: std::sync::Mutex<Answers>,
}

/// (name, type) → (the answer, when it expires).
type Answers = std::collections::HashMap<(String, u16), (Vec<u8>, Instant)>;

const CACHE_MAX: usize = 10_000;

impl Cache {
    /// A cached answer re-addressed to `query`'s id.
    pub fn get(&self, name: &str, qtype: u16, query: &[u8]) -> Option<Vec<u8>> {
        let entries = self.entries.lock().expect("lock poisoned");
        let (answer, until) = entries.get(&(name.to_string(), qtype))?;
        if Instant::now() >= *until {
            return None;
        }
        let mut a = answer.clone();
        a[..2].copy_from_slice(&query[..2]);
        Some(a)
    }

    pub fn put(&self, name: &str, qtype: u16, answer: &[u8]) {
        let ttl = answer_records(answer).1.unwrap_or(5).clamp(5, 300);
        let mut entries = self.entries.lock().expect("lock poisoned");
        if entries.len() >= CACHE_MAX {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= CACHE_MAX {
                entries.clear();
            }
        }
        let until = Instant::now() + Duration::from_secs(ttl as u64);
        entries.insert((name.to_string(), qtype), (answer.to_vec(), until));
    }
}

/// Builds an A query for `name`.
pub fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len().min(63) as u8);
        q.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Forwards `query` to the upstream resolver and returns its answer.
pub async fn forward(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let sock = UdpSocket::bind("0.0.0.0:0").await?;
    sock.send_to(query, upstream).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream DNS timed out")
        })??;
    buf.truncate(n);
    Ok(buf)
}

/// The proxy's own resolution of a name (A records) through the upstream.
pub async fn resolve(upstream: SocketAddr, name: &str) -> std::io::Result<Vec<Ipv4Addr>> {
    let mut id = [0u8; 2];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut id)?;
    let id = u16::from_ne_bytes(id);
    Ok(a_records(&forward(upstream, &a_query(id, name)).await?))
}

pub async fn serve(sock: UdpSocket, egress: Arc<Egress>) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (egress, sock) = (egress.clone(), sock.clone());
        tokio::spawn(async move { answer(&sock, peer, &query, &egress).await });
    }
}

async fn answer(sock: &UdpSocket, peer: SocketAddr, query: &[u8], egress: &Egress) {
    let Some(sandbox) = egress.sandbox(peer.ip()) else {
        return;
    };
    let Some((name, qtype, end)) = question(query) else {
        return;
    };
    // Over the limit the question is dropped; the client retries.
    let Ok(_slot) = sandbox.dns_in_flight.clone().try_acquire_owned() else {
        return;
    };
    let started = Instant::now();
    sandbox
        .counters
        .dns
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = sandbox.policy().decide_name(&egress.operator, &name);
    let mut reason = d.reason(&name);
    let cached = if d.allowed {
        egress.dns_cache.get(&name, qtype, query)
    } else {
        None
    };
    let reply = if let Some(r) = cached {
        for ip in a_records(&r) {
            sandbox.remember(IpAddr::V4(ip), &name);
        }
        r
    } else if d.allowed {
        match forward(egress.upstream_dns, query).await {
            Ok(r) => {
                for ip in a_records(&r) {
                    sandbox.remember(IpAddr::V4(ip), &name);
                }
                egress.dns_cache.put(&name, qtype, &r);
                r
            }
            Err(e) => {
                reason = format!("{reason}; upstream: {e}");
                return record(egress, &sandbox.id, &name, &d, reason, started);
            }
        }
    } else {
        nxdomain(query, end)
    };
    let _ = sock.send_to(&reply, peer).await;
    record(egress, &sandbox.id, &name, &d, reason, started);
}

fn record(
    egress: &Egress,
    id: &str,
    name: &str,
    d: &crate::policy::Decision,
    reason: String,
    started: Instant,
) {
    egress.audit.record(AuditEvent {
        sandbox_id: id.to_string(),
        time: now_ms(),
        kind: EventKind::Dns,
        dest_name: Some(name.to_string()),
        dest_ip: None,
        dest_port: 53,
        dialed: None,
        protocol: "dns".into(),
        decision: Verdict::of(d.allowed),
        rule: d.rule.clone(),
        reason,
        bytes_up: 0,
        bytes_down: 0,
        duration_ms: started.elapsed().as_millis() as u64,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_answers_and_nxdomain() {
        let q = a_query(0x1234, "Web.Test");
        assert_eq!(question(&q), Some(("web.test".into(), 1, q.len())));
        let nx = nxdomain(&q, q.len());
        assert_eq!(&nx[..2], &[0x12, 0x34]);
        assert_eq!(nx[3] & 0x0f, 3);
        // An answer with a compressed name pointing at the question.
        let mut a = q.clone();
        a[2] = 0x81;
        a[3] = 0x80;
        a[7] = 1;
        a.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 99, 0, 2]);
        assert_eq!(a_records(&a), vec![Ipv4Addr::new(10, 99, 0, 2)]);
        assert_eq!(answer_records(&a).1, Some(60));
        let cache = Cache::default();
        cache.put("web.test", 1, &a);
        let q2 = a_query(0x7777, "web.test");
        let hit = cache.get("web.test", 1, &q2).unwrap();
        assert_eq!(&hit[..2], &[0x77u8, 0x77][..]);
        assert_eq!(a_records(&hit), vec![Ipv4Addr::new(10, 99, 0, 2)]);
        assert!(cache.get("other.test", 1, &q2).is_none());
        assert!(question(&[0u8; 5]).is_none());
        assert!(
            a_records(&a[..a.len() - 3]).is_empty(),
            "truncated answers yield nothing"
        );
    }
}
