//! Sandbox0's app services and preview grants: servers listening on a
//! loopback port inside a sandbox, reached through the daemon at a host
//! name of their own (`services` for declared, possibly public ones, a
//! preview grant for a short look at any port).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The longest a route may let a request wait for its sandbox's server.
pub const MAX_ROUTE_TIMEOUT_SECONDS: u32 = 300;

/// One service a sandbox exposes (`config.services[i]`,
/// `PUT /sandboxes/{id}/services`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppService {
    /// A DNS label: it is part of the service's host name.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The loopback port inside the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<ServiceRuntime>,
    pub ingress: Ingress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRuntime {
    #[serde(rename = "type")]
    pub kind: RuntimeKind,
    /// The argv a `cmd` service runs (started on every runtime generation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// Sandbox0's python function services: refused (not supported yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// The daemon starts `command` with every runtime generation.
    Cmd,
    /// Something in the sandbox starts the server; the daemon only routes.
    Manual,
    /// Sandbox0's python function services (not supported).
    Function,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingress {
    /// Reachable without an API key or grant (subject to each route's
    /// `auth`).
    pub public: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Upper-case HTTP methods; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Replaces `path_prefix` in the path the server sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RouteAuth>,
    /// Refused when set (not supported yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<serde_json::Value>,
    /// Refused when set (not supported yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<serde_json::Value>,
    /// How long a request may wait for the server (connecting, while a
    /// resumed sandbox's `cmd` service starts, and for its answer's head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// A request may resume the paused sandbox (with `auto_resume`).
    pub resume: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAuth {
    pub mode: AuthMode,
    /// Hex SHA-256 of the accepted bearer token (`mode: bearer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_name: Option<String>,
    /// Hex SHA-256 of the required header's value (`mode: header`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_value_sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    None,
    Bearer,
    Header,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `PUT /sandboxes/{id}/services`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesUpdate {
    pub services: Vec<AppService>,
}

/// A service as listed: what was declared plus where it is reached.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    #[serde(flatten)]
    pub service: AppService,
    pub publishable: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publish_blockers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServicesView {
    pub sandbox_id: String,
    pub services: Vec<ServiceView>,
    pub exposure_domain: String,
}

/// What a preview's loopback server speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    /// Refused (not supported yet): the daemon speaks plain HTTP inward.
    Https,
}

pub const PREVIEW_TTL_DEFAULT: u32 = 900;
pub const PREVIEW_TTL_MIN: u32 = 30;
pub const PREVIEW_TTL_MAX: u32 = 3600;

/// `POST /sandboxes/{id}/previews`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewCreate {
    pub port: u32,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub ttl_seconds: Option<u32>,
}

/// `PUT /sandboxes/{id}/previews/{preview_id}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewRenew {
    #[serde(default)]
    pub ttl_seconds: Option<u32>,
}

/// A preview grant as the API answers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviewGrant {
    pub id: String,
    pub sandbox_id: String,
    pub port: u16,
    pub protocol: Protocol,
    /// The one-time bootstrap URL (creation) or the clean URL (renewal).
    pub url: String,
    pub target_url: String,
    pub expires_at: String,
    pub runtime_generation: i64,
}

/// A checked `ttl_seconds` (default 900, 30 to 3600).
pub fn preview_ttl(ttl: Option<u32>) -> Result<u32, String> {
    match ttl {
        None => Ok(PREVIEW_TTL_DEFAULT),
        Some(t) if (PREVIEW_TTL_MIN..=PREVIEW_TTL_MAX).contains(&t) => Ok(t),
        Some(t) => Err(format!(
            "invalid field `ttl_seconds`: {t} is not between {PREVIEW_TTL_MIN} and {PREVIEW_TTL_MAX}"
        )),
    }
}

