//! `sandstone policy …`, `sandstone audit` and the `--allow`/`--deny` flags
//! of `sandstone create`: network policies built from short targets
//! (a preset, a domain, a CIDR, each with an optional `:port`).

use crate::{Cli, client, print_json};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use sandstone_egress::policy::{Action, PortRange, TrafficRule};
use sandstone_egress::{NetworkPolicy, Preset};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Print the policy (JSON, presets expanded).
    Get { id: String },
    /// Replace the policy: from a JSON file, or built from flags
    /// (`--allow python --allow api.github.com:443 --allow 10.0.0.0/8`).
    Set {
        id: String,
        #[arg(long, conflicts_with_all = ["allow", "deny", "mode"])]
        file: Option<PathBuf>,
        /// allow-all or block-all (default block-all).
        #[arg(long)]
        mode: Option<String>,
        /// A preset (python, node, rust, go, ruby, debian, github, anthropic), a
        /// domain (`*.` wildcards) or a CIDR, with an optional `:port`;
        /// repeatable.
        #[arg(long)]
        allow: Vec<String>,
        /// Like --allow, checked before the allows; repeatable.
        #[arg(long)]
        deny: Vec<String>,
    },
    /// Add allow rules to the current policy, keeping the rest (what
    /// `sandstone audit --denied` suggests).
    Allow {
        id: String,
        /// Presets, domains or CIDRs, each with an optional `:port`.
        #[arg(required = true)]
        targets: Vec<String>,
    },
}

/// One traffic rule for a command-line target.
pub fn flag_rule(action: Action, target: &str) -> Result<TrafficRule> {
    let verb = match action {
        Action::Allow => "allow",
        Action::Deny => "deny",
    };
    let mut rule = TrafficRule::new(format!("{verb}-{target}"), action);
    if let Some(p) = Preset::from_name(target) {
        rule.name = p.name().into();
        rule.preset = Some(p);
        return Ok(rule);
    }
    // A bare IPv6 address or CIDR has colons of its own: it takes no port.
    let is_ip = |s: &str| {
        s.split('/')
            .next()
            .is_some_and(|a| a.parse::<std::net::IpAddr>().is_ok())
    };
    let (dest, port) = match target.rsplit_once(':') {
        Some((d, p)) if !is_ip(target) => {
            let port: u16 = p
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .with_context(|| format!("{target:?}: {p:?} is not a port"))?;
            (d, Some(port))
        }
        _ => (target, None),
    };
    if is_ip(dest) {
        rule.cidrs.push(dest.into());
    } else if dest.contains('.') {
        rule.domains.push(dest.into());
    } else {
        let known: Vec<_> = Preset::ALL.iter().map(|p| p.name()).collect();
        bail!(
            "{target:?} is neither a preset ({}) nor a domain or CIDR",
            known.join(", ")
        );
    }
    rule.ports = port.map(PortRange::tcp).into_iter().collect();
    Ok(rule)
}

/// A `block-all` policy (or `mode`) with the deny rules first.
pub fn policy_from_flags(
    mode: Option<&str>,
    allow: &[String],
    deny: &[String],
) -> Result<serde_json::Value> {
    let rules = deny
        .iter()
        .map(|t| flag_rule(Action::Deny, t))
        .chain(allow.iter().map(|t| flag_rule(Action::Allow, t)))
        .collect::<Result<Vec<_>>>()?;
    Ok(serde_json::json!({
        "mode": mode.unwrap_or("block-all"),
        "egress": {"trafficRules": rules},
    }))
}

