//! Protocol rules (`egress.protocolRules`, Sandbox0's shape): what may be
//! done on a connection the traffic rules allowed. An `http` rule limits
//! methods and paths; an `mcp` rule limits which tools a JSON-RPC
//! `tools/call` over streamable HTTP may name. Connections to a rule's
//! hosts are terminated (as for credential rules) so that every request is
//! seen; a request some rule refuses never leaves the proxy.

use crate::credentials::{HttpMatch, TlsMode, plain_path};
use crate::policy::{PolicyError, PortRange, Problem, domain_matches, valid_domain};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuleProtocol {
    Http,
    Mcp,
}

/// Sandbox0's allow and deny lists: a denied name is refused first; a
/// non-empty allowed list then admits only what it names.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Lists {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<String>,
}

impl Lists {
    /// Why `name` is refused, if it is.
    fn refuses(&self, name: &str, eq: impl Fn(&str, &str) -> bool) -> Option<&'static str> {
        if self.denied.iter().any(|d| eq(d, name)) {
            Some("is denied")
        } else if !self.allowed.is_empty() && !self.allowed.iter().any(|a| eq(a, name)) {
            Some("is not allowed")
        } else {
            None
        }
    }
}

/// Sandbox0's `HTTPPathPolicy`: exact paths and prefixes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathLists {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_prefixes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_prefixes: Vec<String>,
}

impl PathLists {
    fn is_empty(&self) -> bool {
        self.allowed.is_empty()
            && self.denied.is_empty()
            && self.allowed_prefixes.is_empty()
            && self.denied_prefixes.is_empty()
    }