/// A checked preview request: the port and the path opened after the
/// bootstrap.
pub fn check_preview(req: &PreviewCreate) -> Result<(u16, String, u32), String> {
    let port = u16::try_from(req.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid field `port`: {} is not 1 to 65535", req.port))?;
    if req.protocol == Protocol::Https {
        return Err(
            "invalid field `protocol`: https loopback servers are not supported by \
                    Sandstone yet"
                .into(),
        );
    }
    let path = req.path.clone().unwrap_or_else(|| "/".into());
    // Same-origin only: an absolute path, never `//host` or a scheme.
    if !path.starts_with('/') || path.starts_with("//") || path.contains(['\\', '\r', '\n']) {
        return Err(format!(
            "invalid field `path`: {path:?} is not an absolute path on the preview's origin"
        ));
    }
    Ok((port, path, preview_ttl(req.ttl_seconds)?))
}

/// Whether `s` is a DNS label (lower case, digits, inner hyphens, at most
/// 63), without `--` (the daemon's separator in service host names).
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn is_sha256_hex(s: Option<&str>) -> bool {
    s.is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Checks a sandbox's services; the error names the field (`field` is
/// where the list sits: `services` or `config.services`).
pub fn check_services(services: &[AppService], field: &str) -> Result<(), String> {
    let bad =
        |i: usize, rest: &str, why: &str| format!("invalid field `{field}[{i}].{rest}`: {why}");
    for (i, s) in services.iter().enumerate() {
        if !is_label(&s.id) {
            return Err(bad(
                i,
                "id",
                "must be a DNS label (a-z, 0-9, inner single hyphens)",
            ));
        }
        if services[..i].iter().any(|o| o.id == s.id) {
            return Err(bad(i, "id", &format!("{:?} is declared twice", s.id)));
        }
        let kind = s.runtime.as_ref().map_or(RuntimeKind::Manual, |r| r.kind);
        match kind {
            RuntimeKind::Function => {
                return Err(bad(
                    i,
                    "runtime.type",
                    "function services are not supported by Sandstone yet",
                ));
            }
            RuntimeKind::Cmd => {
                let r = s.runtime.as_ref().expect("cmd comes from a runtime");
                if r.command.is_empty() || r.command[0].is_empty() {
                    return Err(bad(i, "runtime.command", "a cmd service needs its argv"));
                }
                if r.cwd.as_deref().is_some_and(|c| !c.starts_with('/')) {
                    return Err(bad(i, "runtime.cwd", "must be an absolute path"));
                }
            }
            RuntimeKind::Manual => {}
        }
        if s.runtime.as_ref().is_some_and(|r| r.function.is_some()) {
            return Err(bad(
                i,
                "runtime.function",
                "function services are not supported by Sandstone yet",
            ));
        }
        if s.port.is_none_or(|p| p == 0) {
            return Err(bad(i, "port", "a port from 1 to 65535 is required"));
        }
        for (j, r) in s.ingress.routes.iter().enumerate() {
            let at = |rest: &str| format!("ingress.routes[{j}].{rest}");
            if r.id.is_empty() || s.ingress.routes[..j].iter().any(|o| o.id == r.id) {
                return Err(bad(
                    i,
                    &at("id"),
                    "must be present and unique in the service",
                ));
            }
            for (name, p) in [
                ("path_prefix", &r.path_prefix),
                ("rewrite_prefix", &r.rewrite_prefix),
            ] {
                // A prefix is compared with requests' canonical paths, so
                // it must be one itself.
                if p.as_deref().is_some_and(|p| {
                    p.contains(['?', '#']) || canonical_path(p).ok().as_deref() != Some(p)
                }) {
                    return Err(bad(
                        i,
                        &at(name),
                        "must be an absolute path in canonical form (ASCII, no query, no . or .. segments, no //, no escaped unreserved characters)",
                    ));
                }
            }
            if let Some(m) = r
                .methods
                .iter()
                .find(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()))
            {
                return Err(bad(
                    i,
                    &at("methods"),
                    &format!("{m:?} is not an upper-case method"),
                ));
            }
            if r.timeout_seconds
                .is_some_and(|t| t == 0 || t > MAX_ROUTE_TIMEOUT_SECONDS)
            {
                return Err(bad(
                    i,
                    &at("timeout_seconds"),
                    &format!("must be between 1 and {MAX_ROUTE_TIMEOUT_SECONDS}"),
                ));
            }
            if r.cors.is_some() {
                return Err(bad(i, &at("cors"), "not supported by Sandstone yet"));
            }
            if r.rate_limit.is_some() {
                return Err(bad(i, &at("rate_limit"), "not supported by Sandstone yet"));
            }
            if r.resume && kind != RuntimeKind::Cmd {
                return Err(bad(
                    i,
                    &at("resume"),
                    "a route that resumes the sandbox needs a restartable runtime (type cmd)",
                ));
            }
            if let Some(a) = &r.auth {
                match a.mode {
                    AuthMode::None => {}
                    AuthMode::Bearer if !is_sha256_hex(a.bearer_token_sha256.as_deref()) => {
                        return Err(bad(
                            i,
                            &at("auth.bearer_token_sha256"),
                            "64 hex digits are required",
                        ));
                    }
                    AuthMode::Header
                        if a.header_name
                            .as_deref()
                            .is_none_or(|h| header_token(h).is_none()) =>
                    {
                        return Err(bad(i, &at("auth.header_name"), "a header name is required"));
                    }
                    AuthMode::Header if !is_sha256_hex(a.header_value_sha256.as_deref()) => {
                        return Err(bad(
                            i,
                            &at("auth.header_value_sha256"),
                            "64 hex digits are required",
                        ));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// A header name in lower case when it is a valid token (RFC 9110).
fn header_token(h: &str) -> Option<String> {
    let ok = !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then(|| h.to_ascii_lowercase())
}

impl AppService {
    /// The route a request takes: the longest matching `path_prefix`
    /// whose methods allow it. A service without routes has one
    /// implicit route for everything, needing no auth and not resuming.
    pub fn route_for(&self, method: &str, path: &str) -> Option<Option<&Route>> {
        if self.ingress.routes.is_empty() {
            return Some(None);
        }
        self.ingress
            .routes
            .iter()
            .filter(|r| prefix_matches(r.path_prefix.as_deref().unwrap_or("/"), path))
            .filter(|r| r.methods.is_empty() || r.methods.iter().any(|m| m == method))
            .max_by_key(|r| r.path_prefix.as_deref().map_or(0, str::len))
            .map(Some)
    }
}

/// The one spelling of a request's path that routes are matched on and
/// the server is sent, so no other spelling of a protected path slips
/// past its route's prefix (`/pub/../admin`, `/%61dmin`, `/pub//admin`).
///
/// Escapes of unreserved characters are decoded and the rest upper-cased;
/// empty segments collapse. What a server could read as another path is
/// refused rather than guessed at: dot segments (`..`, `%2e%2e`, `..;x`),
/// escaped separators (`%2f`, `%5c`), backslashes and NULs, and anything
/// not plain ASCII. The query is passed through as it came.
pub fn canonical_path(path_and_query: &str) -> Result<String, &'static str> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    if !path.starts_with('/') {
        return Err("the path must start with /");
    }
    let mut out = String::with_capacity(path_and_query.len());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let segment = decode_unreserved(segment)?;
        // Servlet containers drop `;params` (`/admin;x` is `/admin` there).
        if segment.contains(';') {
            return Err("path parameters (;) are not accepted");
        }
        if segment == "." || segment == ".." {
            return Err("dot segments (. and ..) are not accepted");
        }
        out.push('/');
        out.push_str(&segment);
    }
    if out.is_empty() || path.ends_with('/') {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

fn decode_unreserved(segment: &str) -> Result<String, &'static str> {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |j: usize| {
                bytes
                    .get(j)
                    .and_then(|c| char::from(*c).to_digit(16))
                    .ok_or("a % must be followed by two hex digits")
            };
            let c = u8::try_from(hex(i + 1)? * 16 + hex(i + 2)?).unwrap_or(0);
            match c {
                b'/' | b'\\' | 0 => {
                    return Err("escaped separators and NULs (%2F, %5C, %00) are not accepted");
                }
                c if c.is_ascii_alphanumeric() || b"-._~".contains(&c) => out.push(char::from(c)),
                c => out.push_str(&format!("%{c:02X}")),
            }
            i += 3;
            continue;
        }
        if b == b'\\' || !b.is_ascii_graphic() {
            return Err("backslashes, spaces and non-ASCII bytes must be escaped");
        }
        out.push(char::from(b));
        i += 1;
    }
    Ok(out)
}

/// `/api` matches `/api`, `/api/`, `/api/x` and `/api.json`, not `/apix`;
/// in any case, since many servers ignore it (`/API/x` must not slip past
/// a protected `/api` to a public catch-all), as they take `.json` for a
/// format of the same path.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let (p, q) = (prefix.trim_end_matches('/').as_bytes(), path.as_bytes());
    q.len() >= p.len()
        && q[..p.len()].eq_ignore_ascii_case(p)
        && matches!(q.get(p.len()), None | Some(b'/' | b'?' | b'.'))
}

impl Route {
    /// The path the server sees for `path` (which this route matched).
    pub fn rewrite(&self, path: &str) -> String {
        match (&self.path_prefix, &self.rewrite_prefix) {
            (Some(from), Some(to)) => {
                let rest = &path[from.trim_end_matches('/').len()..];
                let joined = format!("{}{rest}", to.trim_end_matches('/'));
                if joined.starts_with('/') {
                    joined
                } else {
                    format!("/{joined}")
                }
            }
            _ => path.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(v: serde_json::Value) -> AppService {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn request_paths_have_one_spelling() {
        for (given, canonical) in [
            ("/", "/"),
            ("/a//b/", "/a/b/"),
            ("//admin", "/admin"),
            ("/%61dmin/x?q=%2e%2e", "/admin/x?q=%2e%2e"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a.b/.well-known/..x", "/a.b/.well-known/..x"),
        ] {
            assert_eq!(canonical_path(given).as_deref(), Ok(canonical), "{given}");
        }
        for bad in [
            "/pub/../admin",
            "/pub/./admin",
            "/pub/%2e%2e/admin",
            "/pub/%2E./admin",
            "/pub/..%2fadmin",
            "/pub/..%5Cadmin",
            "/pub/..;x/admin",
            "/admin;x/secret",
            "/pub/a%00",
            "/pub\\..\\admin",
            "/pub/%zz",
            "/pub/%4",
            "*",
            "pub",
        ] {
            assert!(canonical_path(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn services_are_checked_field_by_field() {
        let ok = service(json!({"id": "web", "port": 8000, "ingress": {"public": true}}));
        assert_eq!(
            check_services(std::slice::from_ref(&ok), "services"),
            Ok(())
        );
        let cases = [
            (
                json!({"id": "Web", "port": 1, "ingress": {"public": true}}),
                "services[0].id",
            ),
            (
                json!({"id": "web", "ingress": {"public": true}}),
                "services[0].port",
            ),
            (
                json!({"id": "web", "port": 1, "runtime": {"type": "function"}, "ingress": {"public": true}}),
                "services[0].runtime.type",
            ),
            (
                json!({"id": "web", "port": 1, "runtime": {"type": "cmd"}, "ingress": {"public": true}}),
                "services[0].runtime.command",
            ),
            (
                json!({"id": "web", "port": 1, "ingress": {"public": true, "routes": [{"id": "r", "resume": true}]}}),
                "services[0].ingress.routes[0].resume",
            ),
            (
                json!({"id": "web", "port": 1, "ingress": {"public": true, "routes": [{"id": "r", "resume": false, "auth": {"mode": "bearer", "bearer_token_sha256": "ab"}}]}}),
                "services[0].ingress.routes[0].auth.bearer_token_sha256",
            ),
            (
                json!({"id": "web", "port": 1, "ingress": {"public": true, "routes": [{"id": "r", "resume": false, "path_prefix": "api"}]}}),
                "services[0].ingress.routes[0].path_prefix",
            ),
            (
                json!({"id": "web", "port": 1, "ingress": {"public": true, "routes": [{"id": "r", "resume": false, "cors": {}}]}}),
                "services[0].ingress.routes[0].cors",
            ),
        ];
        for (v, field) in cases {
            let err = check_services(&[service(v.clone())], "services").unwrap_err();
            assert!(err.contains(&format!("`{field}`")), "{v}: {err}");
        }
        let twice = [ok.clone(), ok];
        assert!(
            check_services(&twice, "services")
                .unwrap_err()
                .contains("services[1].id")
        );
    }

    #[test]
    fn the_longest_matching_prefix_with_the_method_routes_a_request() {
        let s = service(
            json!({"id": "web", "port": 1, "ingress": {"public": true, "routes": [
                {"id": "all", "resume": false},
                {"id": "api", "path_prefix": "/api", "rewrite_prefix": "/v2", "methods": ["GET"], "resume": false},
            ]}}),
        );
        assert_eq!(s.route_for("GET", "/api/x").unwrap().unwrap().id, "api");
        assert_eq!(s.route_for("POST", "/api/x").unwrap().unwrap().id, "all");
        assert_eq!(s.route_for("GET", "/apix").unwrap().unwrap().id, "all");
        // Spellings servers take for the same path take its route.
        for same in ["/API/x", "/Api", "/api.json"] {
            assert_eq!(
                s.route_for("GET", same).unwrap().unwrap().id,
                "api",
                "{same}"
            );
        }
        let api = s.route_for("GET", "/api/x?q=1").unwrap().unwrap();
        assert_eq!(api.rewrite("/api/x?q=1"), "/v2/x?q=1");
        assert_eq!(api.rewrite("/api"), "/v2");
        let narrow = service(
            json!({"id": "web", "port": 1, "ingress": {"public": true, "routes": [
            {"id": "api", "path_prefix": "/api", "resume": false}]}}),
        );
        assert!(narrow.route_for("GET", "/other").is_none());
    }

    #[test]
    fn preview_requests_are_checked() {
        let req = |v: serde_json::Value| serde_json::from_value::<PreviewCreate>(v).unwrap();
        assert_eq!(
            check_preview(&req(json!({"port": 8000}))),
            Ok((8000, "/".into(), 900))
        );
        for (v, field) in [
            (json!({"port": 0}), "port"),
            (json!({"port": 70000}), "port"),
            (json!({"port": 80, "ttl_seconds": 5}), "ttl_seconds"),
            (json!({"port": 80, "path": "//evil.example"}), "path"),
            (json!({"port": 80, "protocol": "https"}), "protocol"),
        ] {
            assert!(
                check_preview(&req(v.clone()))
                    .unwrap_err()
                    .contains(&format!("`{field}`")),
                "{v}"
            );
        }
    }
}
