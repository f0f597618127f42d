//! Credential injection rules, in Sandbox0's shape: a policy's
//! `credentialBindings` say how a credential source is projected into a
//! request (headers rendered from templates, or placeholders the sandbox
//! holds replaced by the real value), and `egress.credentialRules` say for
//! which destinations and requests. The proxy applies them after it has
//! terminated TLS; the sandbox only ever sees the placeholder, if anything.

use crate::policy::{PolicyError, PortRange, Problem, Unsupported, domain_matches, valid_domain};
use sandstone_api::CredentialSourceKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CredentialProtocol {
    Http,
    #[default]
    Https,
    /// A Sandstone extension: PostgreSQL's wire protocol, whose login the
    /// proxy completes upstream (a `username_password` binding).
    Postgres,
    /// A Sandstone extension: MySQL's (and MariaDB's) protocol, whose
    /// login the proxy completes upstream (a `username_password` binding).
    Mysql,
    /// Redis's protocol, whose `AUTH` the proxy completes upstream (a
    /// `username_password` binding).
    Redis,
    /// SSH, terminated and re-originated with a key (an `ssh_proxy`
    /// binding).
    Ssh,
}

/// A protocol whose login the proxy completes upstream (`login.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginProtocol {
    Postgres,
    Mysql,
    Redis,
}

impl LoginProtocol {
    /// Whether the server speaks first (the proxy need not wait for the
    /// sandbox's first bytes).
    pub fn server_first(self) -> bool {
        self == LoginProtocol::Mysql
    }
}

