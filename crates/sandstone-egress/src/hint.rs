//! For a denied connection, the policy change that would allow it — what
//! `sandstone audit --denied` prints under each denial. Judged against the
//! sandbox's current policy and the operator's rules, so it never suggests
//! a change that could not work (the operator's denials, a deny rule that
//! comes first).

use crate::AppProtocol;
use crate::policy::{
    Action, CompiledPolicy, Connection, Layer, OperatorRules, TrafficRule, Transport,
};
use crate::presets::Preset;
use serde::Serialize;
use std::net::IpAddr;

/// Where a denied connection (or DNS question) went.
#[derive(Debug, Clone)]
pub struct Denied<'a> {
    pub name: Option<&'a str>,
    pub ip: Option<IpAddr>,
    pub port: u16,
    /// A DNS question: only the name is known, not the port to come.
    pub dns: bool,
    /// The connection stated `name` itself (TLS SNI, HTTP Host). Otherwise
    /// the name came from the sandbox's DNS answers, which allow rules do
    /// not match by default: the suggestion is then the address.
    pub stated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllowHint {
    /// The command to run, or why no sandbox policy can allow it.
    pub message: String,
    /// The rule that would allow it; absent when none can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<TrafficRule>,
}

pub fn allow_hint(
    sandbox: &str,
    policy: &CompiledPolicy,
    op: &OperatorRules,
    d: &Denied,
) -> Option<AllowHint> {
    let decision = if d.dns {
        policy.decide_name(op, d.name?)
    } else {
        policy.decide(
            op,
            &Connection {
                ip: d.ip,
                port: d.port,
                transport: Transport::Tcp,
                host: d.name.filter(|_| d.stated),
                resolved: d.name.filter(|_| !d.stated),
                app: AppProtocol::Other,
            },
        )
    };
    let none = |message: String| {
        Some(AllowHint {
            message,
            rule: None,
        })
    };
    match (decision.allowed, decision.layer) {
        (true, _) => return none("the current policy allows it (it changed since)".into()),
        (false, Layer::Operator) => {
            return none(format!(
                "the operator's rules deny it ({}); no sandbox policy can allow it",
                decision.rule.unwrap_or_default()
            ));
        }
        (false, Layer::Rule) => {
            return none(format!(
                "rule {:?} denies it and comes first: remove or change that rule (sandstone policy get/set {sandbox})",
                decision.rule.unwrap_or_default()
            ));
        }
        _ => {}
    }
    let port = (!d.dns).then_some(d.port);
    let name = d.name.filter(|_| d.stated || d.dns);
    let (target, rule) = match (name, d.ip) {
        (Some(name), _) => match Preset::covering(name, port) {
            Some(p) => {
                let mut r = TrafficRule::new(p.name(), Action::Allow);
                r.preset = Some(p);
                (p.name().to_string(), r)
            }
            None => {
                let target = match port {
                    Some(port) => format!("{name}:{port}"),
                    None => name.to_string(),
                };
                let mut r = TrafficRule::new(format!("allow-{target}"), Action::Allow);
                r.domains.push(name.to_string());
                r.ports = port
                    .map(crate::policy::PortRange::tcp)
                    .into_iter()
                    .collect();
                (target, r)
            }
        },
        (None, Some(ip)) => {
            let target = match ip {
                IpAddr::V4(_) => format!("{ip}:{}", d.port),
                IpAddr::V6(_) => ip.to_string(),
            };
            let mut r = TrafficRule::new(format!("allow-{target}"), Action::Allow);
            r.cidrs.push(ip.to_string());
            if ip.is_ipv4() {
                r.ports.push(crate::policy::PortRange::tcp(d.port));
            }
            (target, r)
        }
        (None, None) => return None,
    };
    Some(AllowHint {
        message: format!("sandstone policy allow {sandbox} {target}"),
        rule: Some(rule),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetworkPolicy;

    fn compiled(json: &str) -> CompiledPolicy {
        serde_json::from_str::<NetworkPolicy>(json)
            .unwrap()
            .compile()
            .unwrap()
    }

    fn denied<'a>(name: Option<&'a str>, ip: &str, port: u16) -> Denied<'a> {
        Denied {
            name,
            ip: Some(ip.parse().unwrap()),
            port,
            dns: false,
            stated: true,
        }
    }

    #[test]
    fn a_registry_denied_by_the_mode_suggests_its_preset() {
        let p = compiled(r#"{"mode":"block-all"}"#);
        let op = OperatorRules::default();
        let h = allow_hint("sb-1", &p, &op, &denied(Some("pypi.org"), "1.2.3.4", 443)).unwrap();
        assert_eq!(h.message, "sandstone policy allow sb-1 python");
        // The suggested rule, added to the policy, allows the connection.
        let mut fixed: NetworkPolicy = p.policy.clone();
        fixed.egress.traffic_rules.push(h.rule.unwrap());
        let conn = Connection {
            ip: Some("1.2.3.4".parse().unwrap()),
            port: 443,
            transport: Transport::Tcp,
            host: Some("pypi.org"),
            resolved: None,
            app: AppProtocol::Tls,
        };
        assert!(fixed.compile().unwrap().decide(&op, &conn).allowed);
    }

    #[test]
    fn other_names_and_addresses_get_a_rule_of_their_own() {
        let p = compiled(r#"{"mode":"block-all"}"#);
        let op = OperatorRules::default();
        let h = allow_hint(
            "sb-1",
            &p,
            &op,
            &denied(Some("example.com"), "1.2.3.4", 8443),
        )
        .unwrap();
        assert_eq!(h.message, "sandstone policy allow sb-1 example.com:8443");
        assert_eq!(h.rule.unwrap().domains, ["example.com"]);
        let h = allow_hint("sb-1", &p, &op, &denied(None, "203.0.113.9", 5432)).unwrap();
        assert_eq!(h.message, "sandstone policy allow sb-1 203.0.113.9:5432");
        let dns = Denied {
            name: Some("registry.npmjs.org"),
            ip: None,
            port: 53,
            dns: true,
            stated: true,
        };
        let h = allow_hint("sb-1", &p, &op, &dns).unwrap();
        assert_eq!(h.message, "sandstone policy allow sb-1 node");
        // Opaque TCP names only what DNS answered: the address is suggested.
        let ssh = Denied {
            stated: false,
            ..denied(Some("git.example.com"), "203.0.113.7", 22)
        };
        let h = allow_hint("sb-1", &p, &op, &ssh).unwrap();
        assert_eq!(h.message, "sandstone policy allow sb-1 203.0.113.7:22");
    }

    #[test]
    fn operator_denials_and_earlier_deny_rules_are_not_suggested_away() {
        let p = compiled(
            r#"{"mode":"allow-all","egress":{"trafficRules":[{"name":"no-evil","action":"deny","domains":["evil.test"]}]}}"#,
        );
        let op = OperatorRules::default();
        let h = allow_hint("sb-1", &p, &op, &denied(None, "169.254.169.254", 80)).unwrap();
        assert!(h.rule.is_none() && h.message.contains("operator"), "{h:?}");
        let h = allow_hint("sb-1", &p, &op, &denied(Some("evil.test"), "1.2.3.4", 443)).unwrap();
        assert!(h.rule.is_none() && h.message.contains("no-evil"), "{h:?}");
    }
}
