//! The host firewall for sandbox traffic, as one nftables table per daemon,
//! replaced atomically in one `nft` batch. Interfaces are matched by the
//! daemon's prefix, so adding a sandbox changes no rule and removing one
//! leaves none behind. Nothing from a sandbox is forwarded (`ip_forward`
//! stays 0); TCP goes to the egress proxy, DNS to the policy resolver, and
//! everything else from a sandbox is counted and dropped. The proxy and
//! resolver ports refuse everyone but sandboxes.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, Clone)]
pub struct Firewall {
    /// nftables table name (per daemon).
    pub table: String,
    /// Host-side interface name prefix of this daemon's sandboxes.
    pub prefix: String,
    pub proxy_port: u16,
    pub dns_port: u16,
}

/// Why the firewall table could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("run nft: {0}")]
    Run(std::io::Error),
    /// Feeding nft its script or reading its answer.
    #[error("{0}")]
    Pipe(std::io::Error),
    #[error("nft: {0}")]
    Refused(String),
    #[error("nft is not installed (apt-get install nftables)")]
    NotInstalled,
}

/// Runs an nft script; `Ok(None)`: nft is not installed.
fn try_nft(script: &str) -> Result<Option<()>, FirewallError> {
    let mut child = match Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FirewallError::Run(e)),
    };
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(FirewallError::Pipe)?;
    let out = child.wait_with_output().map_err(FirewallError::Pipe)?;
    if !out.status.success() {
        return Err(FirewallError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(Some(()))
}

fn nft(script: &str) -> Result<(), FirewallError> {
    try_nft(script)?.ok_or(FirewallError::NotInstalled)
}

impl Firewall {
    /// The ruleset, replacing any table a crashed daemon left. Dropped
    /// sandbox packets are also logged (rate-limited) with the daemon's
    /// prefix, which [`crate::drops`] turns into audit records.
    pub fn ruleset(&self) -> String {
        let Firewall {
            table,
            prefix,
            proxy_port,
            dns_port,
        } = self;
        let lines = [
            format!("table inet {table} {{}}"),
            format!("delete table inet {table}"),
            format!("table inet {table} {{"),
            // Anything but TCP and DNS is logged (for the audit) and dropped
            // before routing, whatever its destination.
            "  chain screen {".into(),
            "    type filter hook prerouting priority raw; policy accept;".into(),
            format!("    iifname \"{prefix}*\" meta l4proto tcp return"),
            format!("    iifname \"{prefix}*\" udp dport 53 return"),
            format!(
                "    iifname \"{prefix}*\" limit rate 200/second log prefix \"{prefix} drop \" level info"
            ),
            format!("    iifname \"{prefix}*\" counter drop comment \"sandbox: not tcp or dns\""),
            "  }".into(),
            "  chain prerouting {".into(),
            "    type nat hook prerouting priority dstnat; policy accept;".into(),
            format!("    iifname \"{prefix}*\" meta l4proto tcp redirect to :{proxy_port}"),
            format!("    iifname \"{prefix}*\" udp dport 53 redirect to :{dns_port}"),
            "  }".into(),
            "  chain input {".into(),
            "    type filter hook input priority filter; policy accept;".into(),
            format!("    iifname \"{prefix}*\" tcp dport {proxy_port} accept"),
            format!("    iifname \"{prefix}*\" udp dport {dns_port} accept"),
            format!(
                "    iifname \"{prefix}*\" limit rate 200/second log prefix \"{prefix} drop \" level info"
            ),
            format!("    iifname \"{prefix}*\" counter drop comment \"sandbox: not tcp or dns\""),
            format!("    tcp dport {proxy_port} counter drop comment \"proxy: sandboxes only\""),
            format!("    udp dport {dns_port} counter drop comment \"resolver: sandboxes only\""),
            "  }".into(),
            "  chain forward {".into(),
            "    type filter hook forward priority filter; policy accept;".into(),
            format!("    iifname \"{prefix}*\" counter drop"),
            format!("    oifname \"{prefix}*\" counter drop"),
            "  }".into(),
            "}".into(),
        ];
        lines.join("\n") + "\n"
    }

    pub fn install(&self) -> Result<(), FirewallError> {
        nft(&self.ruleset())
    }

    /// Deletes the table if there is one (without nft there is none).
    pub fn remove(&self) -> Result<(), FirewallError> {
        try_nft(&format!(
            "table inet {t} {{}}\ndelete table inet {t}\n",
            t = self.table
        ))
        .map(|_| ())
    }
}