impl CredentialProtocol {
    /// The login the proxy completes on this protocol (a
    /// `username_password` binding), if it is not one whose requests are
    /// changed.
    pub fn login(self) -> Option<LoginProtocol> {
        match self {
            CredentialProtocol::Postgres => Some(LoginProtocol::Postgres),
            CredentialProtocol::Mysql => Some(LoginProtocol::Mysql),
            CredentialProtocol::Redis => Some(LoginProtocol::Redis),
            CredentialProtocol::Http | CredentialProtocol::Https | CredentialProtocol::Ssh => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// The request is refused when the credential cannot be applied.
    #[default]
    FailClosed,
    /// The request goes out without the credential.
    FailOpen,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Rollout {
    #[default]
    Enabled,
    Disabled,
}

/// Injection needs the plaintext request: only `terminate-reoriginate`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    #[default]
    TerminateReoriginate,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatch {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_prefixes: Vec<String>,
    /// Sandbox0's query-parameter and header matchers: not supported yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<Unsupported>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Unsupported>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialRule {
    #[serde(default)]
    pub name: String,
    pub credential_ref: String,
    #[serde(default)]
    pub protocol: CredentialProtocol,
    pub domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_match: Option<HttpMatch>,
    #[serde(default)]
    pub tls_mode: TlsMode,
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    #[serde(default)]
    pub rollout: Rollout,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderTemplate {
    pub name: String,
    /// `Bearer {{ .token }}`: `{{ .key }}` is the source's value `key`.
    pub value_template: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeaders {
    /// Empty: every value of the source is sent as the header it names.
    #[serde(default)]
    pub headers: Vec<HeaderTemplate>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    Header,
    Query,
    /// The request body, buffered (up to [`MAX_SUBSTITUTED_BODY`]) to
    /// replace it.
    Body,
}

/// The largest request body a placeholder is replaced in.
pub const MAX_SUBSTITUTED_BODY: usize = 8 << 20;

/// The domain of a credential rule that matches every host: allowed only
/// for placeholder substitution, which changes nothing unless the sandbox
/// itself put the placeholder in the request. (A header projection must
/// be aimed.)
pub const ANY_HOST: &str = "*";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Replacement {
    pub placeholder: String,
    pub value_template: String,
    #[serde(default = "header_only")]
    pub locations: Vec<Location>,
}

fn header_only() -> Vec<Location> {
    vec![Location::Header]
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlaceholderSubstitution {
    pub replacements: Vec<Replacement>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionKind {
    HttpHeaders,
    PlaceholderSubstitution,
    /// Presented upstream as the connection opens (`client_cert.rs`).
    TlsClientCertificate,
    /// A login the proxy completes upstream (`login.rs`).
    UsernamePassword,
    /// SSH terminated and re-originated with the source's key
    /// (`ssh_proxy.rs`).
    SshProxy,
}

impl ProjectionKind {
    /// Whether it is applied to each request (else to the connection).
    pub fn per_request(self) -> bool {
        matches!(
            self,
            ProjectionKind::HttpHeaders | ProjectionKind::PlaceholderSubstitution
        )
    }
}

/// Sandbox0's `UsernamePasswordProjection`: no settings (the source holds
/// the username and password).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UsernamePassword {}

/// Sandbox0's `TLSClientCertificateProjection`: it has no settings (the
/// source holds the certificate, its key and the upstream's CA).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsClientCertificate {}

/// The values a `static_tls_client_certificate` source is sealed with.
pub const CLIENT_CERTIFICATE_VALUES: [&str; 3] = ["certificatePem", "privateKeyPem", "caPem"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Projection {
    #[serde(rename = "type")]
    pub kind: ProjectionKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_headers: Option<HttpHeaders>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placeholder_substitution: Option<PlaceholderSubstitution>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_certificate: Option<TlsClientCertificate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_password: Option<UsernamePassword>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_proxy: Option<SshProxy>,
}

/// Sandbox0's `SSHProxyProjection` (`ssh_proxy.rs`): SSH to the rule's
/// hosts is terminated and re-originated with the source's key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshProxy {
    /// Placeholder public keys the sandbox may log in with (OpenSSH's
    /// `type base64 [comment]`); any key when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sandbox_public_keys: Vec<String>,
    /// The user the proxy logs in upstream as (else the sandbox's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_username: Option<String>,
    /// The upstream host keys accepted, as known_hosts lines: at least one.
    #[serde(default)]
    pub known_hosts: Vec<String>,
}

impl SshProxy {
    /// The sandbox keys, parsed.
    pub fn sandbox_keys(&self) -> Result<Vec<russh::keys::PublicKey>, (usize, String)> {
        self.sandbox_public_keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                russh::keys::PublicKey::from_openssh(k.trim()).map_err(|e| (i, e.to_string()))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CachePolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialBinding {
    #[serde(rename = "ref")]
    pub reference: String,
    pub source_ref: String,
    pub projection: Projection,
    /// Accepted for compatibility; sources are read on every connection,
    /// so a rotation applies at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_policy: Option<CachePolicy>,
}

/// Placeholders shorter than this would be replaced inside ordinary text.
pub(crate) const MIN_PLACEHOLDER: usize = 8;

/// A value template that is not `text {{ .name }} text`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("an unclosed {{{{")]
    Unclosed,
    #[error("{{{{ {0} }}}} must be {{{{ .name }}}}")]
    Key(String),
}

/// Why a credential source could not be read (the daemon's store says).
/// Names the source, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("credential source {0:?} does not exist")]
    Missing(String),
    #[error("credential source {0:?} cannot be unsealed")]
    Sealed(String),
    #[error("credential source {0:?} is malformed")]
    Malformed(String),
}

/// Why a credential could not be applied to a request: shown to the
/// sandbox in the 502 of a fail-closed rule, so it never holds a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    #[error("no credential store is configured")]
    NoStore,
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("the source has no value {0:?}")]
    MissingValue(String),
    #[error("{0:?} is not a header name")]
    HeaderName(String),
    #[error("the value for header {0} is not a valid header value")]
    HeaderValue(String),
    #[error("the substituted value is not a valid header value")]
    SubstitutedValue,
    #[error("the source is a {kind} source; this projection needs a {wanted} one")]
    SourceKind {
        kind: CredentialSourceKind,
        wanted: CredentialSourceKind,
    },
    /// The value named, and what is wrong with it (never the value).
    #[error("the source's {0} {1}")]
    ClientCertificate(&'static str, String),
    /// What is wrong with an SSH key (never the key).
    #[error("the source's private key: {0}")]
    Key(String),
}

/// An HTTP token: a header name or a method.
pub(crate) fn is_token(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks bindings and credential rules; the error names the field.
pub fn validate(
    bindings: &[CredentialBinding],
    rules: &[CredentialRule],
) -> Result<(), PolicyError> {
    for (i, b) in bindings.iter().enumerate() {
        let at = format!("credentialBindings[{i}]");
        if b.reference.is_empty() || b.source_ref.is_empty() {
            return Err(PolicyError::new(at, Problem::RefRequired));
        }
        if bindings[..i].iter().any(|o| o.reference == b.reference) {
            return Err(PolicyError::new(
                format!("{at}.ref"),
                Problem::BoundTwice(b.reference.clone()),
            ));
        }
        validate_projection(&b.projection, &format!("{at}.projection"))?;
    }
    for (i, r) in rules.iter().enumerate() {
        let at = format!("egress.credentialRules[{i}]");
        if !bindings.iter().any(|b| b.reference == r.credential_ref) {
            return Err(PolicyError::new(
                format!("{at}.credentialRef"),
                Problem::UnknownCredentialRef(r.credential_ref.clone()),
            ));
        }
        if r.domains.is_empty() {
            return Err(PolicyError::new(
                format!("{at}.domains"),
                Problem::NoDomains,
            ));
        }
        let kind = bindings
            .iter()
            .find(|b| b.reference == r.credential_ref)
            .map(|b| b.projection.kind);
        let placeholder = kind == Some(ProjectionKind::PlaceholderSubstitution);
        // A login is made on a login protocol, and only there; an SSH
        // key on SSH, and only there.
        let login = kind == Some(ProjectionKind::UsernamePassword);
        if login != r.protocol.login().is_some() {
            return Err(PolicyError::new(format!("{at}.protocol"), Problem::Login));
        }
        let ssh = kind == Some(ProjectionKind::SshProxy);
        if ssh != (r.protocol == CredentialProtocol::Ssh) {
            return Err(PolicyError::new(format!("{at}.protocol"), Problem::Ssh));
        }
        if (login || ssh) && r.http_match.is_some() {
            return Err(PolicyError::new(
                format!("{at}.httpMatch"),
                Problem::PerConnection("no request can be matched"),
            ));
        }
        if kind == Some(ProjectionKind::TlsClientCertificate) {
            if r.protocol != CredentialProtocol::Https {
                return Err(PolicyError::new(
                    format!("{at}.protocol"),
                    Problem::PerConnection("only on https"),
                ));
            }
            if r.http_match.is_some() {
                return Err(PolicyError::new(
                    format!("{at}.httpMatch"),
                    Problem::PerConnection("no request can be matched"),
                ));
            }
        }
        for (j, d) in r.domains.iter().enumerate() {
            if !(valid_domain(d) || placeholder && d == ANY_HOST) {
                return Err(PolicyError::new(
                    format!("{at}.domains[{j}]"),
                    Problem::Domain(d.clone()),
                ));
            }
        }
        if let Some(m) = &r.http_match {
            for (field, set) in [("query", &m.query), ("headers", &m.headers)] {
                if !set.is_empty() {
                    return Err(PolicyError::new(
                        format!("{at}.httpMatch.{field}"),
                        Problem::Unsupported,
                    ));
                }
            }
        }
        for (j, m) in r.http_match.iter().flat_map(|m| &m.methods).enumerate() {
            if !is_token(m) {
                return Err(PolicyError::new(
                    format!("{at}.httpMatch.methods[{j}]"),
                    Problem::Method(m.clone()),
                ));
            }
        }
    }
    Ok(())
}

fn validate_projection(p: &Projection, at: &str) -> Result<(), PolicyError> {
    if p.ssh_proxy.is_some() && p.kind != ProjectionKind::SshProxy {
        return Err(PolicyError::new(
            format!("{at}.sshProxy"),
            Problem::OtherProjection,
        ));
    }
    match p.kind {
        ProjectionKind::HttpHeaders => {
            for (j, h) in p.http_headers.iter().flat_map(|h| &h.headers).enumerate() {
                let at = format!("{at}.httpHeaders.headers[{j}]");
                if !is_token(&h.name) {
                    return Err(PolicyError::new(
                        format!("{at}.name"),
                        Problem::HeaderName(h.name.clone()),
                    ));
                }
                parse_template(&h.value_template)
                    .map_err(|e| PolicyError::new(format!("{at}.valueTemplate"), e.into()))?;
            }
        }
        ProjectionKind::PlaceholderSubstitution => {
            let reps = &p
                .placeholder_substitution
                .as_ref()
                .ok_or_else(|| {
                    PolicyError::new(format!("{at}.placeholderSubstitution"), Problem::Required)
                })?
                .replacements;
            if reps.is_empty() {
                return Err(PolicyError::new(
                    format!("{at}.placeholderSubstitution.replacements"),
                    Problem::Empty,
                ));
            }
            for (j, r) in reps.iter().enumerate() {
                let at = format!("{at}.placeholderSubstitution.replacements[{j}]");
                if r.placeholder.len() < MIN_PLACEHOLDER
                    || !r.placeholder.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(PolicyError::new(
                        format!("{at}.placeholder"),
                        Problem::Placeholder,
                    ));
                }
                parse_template(&r.value_template)
                    .map_err(|e| PolicyError::new(format!("{at}.valueTemplate"), e.into()))?;
            }
        }
        ProjectionKind::SshProxy => {
            let at = format!("{at}.sshProxy");
            let ssh = p
                .ssh_proxy
                .as_ref()
                .ok_or_else(|| PolicyError::new(&at, Problem::Required))?;
            crate::ssh_proxy::Pins::parse(&ssh.known_hosts).map_err(|e| {
                PolicyError::new(format!("{at}.knownHosts"), Problem::KnownHosts(e))
            })?;
            ssh.sandbox_keys().map_err(|(i, e)| {
                PolicyError::new(
                    format!("{at}.sandboxPublicKeys[{i}]"),
                    Problem::PublicKey(e),
                )
            })?;
            if ssh.upstream_username.as_ref().is_some_and(|u| u.is_empty()) {
                return Err(PolicyError::new(
                    format!("{at}.upstreamUsername"),
                    Problem::Required,
                ));
            }
        }
        ProjectionKind::TlsClientCertificate | ProjectionKind::UsernamePassword => {}
    }
    Ok(())
}

enum Piece<'a> {
    Text(&'a str),
    Value(&'a str),
}

/// Splits `Bearer {{ .token }}` into text and value references.
fn parse_template(t: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find("{{") {
        out.push(Piece::Text(&rest[..open]));
        let close = rest[open..].find("}}").ok_or(TemplateError::Unclosed)? + open;
        let key = rest[open + 2..close].trim();
        let key = key
            .strip_prefix('.')
            .filter(|k| !k.is_empty())
            .ok_or_else(|| TemplateError::Key(key.to_string()))?;
        out.push(Piece::Value(key));
        rest = &rest[close + 2..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// The plaintext values of a credential source, by name (a header's, or
/// [`CLIENT_CERTIFICATE_VALUES`]...). Never printed.
pub struct SourceValues {
    pub kind: CredentialSourceKind,
    pub values: BTreeMap<String, String>,
}

impl std::fmt::Debug for SourceValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SourceValues({}, [redacted; {}])",
            self.kind,
            self.values.len()
        )
    }
}

impl SourceValues {
    fn render(&self, template: &str) -> Result<String, ProjectionError> {
        let mut s = String::new();
        for piece in parse_template(template)? {
            match piece {
                Piece::Text(t) => s.push_str(t),
                Piece::Value(k) => s.push_str(
                    self.values
                        .get(k)
                        .ok_or_else(|| ProjectionError::MissingValue(k.to_string()))?,
                ),
            }
        }
        Ok(s)
    }
}

/// Where credential sources are read from (the daemon's sealed store).
pub trait CredentialStore: Send + Sync {
    /// The values of `source` as sandbox `sandbox` sees it (a name is
    /// resolved among the sources of the sandbox's team).
    fn resolve<'a>(
        &'a self,
        sandbox: &'a str,
        source: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<SourceValues, SourceError>>;
}

/// The parts of a request a projection may change.
pub struct RequestParts<'a> {
    pub headers: &'a mut hyper::HeaderMap,
    /// Path and query (`/a/b?x=1`).
    pub path_and_query: &'a mut String,
    /// Placeholders to replace in the body, with their values: the caller
    /// streams the body, so it makes these replacements itself.
    pub body: &'a mut Vec<(String, String)>,
}

/// Applies `binding` with the source's `values` to a request.
pub fn project(
    binding: &CredentialBinding,
    values: &SourceValues,
    req: RequestParts<'_>,
) -> Result<(), ProjectionError> {
    use hyper::header::{HeaderName, HeaderValue};
    let header =
        |name: &str, value: String| -> Result<(HeaderName, HeaderValue), ProjectionError> {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ProjectionError::HeaderName(name.to_string()))?;
            let v = HeaderValue::from_str(&value)
                .map_err(|_| ProjectionError::HeaderValue(name.to_string()))?;
            Ok((n, v))
        };
    let p = &binding.projection;
    // A header is rendered only from a headers source: never from a key or
    // a password meant for a handshake.
    if values.kind != CredentialSourceKind::StaticHeaders {
        return Err(ProjectionError::SourceKind {
            kind: values.kind,
            wanted: CredentialSourceKind::StaticHeaders,
        });
    }
    match p.kind {
        // Applied to the connection, never here (`for_request` leaves them out).
        ProjectionKind::TlsClientCertificate
        | ProjectionKind::UsernamePassword
        | ProjectionKind::SshProxy => {}
        ProjectionKind::HttpHeaders => {
            let templates = p
                .http_headers
                .as_ref()
                .map(|h| &h.headers[..])
                .unwrap_or(&[]);
            let pairs: Vec<(String, String)> = if templates.is_empty() {
                values
                    .values
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            } else {
                templates
                    .iter()
                    .map(|t| Ok((t.name.clone(), values.render(&t.value_template)?)))
                    .collect::<Result<_, ProjectionError>>()?
            };
            for (name, value) in pairs {
                let (n, v) = header(&name, value)?;
                // The credential replaces whatever the sandbox sent.
                req.headers.insert(n, v);
            }
        }
        ProjectionKind::PlaceholderSubstitution => {
            let reps = p
                .placeholder_substitution
                .as_ref()
                .map(|s| &s.replacements[..])
                .unwrap_or(&[]);
            for r in reps {
                let value = values.render(&r.value_template)?;
                if r.locations.contains(&Location::Header) {
                    substitute_headers(req.headers, &r.placeholder, &value)?;
                }
                if r.locations.contains(&Location::Query)
                    && let Some((path, query)) = req.path_and_query.split_once('?')
                {
                    *req.path_and_query =
                        format!("{path}?{}", substitute_query(query, &r.placeholder, &value));
                }
                if r.locations.contains(&Location::Body) {
                    req.body.push((r.placeholder.clone(), value));
                }
            }
        }
    }
    Ok(())
}

/// Whether a request path has no dot segments and no encoded dots,
/// slashes or backslashes.
pub(crate) fn plain_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    !path.split('/').any(|s| s == "." || s == "..")
        && !["%2e", "%2f", "%5c", "\\"]
            .iter()
            .any(|bad| lower.contains(bad))
}

/// Replaces a header value that is exactly the placeholder, or an auth
/// scheme and the placeholder (`Bearer PLACEHOLDER`): a placeholder
/// embedded in free text (which a server might echo back) is left alone.
fn substitute_headers(
    h: &mut hyper::HeaderMap,
    placeholder: &str,
    value: &str,
) -> Result<(), ProjectionError> {
    for v in h.values_mut() {
        let Ok(s) = v.to_str() else { continue };
        let replaced = if s == placeholder {
            value.to_string()
        } else {
            match s.split_once(' ') {
                Some((scheme, rest)) if rest == placeholder && !scheme.is_empty() => {
                    format!("{scheme} {value}")
                }
                _ => continue,
            }
        };
        *v = hyper::header::HeaderValue::from_str(&replaced)
            .map_err(|_| ProjectionError::SubstitutedValue)?;
    }
    Ok(())
}

/// Replaces query parameters whose whole value is the placeholder.
fn substitute_query(query: &str, placeholder: &str, value: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if v == placeholder => format!("{k}={}", percent_encode(value)),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl CredentialRule {
    fn enabled_for(&self, host: &str, port: u16, tls: bool) -> bool {
        let protocol = match tls {
            true => CredentialProtocol::Https,
            false => CredentialProtocol::Http,
        };
        self.protocol == protocol && self.serves(host, port)
    }

    /// Enabled, and naming `host:port`.
    fn serves(&self, host: &str, port: u16) -> bool {
        self.rollout == Rollout::Enabled
            && self
                .domains
                .iter()
                .any(|d| d == ANY_HOST || domain_matches(d, host))
            && (self.ports.is_empty()
                || self
                    .ports
                    .iter()
                    .any(|p| (p.port..=p.end_port.unwrap_or(p.port)).contains(&port)))
    }

    fn matches_request(&self, method: &str, path: &str) -> bool {
        self.http_match
            .as_ref()
            .is_none_or(|m| m.matches(method, path))
    }
}

impl HttpMatch {
    /// Whether a request (`path` may carry a query) is one this names.
    pub(crate) fn matches(&self, method: &str, path: &str) -> bool {
        let path = path.split('?').next().unwrap_or(path);
        let methods = self.methods.is_empty() || self.methods.iter().any(|x| x == method);
        if self.paths.is_empty() && self.path_prefixes.is_empty() {
            return methods;
        }
        // A path the upstream might normalise differently (`/v1/../admin`,
        // `%2e%2e`, encoded slashes) never matches a path constraint.
        methods
            && plain_path(path)
            && (self.paths.iter().any(|p| p == path)
                || self
                    .path_prefixes
                    .iter()
                    .any(|p| path.starts_with(p.as_str())))
    }
}

/// The credential rules of a policy, ready to match.
#[derive(Debug, Clone, Default)]
pub struct Injection {
    pub bindings: Vec<CredentialBinding>,
    pub rules: Vec<CredentialRule>,
}

impl Injection {
    /// Whether connections to `host:port` must be terminated (some rule
    /// may inject into them).
    pub fn intercepts(&self, host: &str, port: u16, tls: bool) -> bool {
        self.rules.iter().any(|r| r.enabled_for(host, port, tls))
    }

    /// The rules matching a request, with their bindings: in declaration
    /// order, the first rule of each credential (a request may carry
    /// several credentials' placeholders; one is never applied twice).
    pub fn for_request(
        &self,
        host: &str,
        port: u16,
        tls: bool,
        method: &str,
        path: &str,
    ) -> Vec<(&CredentialRule, &CredentialBinding)> {
        let mut out: Vec<(&CredentialRule, &CredentialBinding)> = Vec::new();
        for (rule, b) in self.enabled(host, port, tls) {
            let first = !out
                .iter()
                .any(|(r, _)| r.credential_ref == rule.credential_ref);
            if first && b.projection.kind.per_request() && rule.matches_request(method, path) {
                out.push((rule, b));
            }
        }
        out
    }

    /// The login to complete on a connection to `host:port` (the rule
    /// says in which protocol).
    pub fn login(
        &self,
        host: &str,
        port: u16,
    ) -> Option<(LoginProtocol, &CredentialRule, &CredentialBinding)> {
        self.rules
            .iter()
            .filter(|r| r.serves(host, port))
            .find_map(|r| {
                let protocol = r.protocol.login()?;
                let b = self
                    .bindings
                    .iter()
                    .find(|b| b.reference == r.credential_ref)?;
                (b.projection.kind == ProjectionKind::UsernamePassword).then_some((protocol, r, b))
            })
    }

    /// The SSH binding for a connection to `host:port`, if a rule has one.
    pub fn ssh(&self, host: &str, port: u16) -> Option<(&CredentialRule, &CredentialBinding)> {
        self.rules
            .iter()
            .filter(|r| r.protocol == CredentialProtocol::Ssh && r.serves(host, port))
            .find_map(|r| {
                let b = self
                    .bindings
                    .iter()
                    .find(|b| b.reference == r.credential_ref)?;
                (b.projection.kind == ProjectionKind::SshProxy).then_some((r, b))
            })
    }

    /// The client certificate to present on a TLS connection to
    /// `host:port`: the first enabled rule's whose binding projects one.
    pub fn client_certificate(
        &self,
        host: &str,
        port: u16,
    ) -> Option<(&CredentialRule, &CredentialBinding)> {
        self.enabled(host, port, true)
            .find(|(_, b)| b.projection.kind == ProjectionKind::TlsClientCertificate)
    }

    /// The rules enabled for `host:port`, in order, with their bindings.
    fn enabled(
        &self,
        host: &str,
        port: u16,
        tls: bool,
    ) -> impl Iterator<Item = (&CredentialRule, &CredentialBinding)> {
        self.rules
            .iter()
            .filter(move |r| r.enabled_for(host, port, tls))
            .filter_map(|r| {
                let b = self
                    .bindings
                    .iter()
                    .find(|b| b.reference == r.credential_ref)?;
                Some((r, b))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injection(bindings: &str, rules: &str) -> Injection {
        let bindings: Vec<CredentialBinding> = serde_json::from_str(bindings).unwrap();
        let rules: Vec<CredentialRule> = serde_json::from_str(rules).unwrap();
        validate(&bindings, &rules).unwrap();
        Injection { bindings, rules }
    }

    /// Projects the test values through `b` into a request.
    fn apply(b: &CredentialBinding, h: &mut hyper::HeaderMap, pq: &mut String) {
        let mut body = Vec::new();
        let req = RequestParts {
            headers: h,
            path_and_query: pq,
            body: &mut body,
        };
        project(b, &values(), req).unwrap();
        assert!(body.is_empty(), "no body location was asked for");
    }

    fn values() -> SourceValues {
        SourceValues {
            kind: CredentialSourceKind::StaticHeaders,
            values: BTreeMap::from([("token".to_string(), "s3cr3t".to_string())]),
        }
    }

    #[test]
    fn headers_are_rendered_and_replace_the_sandboxs() {
        let inj = injection(
            r#"[{"ref":"gh","sourceRef":"github","projection":{"type":"http_headers",
                "httpHeaders":{"headers":[{"name":"Authorization","valueTemplate":"Bearer {{ .token }}"}]}}}]"#,
            r#"[{"name":"r","credentialRef":"gh","domains":["api.github.com"],
                "httpMatch":{"methods":["GET"],"pathPrefixes":["/repos/"]}}]"#,
        );
        assert!(inj.intercepts("api.github.com", 443, true));
        assert!(!inj.intercepts("api.github.com", 80, false), "https only");
        assert!(!inj.intercepts("github.com", 443, true));
        assert!(
            inj.for_request("api.github.com", 443, true, "POST", "/repos/x")
                .is_empty()
        );
        assert!(
            inj.for_request("api.github.com", 443, true, "GET", "/user")
                .is_empty()
        );
        // Methods are case-sensitive; paths an upstream would normalise
        // into something else never match a path constraint.
        assert!(
            inj.for_request("api.github.com", 443, true, "get", "/repos/x")
                .is_empty()
        );
        for sneaky in [
            "/repos/../user",
            "/repos/%2e%2e/user",
            "/repos/x%2F..%2Fuser",
            "/repos/./x",
        ] {
            assert!(
                inj.for_request("api.github.com", 443, true, "GET", sneaky)
                    .is_empty(),
                "{sneaky}"
            );
        }
        let (_, b) = inj.for_request("api.github.com", 443, true, "GET", "/repos/x?page=2")[0];
        let mut h = hyper::HeaderMap::new();
        h.insert("authorization", "Bearer fake".parse().unwrap());
        let mut pq = "/repos/x".to_string();
        apply(b, &mut h, &mut pq);
        assert_eq!(h["authorization"], "Bearer s3cr3t");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn placeholders_are_replaced_only_where_asked() {
        let inj = injection(
            r#"[{"ref":"k","sourceRef":"s","projection":{"type":"placeholder_substitution",
                "placeholderSubstitution":{"replacements":[{"placeholder":"PLACEHOLDER_KEY",
                "valueTemplate":"{{.token}}","locations":["header","query"]}]}}}]"#,
            r#"[{"credentialRef":"k","domains":["*.example.com"]}]"#,
        );
        let (_, b) = inj.for_request("a.example.com", 443, true, "GET", "/")[0];
        let mut h = hyper::HeaderMap::new();
        h.insert("x-api-key", "PLACEHOLDER_KEY".parse().unwrap());
        h.insert("other", "none".parse().unwrap());
        h.insert("authorization", "Bearer PLACEHOLDER_KEY".parse().unwrap());
        // Embedded in free text (which a server might echo back): left alone.
        h.insert("x-note", "my key is PLACEHOLDER_KEY".parse().unwrap());
        let mut pq = "/q?key=PLACEHOLDER_KEY&a=1&q=say+PLACEHOLDER_KEY".to_string();
        apply(b, &mut h, &mut pq);
        assert_eq!(h["x-api-key"], "s3cr3t");
        assert_eq!(h["authorization"], "Bearer s3cr3t");
        assert_eq!(h["other"], "none");
        assert_eq!(h["x-note"], "my key is PLACEHOLDER_KEY");
        assert_eq!(pq, "/q?key=s3cr3t&a=1&q=say+PLACEHOLDER_KEY");
    }

    #[test]
    fn bad_rules_are_named_and_values_never_printed() {
        let err = |b: &str, r: &str| {
            validate(
                &serde_json::from_str::<Vec<CredentialBinding>>(b).unwrap(),
                &serde_json::from_str::<Vec<CredentialRule>>(r).unwrap(),
            )
            .unwrap_err()
            .to_string()
        };
        let hb = r#"[{"ref":"a","sourceRef":"s","projection":{"type":"http_headers"}}]"#;
        assert!(
            err(hb, r#"[{"credentialRef":"b","domains":["x.com"]}]"#)
                .starts_with("egress.credentialRules[0].credentialRef")
        );
        assert!(
            err(hb, r#"[{"credentialRef":"a","domains":[]}]"#)
                .starts_with("egress.credentialRules[0].domains")
        );
        let bad_tpl = r#"[{"ref":"a","sourceRef":"s","projection":{"type":"http_headers",
            "httpHeaders":{"headers":[{"name":"A","valueTemplate":"{{ token }}"}]}}}]"#;
        assert_eq!(
            err(bad_tpl, "[]"),
            "credentialBindings[0].projection.httpHeaders.headers[0].valueTemplate: {{ token }} must be {{ .name }}"
        );
        let short = r#"[{"ref":"a","sourceRef":"s","projection":{"type":"placeholder_substitution",
            "placeholderSubstitution":{"replacements":[{"placeholder":"x","valueTemplate":"{{.t}}"}]}}}]"#;
        assert!(err(short, "[]").contains("placeholder"));
        let ssh = r#"[{"ref":"a","sourceRef":"s","projection":{"type":"http_headers",
            "sshProxy":{}}}]"#;
        assert_eq!(
            err(ssh, "[]"),
            "credentialBindings[0].projection.sshProxy: the settings of another projection type"
        );
        // A login is made on postgres, and postgres needs a login.
        let login = r#"[{"ref":"a","sourceRef":"s","projection":{"type":"username_password"}}]"#;
        assert!(
            err(login, r#"[{"credentialRef":"a","domains":["db.test"]}]"#)
                .starts_with("egress.credentialRules[0].protocol: ")
        );
        assert!(
            err(
                hb,
                r#"[{"credentialRef":"a","protocol":"postgres","domains":["db.test"]}]"#
            )
            .starts_with("egress.credentialRules[0].protocol: ")
        );
        // A client certificate is the connection's: no request is matched.
        let mtls =
            r#"[{"ref":"a","sourceRef":"s","projection":{"type":"tls_client_certificate"}}]"#;
        assert_eq!(
            err(
                mtls,
                r#"[{"credentialRef":"a","domains":["x.com"],"httpMatch":{"methods":["GET"]}}]"#
            ),
            "egress.credentialRules[0].httpMatch: a client certificate is presented per connection: no request can be matched"
        );
        assert!(
            err(
                mtls,
                r#"[{"credentialRef":"a","protocol":"http","domains":["x.com"]}]"#
            )
            .starts_with("egress.credentialRules[0].protocol: ")
        );
        let by_query = r#"[{"credentialRef":"a","domains":["x.com"],
            "httpMatch":{"query":[{"name":"k"}],"headers":[]}}]"#;
        assert_eq!(
            err(hb, by_query),
            "egress.credentialRules[0].httpMatch.query: not supported by Sandstone yet"
        );
        assert!(!format!("{:?}", values()).contains("s3cr3t"));
        assert!(values().render("{{ .missing }}").is_err());
    }

    #[test]
    fn a_client_certificate_is_chosen_per_connection_never_per_request() {
        let inj = injection(
            r#"[{"ref":"h","sourceRef":"s","projection":{"type":"http_headers"}},
                {"ref":"c","sourceRef":"cert","projection":{"type":"tls_client_certificate"}}]"#,
            r#"[{"name":"hdr","credentialRef":"h","domains":["api.corp"]},
                {"name":"mtls","credentialRef":"c","domains":["*.corp"],"ports":[{"port":8443}]}]"#,
        );
        let (rule, b) = inj.client_certificate("api.corp", 8443).unwrap();
        assert_eq!(
            (rule.name.as_str(), b.source_ref.as_str()),
            ("mtls", "cert")
        );
        assert!(inj.client_certificate("api.corp", 443).is_none());
        assert!(inj.client_certificate("api.other", 8443).is_none());
        // Requests get the header binding only, and the connection is intercepted.
        let refs: Vec<&str> = inj
            .for_request("api.corp", 8443, true, "GET", "/")
            .iter()
            .map(|(_, b)| b.reference.as_str())
            .collect();
        assert_eq!(refs, ["h"]);
        assert!(inj.intercepts("x.corp", 8443, true));
        // A login is found only for a postgres rule's host and port.
        let db = injection(
            r#"[{"ref":"db","sourceRef":"login","projection":{"type":"username_password"}}]"#,
            r#"[{"name":"pg","credentialRef":"db","protocol":"postgres","domains":["db.corp"],"ports":[{"port":5432}]}]"#,
        );
        assert_eq!(db.login("db.corp", 5432).unwrap().1.name, "pg");
        assert!(db.login("db.corp", 5433).is_none() && db.login("web.corp", 5432).is_none());
        // Nor is a postgres rule an HTTP one.
        assert!(!db.intercepts("db.corp", 5432, false) && !db.intercepts("db.corp", 5432, true));
        // A headers projection never renders from another kind of source.
        let (_, hb) = inj.for_request("api.corp", 443, true, "GET", "/")[0];
        let cert = SourceValues {
            kind: CredentialSourceKind::StaticTlsClientCertificate,
            values: BTreeMap::from([("certificatePem".into(), "x".into())]),
        };
        let (mut h, mut pq, mut body) = (hyper::HeaderMap::new(), String::new(), Vec::new());
        let e = project(
            hb,
            &cert,
            RequestParts {
                headers: &mut h,
                path_and_query: &mut pq,
                body: &mut body,
            },
        )
        .unwrap_err();
        assert!(matches!(e, ProjectionError::SourceKind { .. }), "{e}");
        assert!(h.is_empty());
    }

    #[test]
    fn every_host_is_only_for_placeholders_and_each_credential_applies_once() {
        let placeholders = r#"[
            {"ref":"a","sourceRef":"s","projection":{"type":"placeholder_substitution",
             "placeholderSubstitution":{"replacements":[{"placeholder":"PLACEHOLDER_A",
             "valueTemplate":"{{.token}}","locations":["header","body"]}]}}},
            {"ref":"b","sourceRef":"s","projection":{"type":"placeholder_substitution",
             "placeholderSubstitution":{"replacements":[{"placeholder":"PLACEHOLDER_B",
             "valueTemplate":"{{.token}}"}]}}}]"#;
        let inj = injection(
            placeholders,
            r#"[{"credentialRef":"a","domains":["*"]},{"credentialRef":"a","domains":["x.com"]},
                {"credentialRef":"b","domains":["x.com"]}]"#,
        );
        assert!(inj.intercepts("anything.example", 443, true));
        let both = inj.for_request("x.com", 443, true, "POST", "/");
        let refs: Vec<&str> = both.iter().map(|(_, b)| b.reference.as_str()).collect();
        assert_eq!(refs, ["a", "b"]);
        let only_a = inj.for_request("y.org", 443, true, "POST", "/");
        assert_eq!(only_a.len(), 1);
        let (mut h, mut pq, mut body) = (hyper::HeaderMap::new(), String::from("/"), Vec::new());
        h.insert("authorization", "Bearer PLACEHOLDER_A".parse().unwrap());
        let req = RequestParts {
            headers: &mut h,
            path_and_query: &mut pq,
            body: &mut body,
        };
        project(only_a[0].1, &values(), req).unwrap();
        assert_eq!(h["authorization"], "Bearer s3cr3t");
        assert_eq!(body, [("PLACEHOLDER_A".to_string(), "s3cr3t".to_string())]);
        // A header credential sent to every host is refused.
        let header = r#"[{"ref":"h","sourceRef":"s","projection":{"type":"http_headers"}}]"#;
        let rules: Vec<CredentialRule> =
            serde_json::from_str(r#"[{"credentialRef":"h","domains":["*"]}]"#).unwrap();
        let e = validate(
            &serde_json::from_str::<Vec<CredentialBinding>>(header).unwrap(),
            &rules,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("egress.credentialRules[0].domains[0]"),
            "{e}"
        );
    }
}
