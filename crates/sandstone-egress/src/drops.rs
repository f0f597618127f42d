//! Audit records for packets the firewall drops (UDP other than DNS, ICMP,
//! anything not TCP): the drop rule logs them with the daemon's prefix to
//! the kernel log, which this reads from `/dev/kmsg`.

use crate::audit::{AuditEvent, EventKind, Verdict, now_ms};
use crate::state::Egress;
use std::io::{BufRead, Seek, SeekFrom};
use std::net::IpAddr;
use std::sync::Arc;

/// Fields of a netfilter log line (`IN=… SRC=… DST=… PROTO=… DPT=…`).
pub fn parse(line: &str, prefix: &str) -> Option<(IpAddr, IpAddr, String, u16)> {
    let tag = format!("{prefix} drop ");
    let rest = &line[line.find(&tag)? + tag.len()..];
    let field = |k: &str| {
        rest.split_whitespace()
            .find_map(|f| f.strip_prefix(k).map(str::to_string))
    };
    let src = field("SRC=")?.parse().ok()?;
    let dst = field("DST=")?.parse().ok()?;
    let proto = field("PROTO=").unwrap_or_else(|| "?".into()).to_lowercase();
    let port = field("DPT=").and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((src, dst, proto, port))
}

/// Follows the kernel log on a blocking thread until the process ends.
pub fn spawn(egress: Arc<Egress>, prefix: String) {
    let _ = std::thread::Builder::new().name("egress-drops".into()).spawn(move || {
        let Ok(mut kmsg) = std::fs::File::open("/dev/kmsg") else {
            tracing::warn!("cannot read /dev/kmsg: dropped packets are counted but not audited");
            return;
        };
        let _ = kmsg.seek(SeekFrom::End(0));
        let mut lines = std::io::BufReader::new(kmsg);
        let mut line = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {}
                // EPIPE: the ring buffer overwrote records we had not read.
                Err(_) => continue,
            }
            let Some((src, dst, proto, port)) = parse(&line, &prefix) else { continue };
            let Some(sandbox) = egress.sandbox(src) else { continue };
            egress.audit.record(AuditEvent {
                sandbox_id: sandbox.id.clone(),
                time: now_ms(),
                kind: EventKind::Drop,
                dest_name: None,
                dest_ip: Some(dst.to_string()),
                dest_port: port,
                dialed: None,
                protocol: proto.clone(),
                decision: Verdict::Deny,
                rule: Some("firewall".into()),
                reason: format!("{proto} to {dst}:{port} dropped: sandboxes may only use TCP (through the proxy) and DNS"),
                bytes_up: 0,
                bytes_down: 0,
                duration_ms: 0,
            });
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_netfilter_log_lines() {
        let line = "6,1234,5678,-;s4a37x drop IN=s4a37x3 OUT= MAC=aa SRC=10.213.0.14 DST=10.99.0.1 LEN=29 TOS=0x00 PROTO=UDP SPT=40000 DPT=9999 LEN=9";
        let (src, dst, proto, port) = super::parse(line, "s4a37x").unwrap();
        assert_eq!(
            (src.to_string(), dst.to_string(), proto.as_str(), port),
            ("10.213.0.14".into(), "10.99.0.1".into(), "udp", 9999)
        );
        assert!(super::parse(line, "s0000x").is_none());
        let icmp = "6,1,2,-;s4a37x drop IN=s4a37x3 OUT= SRC=10.213.0.14 DST=10.99.0.1 PROTO=ICMP TYPE=8 CODE=0";
        assert_eq!(super::parse(icmp, "s4a37x").unwrap().2, "icmp");
    }
}