pub async fn run(cli: &Cli, cmd: &PolicyCmd) -> Result<()> {
    let c = client(cli)?;
    match cmd {
        PolicyCmd::Get { id } => print_json(&c.network(id).await?),
        PolicyCmd::Set {
            id,
            file,
            mode,
            allow,
            deny,
        } => {
            let policy = match file {
                Some(f) => serde_json::from_slice(
                    &std::fs::read(f).with_context(|| format!("read {}", f.display()))?,
                )
                .with_context(|| format!("{} is not JSON", f.display()))?,
                None => policy_from_flags(mode.as_deref(), allow, deny)?,
            };
            print_json(&c.set_network(id, policy).await?)
        }
        PolicyCmd::Allow { id, targets } => {
            let mut policy: NetworkPolicy = serde_json::from_value(c.network(id).await?)
                .context("the daemon returned a policy this CLI cannot read")?;
            for t in targets {
                let rule = flag_rule(Action::Allow, t)?;
                // Replace a rule of the same name (allowing twice is a no-op).
                policy.egress.traffic_rules.retain(|r| r.name != rule.name);
                policy.egress.traffic_rules.push(rule);
            }
            print_json(&c.set_network(id, serde_json::to_value(&policy)?).await?)
        }
    }
}

/// Prints a sandbox's egress audit records, with, for each denial, the
/// change that would allow it (the daemon computes it against the current
/// policy and the operator's rules).
pub async fn audit(cli: &Cli, id: &str, follow: bool, denied: bool) -> Result<()> {
    let c = client(cli)?;
    let mut after = 0;
    loop {
        let page = c.events(id, after, denied).await?;
        for event in page.events {
            after = event.producer.sequence.unwrap_or(after);
            if cli.json {
                println!("{}", serde_json::to_string(&event)?);
                continue;
            }
            let e = &event.attributes;
            println!(
                "{:<6} {:<5} {:<10} {}  {}",
                e["decision"].as_str().unwrap_or(""),
                e["protocol"].as_str().unwrap_or(""),
                e["kind"].as_str().unwrap_or(""),
                audit_destination(e),
                e["reason"].as_str().unwrap_or("")
            );
            if let Some(hint) = e["allow_hint"]["message"].as_str() {
                println!("       to allow: {hint}");
            }
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Where an audited connection went: the name the sandbox gave, the
/// address it connected to, and where the proxy connected when that
/// differs (`web.test (10.0.0.9:80) via 93.184.216.34:80`).
fn audit_destination(e: &serde_json::Value) -> String {
    let port = &e["dest_port"];
    let addr = e["dest_ip"].as_str().map(|ip| format!("{ip}:{port}"));
    let mut out = match (e["dest_name"].as_str(), &addr) {
        (Some(name), Some(addr)) => format!("{name} ({addr})"),
        (Some(name), None) => format!("{name}:{port}"),
        (None, Some(addr)) => addr.clone(),
        (None, None) => format!("?:{port}"),
    };
    if let Some(dialed) = e["dialed"].as_str().filter(|d| Some(*d) != addr.as_deref()) {
        out += &format!(" via {dialed}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_become_preset_domain_and_cidr_rules() {
        let r = flag_rule(Action::Allow, "python").unwrap();
        assert_eq!(
            (r.name.as_str(), r.preset),
            ("python", Some(Preset::Python))
        );
        let r = flag_rule(Action::Allow, "api.github.com:443").unwrap();
        assert_eq!(r.domains, ["api.github.com"]);
        assert_eq!(r.ports[0].port, 443);
        let r = flag_rule(Action::Deny, "10.0.0.0/8").unwrap();
        assert_eq!(
            (r.cidrs[0].as_str(), r.action),
            ("10.0.0.0/8", Action::Deny)
        );
        let r = flag_rule(Action::Allow, "fd00::/8").unwrap();
        assert_eq!((r.cidrs[0].as_str(), r.ports.len()), ("fd00::/8", 0));
        assert!(flag_rule(Action::Allow, "pyhton").is_err());
        assert!(flag_rule(Action::Allow, "example.com:http").is_err());
        let p = policy_from_flags(None, &["node".into()], &["evil.test".into()]).unwrap();
        let parsed: NetworkPolicy = serde_json::from_value(p).unwrap();
        assert_eq!(parsed.egress.traffic_rules[0].action, Action::Deny);
        assert!(parsed.compile().is_ok());
    }
}