    fn refuses(&self, path: &str) -> Option<&'static str> {
        if self.is_empty() {
            return None;
        }
        // What the upstream might normalise to a denied path is refused.
        if !plain_path(path) {
            return Some("has dot segments or encoded separators");
        }
        let prefixed = |list: &[String]| list.iter().any(|p| path.starts_with(p.as_str()));
        if self.denied.iter().any(|p| p == path) || prefixed(&self.denied_prefixes) {
            return Some("is denied");
        }
        let allowing = !(self.allowed.is_empty() && self.allowed_prefixes.is_empty());
        if allowing && !(self.allowed.iter().any(|p| p == path) || prefixed(&self.allowed_prefixes))
        {
            return Some("is not allowed");
        }
        None
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRule {
    #[serde(default)]
    pub methods: Lists,
    #[serde(default)]
    pub paths: PathLists,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpRule {
    #[serde(default)]
    pub tools: Lists,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProtocolRule {
    #[serde(default)]
    pub name: String,
    pub protocol: RuleProtocol,
    pub domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    #[serde(default)]
    pub tls_mode: TlsMode,
    /// Which requests the rule applies to (all, without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_match: Option<HttpMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpRule>,
}

/// A request a rule refused: the rule's name and why (never a header or
/// body value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rule: String,
    pub reason: String,
}

/// The largest request body an `mcp` rule reads to find the tool named.
pub const MAX_INSPECTED_BODY: usize = 8 << 20;

/// Checks the rules; the error names the field.
pub fn validate(rules: &[ProtocolRule]) -> Result<(), PolicyError> {
    for (i, r) in rules.iter().enumerate() {
        let at = format!("egress.protocolRules[{i}]");
        if r.name.len() > 128 {
            return Err(PolicyError::new(format!("{at}.name"), Problem::NameTooLong));
        }
        if r.domains.is_empty() {
            return Err(PolicyError::new(
                format!("{at}.domains"),
                Problem::NoDomains,
            ));
        }
        if let Some((j, d)) = r.domains.iter().enumerate().find(|(_, d)| !valid_domain(d)) {
            return Err(PolicyError::new(
                format!("{at}.domains[{j}]"),
                Problem::Domain(d.clone()),
            ));
        }
        if let Some(j) = r
            .ports
            .iter()
            .position(|p| p.port == 0 || p.end_port.is_some_and(|e| e < p.port))
        {
            return Err(PolicyError::new(format!("{at}.ports[{j}]"), Problem::Ports));
        }
        // The settings must be the protocol's, and say something.
        let (own, other, set) = match r.protocol {
            RuleProtocol::Http => (
                "http",
                r.mcp.is_some().then_some("mcp"),
                r.http
                    .as_ref()
                    .is_some_and(|h| !(h.methods == Lists::default() && h.paths.is_empty())),
            ),
            RuleProtocol::Mcp => (
                "mcp",
                r.http.is_some().then_some("http"),
                r.mcp.as_ref().is_some_and(|m| m.tools != Lists::default()),
            ),
        };
        if let Some(other) = other {
            return Err(PolicyError::new(
                format!("{at}.{other}"),
                Problem::OtherProtocol(own),
            ));
        }
        if !set {
            return Err(PolicyError::new(format!("{at}.{own}"), Problem::Required));
        }
        let methods = r
            .http
            .iter()
            .flat_map(|h| h.methods.allowed.iter().chain(&h.methods.denied));
        let matched = r.http_match.iter().flat_map(|m| &m.methods);
        if let Some(m) = methods
            .chain(matched)
            .find(|m| !crate::credentials::is_token(m))
        {
            return Err(PolicyError::new(
                format!("{at}.http.methods"),
                Problem::Method(m.clone()),
            ));
        }
    }
    Ok(())
}

/// The protocol rules of a policy, ready to match.
#[derive(Debug, Clone, Default)]
pub struct Operations {
    rules: Vec<ProtocolRule>,
}

impl Operations {
    /// From validated rules, their methods in upper case.
    pub fn new(mut rules: Vec<ProtocolRule>) -> Operations {
        for r in &mut rules {
            let scoped = r.http_match.iter_mut().flat_map(|m| m.methods.iter_mut());
            let listed = r.http.iter_mut().flat_map(|h| {
                h.methods
                    .allowed
                    .iter_mut()
                    .chain(h.methods.denied.iter_mut())
            });
            scoped.chain(listed).for_each(|m| m.make_ascii_uppercase());
        }
        Operations { rules }
    }
}

impl ProtocolRule {
    fn applies(&self, host: &str, port: u16) -> bool {
        self.domains.iter().any(|d| domain_matches(d, host))
            && (self.ports.is_empty()
                || self
                    .ports
                    .iter()
                    .any(|p| (p.port..=p.end_port.unwrap_or(p.port)).contains(&port)))
    }

    fn named(&self) -> String {
        if self.name.is_empty() {
            "(unnamed)".into()
        } else {
            self.name.clone()
        }
    }
}

impl Operations {
    /// Whether connections to `host:port` must be terminated: some rule
    /// looks at their requests.
    pub fn intercepts(&self, host: &str, port: u16) -> bool {
        self.rules.iter().any(|r| r.applies(host, port))
    }

    /// The first `http` rule that refuses a request, and why.
    pub fn check_http(
        &self,
        host: &str,
        port: u16,
        method: &str,
        path: &str,
    ) -> Result<(), Refusal> {
        let bare = path.split('?').next().unwrap_or(path);
        for r in self.for_request(RuleProtocol::Http, host, port, method, path) {
            let Some(http) = &r.http else { continue };
            let refused = http
                .methods
                .refuses(method, |a, b| a.eq_ignore_ascii_case(b))
                .map(|why| format!("method {method} {why}"))
                .or_else(|| {
                    http.paths
                        .refuses(bare)
                        .map(|why| format!("path {bare} {why}"))
                });
            if let Some(why) = refused {
                return Err(Refusal {
                    reason: format!("{why} by protocol rule {:?}", r.named()),
                    rule: r.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// The `mcp` rules that apply to a request: its body must be read.
    pub fn mcp_rules(&self, host: &str, port: u16, method: &str, path: &str) -> Vec<&ProtocolRule> {
        if !method.eq_ignore_ascii_case("POST") {
            return Vec::new();
        }
        self.for_request(RuleProtocol::Mcp, host, port, method, path)
    }

    fn for_request(
        &self,
        protocol: RuleProtocol,
        host: &str,
        port: u16,
        method: &str,
        path: &str,
    ) -> Vec<&ProtocolRule> {
        // `delete` is not `DELETE` to HTTP, but may be to a server: a rule
        // covers every spelling of a method (its own are upper case).
        let method = method.to_ascii_uppercase();
        self.rules
            .iter()
            .filter(|r| {
                r.protocol == protocol
                    && r.applies(host, port)
                    && r.http_match
                        .as_ref()
                        .is_none_or(|m| m.matches(&method, path))
            })
            .collect()
    }
}

/// One JSON-RPC message of a request body: only what a rule looks at.
/// (Unknown fields are kept out of the way; a duplicate field is an
/// error, so a body cannot name one tool to the proxy and another to the
/// server.)
#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Params>,
}

#[derive(Debug, Deserialize)]
struct Params {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Body {
    One(Message),
    Batch(Vec<Message>),
}

/// What an `mcp` rule decided about a request body.
#[derive(Debug, PartialEq)]
pub enum McpVerdict {
    /// Each `tools/call` in it (by tool name) passed every rule.
    Allowed(Vec<String>),
    /// Refused; `id` is the refused call's JSON-RPC id when the body was
    /// one request (answered with a JSON-RPC error), else `None`.
    Refused {
        refusal: Refusal,
        id: Option<serde_json::Value>,
    },
}

/// Checks a JSON-RPC request body against `rules`.
pub fn check_mcp(rules: &[&ProtocolRule], body: &[u8]) -> McpVerdict {
    let refuse = |rule: &ProtocolRule, reason: String, id| McpVerdict::Refused {
        refusal: Refusal {
            rule: rule.name.clone(),
            reason: format!("{reason} by protocol rule {:?}", rule.named()),
        },
        id,
    };
    let Some(first) = rules.first() else {
        return McpVerdict::Allowed(Vec::new());
    };
    let (messages, single) = match serde_json::from_slice::<Body>(body) {
        Ok(Body::One(m)) => (vec![m], true),
        Ok(Body::Batch(b)) => (b, false),
        Err(_) => {
            return refuse(first, "a request body that is not JSON-RPC".into(), None);
        }
    };
    let mut called = Vec::new();
    for m in messages {
        if m.method.as_deref() != Some("tools/call") {
            continue;
        }
        let id = m.id.filter(|_| single);
        let Some(tool) = m.params.and_then(|p| p.name) else {
            return refuse(first, "a tools/call without a tool name".into(), id);
        };
        for r in rules {
            let tools = r.mcp.as_ref().map(|m| &m.tools);
            if let Some(why) = tools.and_then(|t| t.refuses(&tool, |a, b| a == b)) {
                return refuse(r, format!("tool {tool:?} {why}"), id);
            }
        }
        called.push(tool);
    }
    McpVerdict::Allowed(called)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(rules: &str) -> Operations {
        let rules: Vec<ProtocolRule> = serde_json::from_str(rules).unwrap();
        validate(&rules).unwrap();
        Operations::new(rules)
    }

    #[test]
    fn http_rules_deny_first_then_admit_only_what_they_allow() {
        let o = ops(r#"[{"name":"gh","protocol":"http","domains":["api.test"],
                "http":{"methods":{"denied":["delete"]},
                        "paths":{"allowedPrefixes":["/repos/"],"denied":["/repos/secret"]}}}]"#);
        assert!(o.intercepts("api.test", 443) && !o.intercepts("web.test", 443));
        assert!(
            o.check_http("api.test", 443, "GET", "/repos/x?page=2")
                .is_ok()
        );
        let refused = |m, p| o.check_http("api.test", 443, m, p).unwrap_err().reason;
        assert_eq!(
            refused("DELETE", "/repos/x"),
            "method DELETE is denied by protocol rule \"gh\""
        );
        assert_eq!(
            refused("GET", "/user"),
            "path /user is not allowed by protocol rule \"gh\""
        );
        assert_eq!(
            refused("GET", "/repos/secret"),
            "path /repos/secret is denied by protocol rule \"gh\""
        );
        assert!(refused("GET", "/repos/../user").contains("dot segments"));
        // Every spelling of a denied method.
        assert!(refused("delete", "/repos/x").contains("is denied"));
        assert!(refused("GET", "/repos/%2e%2e/user").contains("dot segments"));
        // Another host is another connection, under other rules.
        assert!(o.check_http("web.test", 443, "DELETE", "/user").is_ok());
    }

    #[test]
    fn mcp_rules_read_the_tool_a_call_names() {
        let o = ops(r#"[{"name":"tools","protocol":"mcp","domains":["mcp.test"],
                "mcp":{"tools":{"allowed":["add"]}}}]"#);
        let rules = o.mcp_rules("mcp.test", 8765, "POST", "/mcp");
        assert_eq!(rules.len(), 1);
        assert!(o.mcp_rules("mcp.test", 8765, "GET", "/mcp").is_empty());
        let call = |name: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{name}","arguments":{{}}}}}}"#
            )
        };
        assert_eq!(
            check_mcp(&rules, call("add").as_bytes()),
            McpVerdict::Allowed(vec!["add".into()])
        );
        let McpVerdict::Refused { refusal, id } = check_mcp(&rules, call("echo").as_bytes()) else {
            panic!("echo passed");
        };
        assert_eq!(
            refusal.reason,
            "tool \"echo\" is not allowed by protocol rule \"tools\""
        );
        assert_eq!(id, Some(serde_json::json!(7)));
        // An escaped name is the name the server reads.
        assert!(matches!(
            check_mcp(&rules, call(r"\u0065cho").as_bytes()),
            McpVerdict::Refused { .. }
        ));
        // Other methods pass; a batch is checked call by call; a body the
        // proxy cannot read, or that names the tool twice, is refused.
        let init = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
        assert_eq!(check_mcp(&rules, init), McpVerdict::Allowed(vec![]));
        let batch = format!("[{},{}]", call("add"), call("echo"));
        assert!(matches!(
            check_mcp(&rules, batch.as_bytes()),
            McpVerdict::Refused { id: None, .. }
        ));
        let twice = br#"{"id":1,"method":"tools/call","params":{"name":"add","name":"echo"}}"#;
        assert!(matches!(
            check_mcp(&rules, twice),
            McpVerdict::Refused { .. }
        ));
        assert!(matches!(
            check_mcp(&rules, b"\x1f\x8b"),
            McpVerdict::Refused { .. }
        ));
    }

    #[test]
    fn bad_rules_are_named() {
        let err = |r: &str| {
            validate(&serde_json::from_str::<Vec<ProtocolRule>>(r).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(r#"[{"protocol":"http","domains":["a.test"]}]"#),
            "egress.protocolRules[0].http: required"
        );
        assert!(
            err(
                r#"[{"protocol":"mcp","domains":["a.test"],"http":{"methods":{"denied":["GET"]}}}]"#
            )
            .starts_with("egress.protocolRules[0].http: ")
        );
        assert!(
            err(r#"[{"protocol":"http","domains":[],"http":{"methods":{"denied":["GET"]}}}]"#)
                .starts_with("egress.protocolRules[0].domains")
        );
        assert!(
            err(r#"[{"protocol":"http","domains":["a.test"],"http":{"methods":{"denied":["G T"]}}}]"#)
                .starts_with("egress.protocolRules[0].http.methods")
        );
    }
}
