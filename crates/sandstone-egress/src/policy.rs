//! The network policy: Sandbox0's `SandboxNetworkPolicy` shape — a `mode`
//! and ordered, first-match `trafficRules` — evaluated after the operator's
//! rules, which a sandbox's policy can never loosen.

use crate::bandwidth::BandwidthLimit;
use crate::cidr::Cidr;
use crate::credentials::{CredentialBinding, CredentialRule, Injection, ProjectionKind};
use crate::presets::Preset;
use crate::protocol_rules::{Operations, ProtocolRule};
pub use sandstone_api::Unsupported;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    AllowAll,
    /// Nothing leaves unless a rule allows it (the default).
    #[default]
    BlockAll,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// What the first bytes of a connection showed it to be.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    Http,
    Tls,
    Ssh,
    Dns,
    Other,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Sandbox0's spec leaves the spelling open; Kubernetes writes `TCP`.
    #[default]
    #[serde(alias = "TCP")]
    Tcp,
    #[serde(alias = "UDP")]
    Udp,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRange {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Transport>,
}

impl PortRange {
    /// One TCP port.
    pub fn tcp(port: u16) -> PortRange {
        PortRange {
            port,
            end_port: None,
            protocol: Some(Transport::Tcp),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficRule {
    #[serde(default)]
    pub name: String,
    pub action: Action,
    /// Exact names, or `*.example.com` for any name below example.com.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_protocols: Vec<AppProtocol>,
    /// A Sandstone extension: this rule's domains also match a connection
    /// that names no host of its own (SSH, opaque TCP) to an address the
    /// sandbox's DNS answer for the name gave. Off by default: one address
    /// often serves many names, so this allows whatever else that address
    /// serves. Never applies to TLS or HTTP, which state their own name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub match_dns_answers: bool,
    /// Sandstone extension: a named list of domains and ports
    /// ([`Preset`]) added to the rule's own; `policy get` shows the rule
    /// expanded, with the preset's name kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
}

impl TrafficRule {
    /// A rule named `name` that matches any destination until its
    /// domains, CIDRs or preset are filled in.
    pub fn new(name: impl Into<String>, action: Action) -> TrafficRule {
        TrafficRule {
            name: name.into(),
            action,
            domains: Vec::new(),
            cidrs: Vec::new(),
            ports: Vec::new(),
            app_protocols: Vec::new(),
            match_dns_answers: false,
            preset: None,
        }
    }

    /// Adds the preset's domains (and its ports, when the rule names none)
    /// to the rule. Idempotent, so an expanded policy read back and sent
    /// again is unchanged.
    fn expand_preset(&mut self) {
        let Some(p) = self.preset else { return };
        for d in p.domains() {
            if !self.domains.iter().any(|have| have == d) {
                self.domains.push((*d).to_string());
            }
        }
        if self.ports.is_empty() {
            self.ports = p.port_ranges();
        }
        if self.name.is_empty() {
            self.name = p.name().to_string();
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Egress {
    #[serde(default)]
    pub traffic_rules: Vec<TrafficRule>,
    /// Sandbox0's legacy lists (deprecated there for `trafficRules`, and
    /// not to be combined with them): the allowed lists count in
    /// `block-all` only, the denied lists in `allow-all` only, and
    /// [`NetworkPolicy::expand`] turns the ones that count into traffic
    /// rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_cidrs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ports: Vec<PortRange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_cidrs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_ports: Vec<PortRange>,
    /// HTTP methods and paths, and MCP tools, allowed on connections the
    /// traffic rules allow (`protocol_rules.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocol_rules: Vec<ProtocolRule>,
    /// Sandbox0's customer proxy: allowed TCP connections leave through it
    /// (`socks5.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<EgressProxy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_rules: Vec<CredentialRule>,
    /// A Sandstone extension: the proxy terminates every allowed HTTP and
    /// HTTPS connection that names its host (not only those a credential
    /// rule names) and refuses, with a 421, any request whose Host is not
    /// that name (the TLS SNI): the defence against domain fronting
    /// through an allowed name's front end. Other protocols over TLS to
    /// such hosts then fail.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enforce_request_host: bool,
    /// A Sandstone extension: each direction of the sandbox's proxied TCP
    /// traffic, all connections together, at most this fast
    /// (`bandwidth.rs`). A change applies to open connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<BandwidthLimit>,
}

/// Sandbox0's `EgressProxyPolicy`: a customer proxy every allowed TCP
/// connection leaves through, logged in to with a `username_password`
/// binding when it names one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressProxy {
    #[serde(rename = "type")]
    pub kind: EgressProxyKind,
    /// `host:port`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_ref: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EgressProxyKind {
    Socks5,
}

impl EgressProxy {
    /// The address's host (a name or an address) and port.
    pub fn host_port(&self) -> Option<(&str, u16)> {
        let (host, port) = self.address.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.parse().ok().filter(|p| *p != 0)?;
        let named = valid_domain(host) && !host.starts_with("*.");
        (named || host.parse::<IpAddr>().is_ok()).then_some((host, port))
    }

    fn validate(&self, bindings: &[CredentialBinding]) -> Result<(), PolicyError> {
        if self.host_port().is_none() {
            let problem = Problem::ProxyAddress(self.address.clone());
            return Err(PolicyError::new("egress.proxy.address", problem));
        }
        let Some(r) = &self.credential_ref else {
            return Ok(());
        };
        let at = "egress.proxy.credentialRef";
        match bindings.iter().find(|b| &b.reference == r) {
            None => Err(PolicyError::new(
                at,
                Problem::UnknownCredentialRef(r.clone()),
            )),
            Some(b) if b.projection.kind != ProjectionKind::UsernamePassword => {
                Err(PolicyError::new(at, Problem::ProxyLogin))
            }
            Some(_) => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicy {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub egress: Egress,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_bindings: Vec<CredentialBinding>,
}

/// One outbound connection (or DNS question) to decide on.
#[derive(Debug, Clone)]
pub struct Connection<'a> {
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub transport: Transport,
    /// The name the connection states: TLS SNI, HTTP Host, the DNS
    /// question.
    pub host: Option<&'a str>,
    /// For a connection that states none, the name the sandbox's own DNS
    /// answers gave for `ip`: deny rules match it; allow rules only where
    /// they opt in (`matchDnsAnswers`), and never for TLS or HTTP.
    pub resolved: Option<&'a str>,
    pub app: AppProtocol,
}

/// Which layer of rules decided a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// The operator's rules, which no sandbox policy can loosen.
    Operator,
    /// One of the sandbox policy's traffic rules.
    Rule,
    /// No rule matched: the sandbox policy's mode.
    Mode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    pub layer: Layer,
    /// The matching rule's name (`rule`), or the operator rule.
    pub rule: Option<String>,
}

impl Decision {
    /// A readable reason, for audit records and HTTP 403 bodies.
    pub fn reason(&self, target: &str) -> String {
        let verdict = if self.allowed { "allowed" } else { "denied" };
        match (self.layer, &self.rule) {
            (Layer::Operator, Some(r)) => {
                format!("{target} {verdict} by the operator's network rules ({r})")
            }
            (Layer::Rule, Some(r)) if !r.is_empty() => {
                format!("{target} {verdict} by sandbox policy rule {r:?}")
            }
            (Layer::Rule, _) => format!("{target} {verdict} by an unnamed sandbox policy rule"),
            _ => format!("{target} {verdict} by the sandbox policy's mode"),
        }
    }
}

/// A policy field that fails validation, shown as `field: problem`
/// (`egress.trafficRules[2].cidrs[0]: "10.0.0.0/40" has a bad prefix
/// length`): the API's 400 names the field from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PolicyError {
    /// The field's path in the policy's JSON shape.
    pub field: String,
    pub problem: Problem,
}

impl PolicyError {
    pub(crate) fn new(field: impl Into<String>, problem: Problem) -> PolicyError {
        PolicyError {
            field: field.into(),
            problem,
        }
    }
}

/// What is wrong with a policy field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("at most 128 characters")]
    NameTooLong,
    #[error("{0:?} is not a domain name or *.wildcard")]
    Domain(String),
    #[error(transparent)]
    Cidr(#[from] crate::cidr::CidrError),
    #[error("ports are 1-65535 and endPort >= port")]
    Ports,
    #[error("at most {} rules", MAX_RULES)]
    TooManyRules,
    #[error("ref and sourceRef are required")]
    RefRequired,
    #[error("{0:?} is bound twice")]
    BoundTwice(String),
    #[error("no credentialBinding has ref {0:?}")]
    UnknownCredentialRef(String),
    #[error("{0:?} is not host:port")]
    ProxyAddress(String),
    #[error("the proxy's login is a username_password binding")]
    ProxyLogin,
    /// A credential must be aimed: no rule may send it everywhere.
    #[error("at least one domain")]
    NoDomains,
    #[error("{0:?} is not a method")]
    Method(String),
    #[error("{0:?} is not a header name")]
    HeaderName(String),
    #[error(transparent)]
    Template(#[from] crate::credentials::TemplateError),
    #[error("required")]
    Required,
    #[error("at least one")]
    Empty,
    #[error(
        "at least {} printable characters",
        crate::credentials::MIN_PLACEHOLDER
    )]
    Placeholder,
    #[error("not supported by Sandstone yet")]
    Unsupported,
    #[error("cannot be combined with trafficRules")]
    LegacyWithTrafficRules,
    /// A client certificate is presented when a connection opens, before
    /// any request is seen.
    #[error("a client certificate is presented per connection: {0}")]
    PerConnection(&'static str),
    #[error("the settings of another protocol (this rule is {0})")]
    OtherProtocol(&'static str),
    #[error("at least {0} bytes")]
    TooSmall(u64),
    /// An `ssh_proxy` binding and the `ssh` protocol go together.
    #[error("an ssh_proxy binding is used on protocol ssh, and ssh needs one")]
    Ssh,
    #[error("the settings of another projection type")]
    OtherProjection,
    #[error("{0}")]
    KnownHosts(String),
    #[error("not an OpenSSH public key: {0}")]
    PublicKey(String),
    /// A `username_password` binding and a login protocol go together.
    #[error(
        "a username_password login is made on protocols postgres, mysql and redis, and they need one"
    )]
    Login,
}

/// Traffic rules one policy may hold.
const MAX_RULES: usize = 1024;

pub(crate) fn valid_domain(d: &str) -> bool {
    let name = d.strip_prefix("*.").unwrap_or(d);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Whether `host` matches `pattern` (exact, or `*.` for names below it).
pub fn domain_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(base) => {
            host.len() > base.len() + 1
                && host[host.len() - base.len()..].eq_ignore_ascii_case(base)
                && host.as_bytes()[host.len() - base.len() - 1] == b'.'
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// A rule with its CIDRs parsed, ready to match.
#[derive(Debug, Clone)]
struct Compiled {
    rule: TrafficRule,
    cidrs: Vec<Cidr>,
}

impl Compiled {
    /// The name of `c` one of this rule's domains matches: the one it
    /// states, or the one its sandbox resolved where this rule may use it.
    fn matched_name<'a>(&self, c: &Connection<'a>) -> Option<&'a str> {
        let r = &self.rule;
        let names_itself = matches!(c.app, AppProtocol::Tls | AppProtocol::Http);
        let by_answer = r.action == Action::Deny || (r.match_dns_answers && !names_itself);
        let resolved = c.resolved.filter(|_| c.host.is_none() && by_answer);
        c.host
            .or(resolved)
            .filter(|h| r.domains.iter().any(|d| domain_matches(d, h)))
    }

    fn matches(&self, c: &Connection) -> bool {
        let r = &self.rule;
        let any_dest = r.domains.is_empty() && self.cidrs.is_empty();
        let dest = any_dest
            || self.matched_name(c).is_some()
            || c.ip
                .is_some_and(|ip| self.cidrs.iter().any(|n| n.contains(ip)));
        let port = r.ports.is_empty()
            || r.ports.iter().any(|p| {
                let end = p.end_port.unwrap_or(p.port);
                (p.port..=end).contains(&c.port) && p.protocol.is_none_or(|t| t == c.transport)
            });
        let app = r.app_protocols.is_empty() || r.app_protocols.contains(&c.app);
        dest && port && app
    }
}

/// A validated policy, ready for decisions.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub policy: NetworkPolicy,
    rules: Vec<Compiled>,
    pub injection: Injection,
    pub operations: Operations,
}

/// Checks a rule's domain list (`field` names it: `egress.allowedDomains`).
fn check_domains(list: &[String], field: &str) -> Result<(), PolicyError> {
    match list.iter().enumerate().find(|(_, d)| !valid_domain(d)) {
        Some((j, d)) => Err(PolicyError::new(
            format!("{field}[{j}]"),
            Problem::Domain(d.clone()),
        )),
        None => Ok(()),
    }
}

fn parse_cidrs(list: &[String], field: &str) -> Result<Vec<Cidr>, PolicyError> {
    list.iter()
        .enumerate()
        .map(|(j, c)| {
            c.parse::<Cidr>()
                .map_err(|e| PolicyError::new(format!("{field}[{j}]"), e.into()))
        })
        .collect()
}

fn check_ports(list: &[PortRange], field: &str) -> Result<(), PolicyError> {
    match list
        .iter()
        .position(|p| p.port == 0 || p.end_port.is_some_and(|e| e < p.port))
    {
        Some(j) => Err(PolicyError::new(format!("{field}[{j}]"), Problem::Ports)),
        None => Ok(()),
    }
}

impl Egress {
    /// Whether any legacy allow or deny list is set.
    fn has_legacy(&self) -> bool {
        !(self.allowed_domains.is_empty()
            && self.allowed_cidrs.is_empty()
            && self.allowed_ports.is_empty()
            && self.denied_domains.is_empty()
            && self.denied_cidrs.is_empty()
            && self.denied_ports.is_empty())
    }

    /// Checks the legacy lists and the fields Sandstone does not enforce,
    /// naming the field as the caller wrote it.
    fn check_compat(&self) -> Result<(), PolicyError> {
        if self.has_legacy() && !self.traffic_rules.is_empty() {
            return Err(PolicyError::new(
                "egress.trafficRules",
                Problem::LegacyWithTrafficRules,
            ));
        }
        check_domains(&self.allowed_domains, "egress.allowedDomains")?;
        check_domains(&self.denied_domains, "egress.deniedDomains")?;
        parse_cidrs(&self.allowed_cidrs, "egress.allowedCidrs")?;
        parse_cidrs(&self.denied_cidrs, "egress.deniedCidrs")?;
        check_ports(&self.allowed_ports, "egress.allowedPorts")?;
        check_ports(&self.denied_ports, "egress.deniedPorts")
    }
}

impl NetworkPolicy {
    /// Rewrites the policy into the rules it stands for: the legacy lists
    /// that count in its mode become traffic rules (in `block-all` one
    /// allow rule — the allowed domains and CIDRs on the allowed ports; in
    /// `allow-all` one deny rule per denied list, each denying what it
    /// lists on any destination or port), the lists that do not count are
    /// dropped, and every preset is expanded. Idempotent, so a policy read
    /// back and sent again is unchanged.
    pub fn expand(&mut self) {
        let e = &mut self.egress;
        use std::mem::take;
        let (domains, cidrs, ports) = (
            take(&mut e.allowed_domains),
            take(&mut e.allowed_cidrs),
            take(&mut e.allowed_ports),
        );
        if self.mode == Mode::BlockAll
            && !(domains.is_empty() && cidrs.is_empty() && ports.is_empty())
        {
            e.traffic_rules.push(TrafficRule {
                domains,
                cidrs,
                ports,
                ..TrafficRule::new("allowed", Action::Allow)
            });
        }
        let denied = [
            (
                "denied-domains",
                TrafficRule {
                    domains: take(&mut e.denied_domains),
                    ..TrafficRule::new("", Action::Deny)
                },
            ),
            (
                "denied-cidrs",
                TrafficRule {
                    cidrs: take(&mut e.denied_cidrs),
                    ..TrafficRule::new("", Action::Deny)
                },
            ),
            (
                "denied-ports",
                TrafficRule {
                    ports: take(&mut e.denied_ports),
                    ..TrafficRule::new("", Action::Deny)
                },
            ),
        ];
        if self.mode == Mode::AllowAll {
            for (name, rule) in denied {
                if !(rule.domains.is_empty() && rule.cidrs.is_empty() && rule.ports.is_empty()) {
                    e.traffic_rules.push(TrafficRule {
                        name: name.into(),
                        ..rule
                    });
                }
            }
        }
        for r in &mut e.traffic_rules {
            r.expand_preset();
        }
    }

    /// Checks every field; the error names the first bad one
    /// (`egress.trafficRules[2].cidrs[0]: …`). The policy is expanded
    /// first ([`NetworkPolicy::expand`]): a preset rule never matches "any
    /// destination".
    pub fn compile(&self) -> Result<CompiledPolicy, PolicyError> {
        self.egress.check_compat()?;
        let mut expanded = self.clone();
        expanded.expand();
        let mut rules = Vec::new();
        for (i, r) in expanded.egress.traffic_rules.iter().enumerate() {
            let at = format!("egress.trafficRules[{i}]");
            if r.name.len() > 128 {
                return Err(PolicyError::new(format!("{at}.name"), Problem::NameTooLong));
            }
            check_domains(&r.domains, &format!("{at}.domains"))?;
            let cidrs = parse_cidrs(&r.cidrs, &format!("{at}.cidrs"))?;
            check_ports(&r.ports, &format!("{at}.ports"))?;
            rules.push(Compiled {
                rule: r.clone(),
                cidrs,
            });
        }
        if rules.len() > MAX_RULES {
            return Err(PolicyError::new(
                "egress.trafficRules",
                Problem::TooManyRules,
            ));
        }
        crate::credentials::validate(&self.credential_bindings, &self.egress.credential_rules)?;
        crate::protocol_rules::validate(&self.egress.protocol_rules)?;
        if let Some(p) = &self.egress.proxy {
            p.validate(&self.credential_bindings)?;
        }
        if let Some(b) = &self.egress.bandwidth {
            let min = crate::bandwidth::MIN_RATE;
            if b.bytes_per_second < min {
                let field = "egress.bandwidth.bytesPerSecond";
                return Err(PolicyError::new(field, Problem::TooSmall(min)));
            }
            if b.burst_bytes.is_some_and(|burst| burst < min) {
                let field = "egress.bandwidth.burstBytes";
                return Err(PolicyError::new(field, Problem::TooSmall(min)));
            }
        }
        Ok(CompiledPolicy {
            policy: expanded,
            rules,
            injection: Injection {
                bindings: self.credential_bindings.clone(),
                rules: self.egress.credential_rules.clone(),
            },
            operations: Operations::new(self.egress.protocol_rules.clone()),
        })
    }

    /// The template's policy overridden by a claim's: the claim's mode wins
    /// when it sets one; rules merge by name and bindings by ref (the
    /// claim's replaces the template's of the same name; new ones go after);
    /// `enforceRequestHost` is on if either turns it on.
    pub fn merged(
        template: &NetworkPolicy,
        claim: &NetworkPolicy,
        claim_sets_mode: bool,
    ) -> NetworkPolicy {
        let mut out = template.clone();
        if claim_sets_mode {
            out.mode = claim.mode;
        }
        out.egress.enforce_request_host |= claim.egress.enforce_request_host;
        if claim.egress.bandwidth.is_some() {
            out.egress.bandwidth = claim.egress.bandwidth;
        }
        if claim.egress.proxy.is_some() {
            out.egress.proxy.clone_from(&claim.egress.proxy);
        }
        merge_by(
            &mut out.egress.traffic_rules,
            &claim.egress.traffic_rules,
            |r| &r.name,
        );
        merge_by(
            &mut out.egress.credential_rules,
            &claim.egress.credential_rules,
            |r| &r.name,
        );
        merge_by(
            &mut out.egress.protocol_rules,
            &claim.egress.protocol_rules,
            |r| &r.name,
        );
        merge_by(
            &mut out.credential_bindings,
            &claim.credential_bindings,
            |b| &b.reference,
        );
        out
    }
}

/// Overlays `over` on `base`: an item replaces the one with the same
/// (non-empty) key, others are appended in order.
fn merge_by<T: Clone>(base: &mut Vec<T>, over: &[T], key: impl Fn(&T) -> &String) {
    for item in over {
        match base
            .iter_mut()
            .find(|t| !key(item).is_empty() && key(t) == key(item))
        {
            Some(slot) => *slot = item.clone(),
            None => base.push(item.clone()),
        }
    }
}

/// Whether an address is one of this host's own, asked when it is dialled.
pub type LocalCheck = fn(IpAddr) -> std::io::Result<bool>;

/// Rules of the host's operator: evaluated before any sandbox policy and
/// not settable through the sandbox API.
#[derive(Debug, Clone)]
pub struct OperatorRules {
    /// Exceptions to `deny` (e.g. an internal mirror), checked first.
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    pub deny_domains: Vec<String>,
    /// Denies the host's own addresses, judged per connection (by default,
    /// the kernel's routing table: [`crate::local::is_local`]).
    pub host_addresses: Option<LocalCheck>,
}

impl Default for OperatorRules {
    /// Loopback, "this network", link-local (with the cloud metadata
    /// address), multicast, broadcast and the host's own addresses (as
    /// they are when dialled) are denied even in `allow-all`; the daemon
    /// adds the sandbox subnet pool.
    fn default() -> Self {
        let deny = [
            "127.0.0.0/8",
            "0.0.0.0/8",
            "169.254.0.0/16",
            "224.0.0.0/4",
            "255.255.255.255/32",
            "::1/128",
            "::/128",
            "fe80::/10",
            "ff00::/8",
        ]
        .iter()
        .map(|c| c.parse().expect("built-in CIDR"))
        .collect();
        OperatorRules {
            allow: Vec::new(),
            deny,
            deny_domains: Vec::new(),
            host_addresses: Some(crate::local::is_local),
        }
    }
}

impl OperatorRules {
    /// The rule that denies the daemon's own call to `host` (as it was
    /// named) at `ip`, if one does: the same rules, asked of a call
    /// someone else pointed the daemon at.
    pub fn denies(&self, host: &str, ip: IpAddr) -> Option<String> {
        let c = Connection {
            ip: Some(ip),
            port: 0,
            transport: Transport::Tcp,
            host: Some(host),
            resolved: None,
            app: AppProtocol::Other,
        };
        self.decide(&c).map(|d| d.rule.unwrap_or_default())
    }

    /// The operator's verdict on `c`, if its rules say anything.
    pub(crate) fn decide(&self, c: &Connection) -> Option<Decision> {
        // An IPv4-mapped IPv6 address is judged as the IPv4 one it reaches.
        if let Some(ip) = c.ip.map(|ip| ip.to_canonical()) {
            if self.allow.iter().any(|n| n.contains(ip)) {
                return None;
            }
            if let Some(n) = self.deny.iter().find(|n| n.contains(ip)) {
                return Some(Decision {
                    allowed: false,
                    layer: Layer::Operator,
                    rule: Some(format!("deny {n}")),
                });
            }
            let local = match self.host_addresses.map(|check| check(ip)) {
                None | Some(Ok(false)) => None,
                Some(Ok(true)) => Some(format!("deny host address {ip}")),
                // Unknown is treated as the host's own: the check fails closed.
                Some(Err(e)) => Some(format!(
                    "deny {ip}: cannot tell whether it is the host's ({e})"
                )),
            };
            if let Some(rule) = local {
                return Some(Decision {
                    allowed: false,
                    layer: Layer::Operator,
                    rule: Some(rule),
                });
            }
        }
        let host = c.host?;
        let d = self.deny_domains.iter().find(|d| domain_matches(d, host))?;
        Some(Decision {
            allowed: false,
            layer: Layer::Operator,
            rule: Some(format!("deny {d}")),
        })
    }
}

impl CompiledPolicy {
    /// Operator rules first, then the first matching traffic rule, then the
    /// mode.
    pub fn decide(&self, op: &OperatorRules, c: &Connection) -> Decision {
        if let Some(d) = op.decide(c) {
            return d;
        }
        if let Some(r) = self.rules.iter().find(|r| r.matches(c)) {
            return Decision {
                allowed: r.rule.action == Action::Allow,
                layer: Layer::Rule,
                rule: Some(r.rule.name.clone()),
            };
        }
        Decision {
            allowed: self.policy.mode == Mode::AllowAll,
            layer: Layer::Mode,
            rule: None,
        }
    }

    /// Whether a DNS name may be resolved: operator domain rules, then the
    /// first rule naming a matching domain, then the mode. Ports and
    /// protocols are not known yet at resolution time.
    pub fn decide_name(&self, op: &OperatorRules, name: &str) -> Decision {
        if let Some(d) = op.deny_domains.iter().find(|d| domain_matches(d, name)) {
            return Decision {
                allowed: false,
                layer: Layer::Operator,
                rule: Some(format!("deny {d}")),
            };
        }
        let hit = self
            .rules
            .iter()
            .find(|r| r.rule.domains.iter().any(|d| domain_matches(d, name)));
        match hit {
            Some(r) => Decision {
                allowed: r.rule.action == Action::Allow,
                layer: Layer::Rule,
                rule: Some(r.rule.name.clone()),
            },
            None => Decision {
                allowed: self.policy.mode == Mode::AllowAll,
                layer: Layer::Mode,
                rule: None,
            },
        }
    }

    /// The name by which the first matching rule matched `c`, if it
    /// matched by name: then the proxy dials what that name resolves to,
    /// not the address the sandbox chose.
    pub fn dial_name<'a>(&self, c: &Connection<'a>) -> Option<&'a str> {
        self.rules
            .iter()
            .find(|r| r.matches(c))
            .and_then(|r| r.matched_name(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn<'a>(ip: &str, port: u16, host: Option<&'a str>, app: AppProtocol) -> Connection<'a> {
        Connection {
            ip: Some(ip.parse().unwrap()),
            port,
            transport: Transport::Tcp,
            host,
            resolved: None,
            app,
        }
    }

    fn policy(json: &str) -> CompiledPolicy {
        serde_json::from_str::<NetworkPolicy>(json)
            .unwrap()
            .compile()
            .unwrap()
    }

    #[test]
    fn wildcards_match_only_below_the_base() {
        assert!(domain_matches("*.pypi.org", "files.pypi.org"));
        assert!(domain_matches("*.pypi.org", "a.b.PYPI.org."));
        assert!(!domain_matches("*.pypi.org", "pypi.org"));
        assert!(!domain_matches("*.pypi.org", "evilpypi.org"));
        assert!(domain_matches("api.github.com", "API.github.com"));
        assert!(!domain_matches("api.github.com", "api.github.com.evil"));
    }

    #[test]
    fn first_match_wins_then_mode() {
        let p = policy(
            r#"{"mode":"block-all","egress":{"trafficRules":[
                {"name":"no-admin","action":"deny","domains":["admin.example.com"]},
                {"name":"example","action":"allow","domains":["*.example.com"],"ports":[{"port":443}]},
                {"name":"lan","action":"allow","cidrs":["10.99.0.0/24"],"ports":[{"port":8000,"endPort":8100}]}
            ]}}"#,
        );
        let op = OperatorRules::default();
        let d = p.decide(
            &op,
            &conn("1.2.3.4", 443, Some("www.example.com"), AppProtocol::Tls),
        );
        assert_eq!((d.allowed, d.rule.as_deref()), (true, Some("example")));
        let d = p.decide(
            &op,
            &conn("1.2.3.4", 443, Some("admin.example.com"), AppProtocol::Tls),
        );
        assert_eq!((d.allowed, d.rule.as_deref()), (false, Some("no-admin")));
        assert!(
            !p.decide(
                &op,
                &conn("1.2.3.4", 80, Some("www.example.com"), AppProtocol::Http)
            )
            .allowed
        );
        assert!(
            p.decide(&op, &conn("10.99.0.7", 8080, None, AppProtocol::Other))
                .allowed
        );
        let d = p.decide(&op, &conn("10.99.0.7", 9000, None, AppProtocol::Other));
        assert_eq!((d.allowed, d.layer), (false, Layer::Mode));
        assert!(d.reason("10.99.0.7:9000").contains("mode"));
    }

    #[test]
    fn legacy_lists_count_in_their_mode_and_become_rules() {
        let op = OperatorRules::default();
        let p = policy(
            r#"{"mode":"block-all","egress":{"allowedDomains":["*.example.com"],
                "allowedCidrs":["10.99.0.0/24"],"allowedPorts":[{"port":443}],
                "deniedDomains":["ignored.test"],"deniedPorts":[],"protocolRules":[]},
                "credentialBindings":[]}"#,
        );
        let tls = |ip, host| conn(ip, 443, host, AppProtocol::Tls);
        let d = p.decide(&op, &tls("1.2.3.4", Some("www.example.com")));
        assert_eq!((d.allowed, d.rule.as_deref()), (true, Some("allowed")));
        assert!(p.decide(&op, &tls("10.99.0.7", None)).allowed);
        assert!(
            !p.decide(&op, &conn("10.99.0.7", 80, None, AppProtocol::Other))
                .allowed
        );
        assert!(!p.decide(&op, &tls("1.2.3.4", Some("other.test"))).allowed);
        let p = policy(
            r#"{"mode":"allow-all","egress":{"deniedDomains":["bad.test"],
                "deniedCidrs":["10.98.0.0/16"],"deniedPorts":[{"port":25}],
                "allowedDomains":["ignored.test"]}}"#,
        );
        let d = p.decide(&op, &tls("1.2.3.4", Some("bad.test")));
        assert_eq!(
            (d.allowed, d.rule.as_deref()),
            (false, Some("denied-domains"))
        );
        let d = p.decide(&op, &tls("10.98.1.1", None));
        assert_eq!(
            (d.allowed, d.rule.as_deref()),
            (false, Some("denied-cidrs"))
        );
        let d = p.decide(&op, &conn("1.2.3.4", 25, None, AppProtocol::Other));
        assert_eq!(
            (d.allowed, d.rule.as_deref()),
            (false, Some("denied-ports"))
        );
        assert!(p.decide(&op, &tls("1.2.3.4", Some("good.test"))).allowed);
    }

    #[test]
    fn what_sandstone_does_not_enforce_is_refused_by_name_when_asked_for() {
        let err = |json: &str| {
            serde_json::from_str::<NetworkPolicy>(json)
                .unwrap()
                .compile()
                .unwrap_err()
                .to_string()
        };
        let e = err(
            r#"{"mode":"block-all","egress":{"protocolRules":[{"protocol":"http","domains":["a.test"]}]}}"#,
        );
        assert!(
            e.starts_with("egress.protocolRules[0].http: required"),
            "{e}"
        );
        // A customer proxy is host:port, and its login a username_password
        // binding.
        for (address, ok) in [
            ("proxy.test:1080", true),
            ("10.1.2.3:1080", true),
            ("[fd00::1]:1080", true),
            ("proxy.test", false),
            ("proxy.test:0", false),
            ("*.proxy.test:1080", false),
            ("a b:1080", false),
        ] {
            let json = format!(
                r#"{{"mode":"block-all","egress":{{"proxy":{{"type":"socks5","address":"{address}"}}}}}}"#
            );
            let compiled = serde_json::from_str::<NetworkPolicy>(&json)
                .unwrap()
                .compile();
            match ok {
                true => assert!(compiled.is_ok(), "{address}"),
                false => assert!(
                    compiled
                        .unwrap_err()
                        .to_string()
                        .starts_with("egress.proxy.address: "),
                    "{address}"
                ),
            }
        }
        let proxy = |binding: &str, kind: &str| {
            format!(
                r#"{{"mode":"block-all","egress":{{"proxy":{{"type":"socks5","address":"p.test:1080","credentialRef":"{binding}"}}}},
                "credentialBindings":[{{"ref":"login","sourceRef":"s","projection":{{"type":"{kind}"}}}}]}}"#
            )
        };
        let e = err(&proxy("nope", "username_password"));
        assert!(
            e.starts_with("egress.proxy.credentialRef: no credentialBinding"),
            "{e}"
        );
        let e = err(&proxy("login", "tls_client_certificate"));
        assert!(
            e.starts_with("egress.proxy.credentialRef: the proxy's login"),
            "{e}"
        );
        let ok = serde_json::from_str::<NetworkPolicy>(&proxy("login", "username_password"));
        assert!(ok.unwrap().compile().is_ok());
        let e = err(
            r#"{"mode":"block-all","egress":{"allowedDomains":["a.test"],
                "trafficRules":[{"action":"allow","domains":["b.test"]}]}}"#,
        );
        assert!(
            e.starts_with("egress.trafficRules: cannot be combined"),
            "{e}"
        );
        let e = err(r#"{"mode":"block-all","egress":{"allowedCidrs":["10.0.0.0/99"]}}"#);
        assert!(e.starts_with("egress.allowedCidrs[0]"), "{e}");
        // Empty and absent are never an error.
        policy(r#"{"mode":"block-all","egress":{"protocolRules":[],"proxy":null}}"#);
    }

    #[test]
    fn a_preset_allows_its_hosts_and_ports_only_and_composes_in_order() {
        let p = policy(
            r#"{"mode":"block-all","egress":{"trafficRules":[
                {"name":"no-uploads","action":"deny","domains":["upload.pypi.org"]},
                {"action":"allow","preset":"python"}
            ]}}"#,
        );
        let op = OperatorRules::default();
        let d = p.decide(
            &op,
            &conn(
                "1.2.3.4",
                443,
                Some("files.pythonhosted.org"),
                AppProtocol::Tls,
            ),
        );
        assert_eq!((d.allowed, d.rule.as_deref()), (true, Some("python")));
        assert!(p.decide_name(&op, "pypi.org").allowed);
        // Its port list applies, other hosts stay denied by the mode, and
        // an earlier rule still wins.
        assert!(
            !p.decide(
                &op,
                &conn("1.2.3.4", 80, Some("pypi.org"), AppProtocol::Http)
            )
            .allowed
        );
        assert!(
            !p.decide(
                &op,
                &conn("1.2.3.4", 443, Some("example.com"), AppProtocol::Tls)
            )
            .allowed
        );
        let d = p.decide_name(&op, "upload.pypi.org");
        assert_eq!((d.allowed, d.rule.as_deref()), (false, Some("no-uploads")));
        // The compiled policy shows the expansion, and expanding it again
        // changes nothing (a policy read back and sent again is the same).
        let rule = &p.policy.egress.traffic_rules[1];
        assert_eq!(rule.domains, ["pypi.org", "files.pythonhosted.org"]);
        assert_eq!(rule.ports.len(), 1);
        let again = p.policy.compile().unwrap();
        assert_eq!(again.policy, p.policy);
    }

    #[test]
    fn an_unknown_preset_is_refused_with_the_known_names() {
        let v = serde_json::json!({"egress": {"trafficRules": [{"action": "allow", "preset": "pyhton"}]}});
        let e = serde_json::from_value::<NetworkPolicy>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pyhton") && e.contains("python"), "{e}");
    }

    #[test]
    fn operator_rules_cannot_be_loosened_by_allow_all() {
        let p = policy(r#"{"mode":"allow-all"}"#);
        let mut op = OperatorRules::default();
        for ip in [
            "127.0.0.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            let d = p.decide(&op, &conn(ip, 80, None, AppProtocol::Http));
            assert_eq!((d.allowed, d.layer), (false, Layer::Operator), "{ip}");
        }
        assert!(
            p.decide(&op, &conn("93.184.216.34", 80, None, AppProtocol::Http))
                .allowed
        );
        op.deny_domains.push("*.internal".into());
        assert!(
            !p.decide(
                &op,
                &conn("93.184.216.34", 80, Some("db.internal"), AppProtocol::Http)
            )
            .allowed
        );
        op.allow.push("127.0.0.53/32".parse().unwrap());
        assert!(
            p.decide(&op, &conn("127.0.0.53", 53, None, AppProtocol::Dns))
                .allowed
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = |json: &str| {
            serde_json::from_str::<NetworkPolicy>(json)
                .unwrap()
                .compile()
                .unwrap_err()
                .to_string()
        };
        assert!(
            bad(r#"{"egress":{"trafficRules":[{"action":"allow","cidrs":["10.0.0.0/40"]}]}}"#)
                .starts_with("egress.trafficRules[0].cidrs[0]")
        );
        assert!(
            bad(r#"{"egress":{"trafficRules":[{"action":"allow","domains":["bad domain"]}]}}"#)
                .starts_with("egress.trafficRules[0].domains[0]")
        );
        assert!(bad(r#"{"egress":{"trafficRules":[{"action":"allow","ports":[{"port":90,"endPort":80}]}]}}"#)
            .starts_with("egress.trafficRules[0].ports[0]"));
        assert!(serde_json::from_str::<NetworkPolicy>(r#"{"mode":"open"}"#).is_err());
        // The field is typed too, and the text is what the API has always
        // sent after `invalid field `.
        let e = serde_json::from_str::<NetworkPolicy>(
            r#"{"egress":{"trafficRules":[{"action":"allow","cidrs":["10.0.0.0/40"]}]}}"#,
        )
        .unwrap()
        .compile()
        .unwrap_err();
        assert_eq!(e.field, "egress.trafficRules[0].cidrs[0]");
        assert_eq!(
            e.to_string(),
            r#"egress.trafficRules[0].cidrs[0]: "10.0.0.0/40" has a bad prefix length"#
        );
    }

    #[test]
    fn claims_merge_over_templates_by_rule_name() {
        let t: NetworkPolicy = serde_json::from_str(
            r#"{"mode":"block-all","egress":{"trafficRules":[{"name":"a","action":"allow","domains":["a.com"]},{"name":"b","action":"allow","domains":["b.com"]}]}}"#,
        )
        .unwrap();
        let c: NetworkPolicy = serde_json::from_str(
            r#"{"mode":"allow-all","egress":{"trafficRules":[{"name":"b","action":"deny","domains":["b.com"]},{"name":"c","action":"allow","domains":["c.com"]}]}}"#,
        )
        .unwrap();
        let m = NetworkPolicy::merged(&t, &c, true);
        let names: Vec<_> = m
            .egress
            .traffic_rules
            .iter()
            .map(|r| (r.name.as_str(), r.action))
            .collect();
        assert_eq!(
            names,
            vec![
                ("a", Action::Allow),
                ("b", Action::Deny),
                ("c", Action::Allow)
            ]
        );
        assert_eq!(m.mode, Mode::AllowAll);
        assert_eq!(NetworkPolicy::merged(&t, &c, false).mode, Mode::BlockAll);
        assert!(!m.egress.enforce_request_host);
        let strict: NetworkPolicy =
            serde_json::from_str(r#"{"egress":{"enforceRequestHost":true}}"#).unwrap();
        assert!(
            NetworkPolicy::merged(&t, &strict, false)
                .egress
                .enforce_request_host
        );
        assert!(
            NetworkPolicy::merged(&strict, &c, true)
                .egress
                .enforce_request_host
        );
    }

    #[test]
    fn tls_without_a_server_name_matches_cidr_rules_only() {
        let p = policy(
            r#"{"mode":"block-all","egress":{"trafficRules":[
                {"name":"api","action":"allow","domains":["api.example.test"],"ports":[{"port":443}]}
            ]}}"#,
        );
        let op = OperatorRules::default();
        let resolved = |app| Connection {
            resolved: Some("api.example.test"),
            ..conn("93.184.216.34", 443, None, app)
        };
        // The sandbox's earlier DNS answer does not name a TLS flow, an
        // HTTP flow without Host, nor opaque TCP to that address.
        for app in [AppProtocol::Tls, AppProtocol::Http, AppProtocol::Other] {
            let d = p.decide(&op, &resolved(app));
            assert_eq!((d.allowed, d.layer), (false, Layer::Mode), "{app:?}");
            assert_eq!(p.dial_name(&resolved(app)), None);
        }
        // Its own SNI does, and the proxy dials that name.
        let sni = conn(
            "93.184.216.34",
            443,
            Some("api.example.test"),
            AppProtocol::Tls,
        );
        assert!(p.decide(&op, &sni).allowed);
        assert_eq!(p.dial_name(&sni), Some("api.example.test"));
        // A CIDR rule allows it by address, to be dialled as addressed.
        let p = policy(
            r#"{"mode":"block-all","egress":{"trafficRules":[
                {"name":"api","action":"allow","domains":["api.example.test"],"cidrs":["93.184.216.0/24"]}
            ]}}"#,
        );
        assert!(p.decide(&op, &resolved(AppProtocol::Tls)).allowed);
        assert_eq!(p.dial_name(&resolved(AppProtocol::Tls)), None);
        // A Host the rule does not name, sent to an address it allows, is
        // dialled as addressed, not where that other name resolves.
        let other = conn("93.184.216.34", 80, Some("evil.test"), AppProtocol::Http);
        assert!(p.decide(&op, &other).allowed);
        assert_eq!(p.dial_name(&other), None);
    }

    #[test]
    fn dns_answers_name_opaque_flows_only_where_a_rule_opts_in_and_always_for_deny() {
        let p = policy(
            r#"{"mode":"allow-all","egress":{"trafficRules":[
                {"name":"no-evil","action":"deny","domains":["evil.test"]}
            ]}}"#,
        );
        let op = OperatorRules::default();
        let to = |name, app| Connection {
            resolved: Some(name),
            ..conn("93.184.216.34", 443, None, app)
        };
        // Deny rules match what the sandbox resolved, whatever the protocol.
        for app in [AppProtocol::Tls, AppProtocol::Other] {
            let d = p.decide(&op, &to("evil.test", app));
            assert_eq!((d.allowed, d.rule.as_deref()), (false, Some("no-evil")));
        }
        let p = policy(
            r#"{"mode":"block-all","egress":{"trafficRules":[
                {"name":"git","action":"allow","domains":["git.test"],"ports":[{"port":22}],"matchDnsAnswers":true}
            ]}}"#,
        );
        assert!(p.policy.egress.traffic_rules[0].match_dns_answers);
        let ssh = Connection {
            resolved: Some("git.test"),
            ..conn("93.184.216.34", 22, None, AppProtocol::Ssh)
        };
        assert!(p.decide(&op, &ssh).allowed);
        assert_eq!(p.dial_name(&ssh), Some("git.test"));
        // Opting in does not extend to TLS.
        let tls = Connection {
            app: AppProtocol::Tls,
            ..ssh.clone()
        };
        assert!(!p.decide(&op, &tls).allowed);
        // The field round-trips and is absent when off.
        let json = serde_json::to_string(&p.policy).unwrap();
        assert!(json.contains(r#""matchDnsAnswers":true"#), "{json}");
        let plain = serde_json::to_string(
            &policy(r#"{"egress":{"trafficRules":[{"action":"allow"}]}}"#).policy,
        )
        .unwrap();
        assert!(
            !plain.contains("matchDnsAnswers") && !plain.contains("enforceRequestHost"),
            "{plain}"
        );
    }

    #[test]
    fn host_addresses_are_judged_when_dialled() {
        fn fake(ip: IpAddr) -> std::io::Result<bool> {
            match ip.to_string().as_str() {
                "10.5.0.1" => Ok(true),
                "10.5.0.9" => Err(std::io::Error::other("netlink down")),
                _ => Ok(false),
            }
        }
        let p = policy(r#"{"mode":"allow-all"}"#);
        let mut op = OperatorRules {
            host_addresses: Some(fake),
            ..OperatorRules::default()
        };
        let d = p.decide(&op, &conn("10.5.0.1", 80, None, AppProtocol::Http));
        assert_eq!(
            (d.allowed, d.layer, d.rule.as_deref()),
            (false, Layer::Operator, Some("deny host address 10.5.0.1"))
        );
        // Unknown fails closed.
        assert!(
            !p.decide(&op, &conn("10.5.0.9", 80, None, AppProtocol::Http))
                .allowed
        );
        assert!(
            p.decide(&op, &conn("10.5.0.2", 80, None, AppProtocol::Http))
                .allowed
        );
        // The operator's own exceptions still come first.
        op.allow.push("10.5.0.1/32".parse().unwrap());
        assert!(
            p.decide(&op, &conn("10.5.0.1", 80, None, AppProtocol::Http))
                .allowed
        );
    }
}
