//! The API key a request carries, read the same way by every API.

/// The WebSocket subprotocol a browser names to carry its key, since a
/// browser cannot set headers on a WebSocket: it opens
/// `new WebSocket(url, [WS_PROTOCOL, "bearer." + key])` and the server
/// answers with [`WS_PROTOCOL`] alone, so the key is never echoed.
pub const WS_PROTOCOL: &str = "sandstone.v1";

/// The key of `Authorization: Bearer <key>` (the scheme in any case: HTTP
/// auth schemes are case-insensitive, RFC 9110 §11.1), else of
/// `X-Api-Key`, else of a `bearer.<key>` WebSocket subprotocol. `None`
/// when none holds a key. `header` reads a request header by name.
pub fn api_key<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<&'a str> {
    let bearer = header("authorization").and_then(|v| {
        let v = v.trim_start();
        let (scheme, rest) = v.split_at(v.find([' ', '\t'])?);
        scheme.eq_ignore_ascii_case("bearer").then_some(rest)
    });
    let subprotocol = || {
        header("sec-websocket-protocol")?
            .split(',')
            .find_map(|p| p.trim().strip_prefix("bearer."))
    };
    bearer
        .or_else(|| header("x-api-key"))
        .or_else(subprotocol)
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// What an API key may do (Sandbox0's roles, less `builder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, keys and nodes included.
    Admin,
    /// Sandboxes, templates, credentials, agents and sessions; not keys
    /// or nodes.
    Developer,
    /// Reads only: no terminals, no file contents.
    Viewer,
}

/// What a request does, as far as roles go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reads metadata: lists, statuses, policies, audit records.
    Read,
    /// Reads what a sandbox holds: a file's bytes, its processes' output
    /// or terminal, an uploaded file's content.
    ReadContents,
    /// Changes something.
    Write,
    /// Creates, lists or removes API keys.
    ManageKeys,
    /// Drains and undrains nodes.
    ManageNodes,
}

/// Sandbox0's permission names, and what each lets a key do.
const PERMISSIONS: &[(&str, Action)] = &[
    ("sandbox:read", Action::Read),
    ("sandbox:files", Action::ReadContents),
    ("sandbox:write", Action::Write),
    ("sandbox:exec", Action::Write),
    ("template:read", Action::Read),
    ("template:write", Action::Write),
    ("credential:read", Action::Read),
    ("credential:write", Action::Write),
    ("agent:read", Action::Read),
    ("agent:write", Action::Write),
    ("session:read", Action::Read),
    ("session:write", Action::Write),
    ("apikey:manage", Action::ManageKeys),
    ("node:manage", Action::ManageNodes),
];

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "developer" => Ok(Role::Developer),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!(
                "{other:?} is not a role (admin, developer, viewer)"
            )),
        }
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
        }
    }

    pub fn may(self, action: Action) -> bool {
        match self {
            Role::Admin => true,
            Role::Developer => !matches!(action, Action::ManageKeys | Action::ManageNodes),
            Role::Viewer => action == Action::Read,
        }
    }

    /// The role's permissions as `GET /api-keys/current` names them.
    pub fn permissions(self) -> Vec<&'static str> {
        PERMISSIONS
            .iter()
            .filter(|(_, needs)| self.may(*needs))
            .map(|(name, _)| *name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::api_key;
    use super::{Action, Role};

    #[test]
    fn roles_nest() {
        let all = [
            Action::Read,
            Action::ReadContents,
            Action::Write,
            Action::ManageKeys,
            Action::ManageNodes,
        ];
        for a in all {
            assert!(Role::Admin.may(a));
            // What a viewer may, a developer may; what a developer may, an admin may.
            assert!(!Role::Viewer.may(a) || Role::Developer.may(a), "{a:?}");
        }
        assert!(!Role::Viewer.may(Action::ReadContents));
        assert!(!Role::Developer.may(Action::ManageKeys));
    }

    /// A request's key from its authorization, x-api-key and
    /// sec-websocket-protocol headers.
    fn key<'a>(
        authorization: Option<&'a str>,
        x_api_key: Option<&'a str>,
        ws: Option<&'a str>,
    ) -> Option<&'a str> {
        api_key(|name| match name {
            "authorization" => authorization,
            "x-api-key" => x_api_key,
            "sec-websocket-protocol" => ws,
            _ => None,
        })
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        for h in [
            "Bearer k1",
            "bearer k1",
            "BEARER k1",
            "bEaReR  k1 ",
            "Bearer\tk1",
        ] {
            assert_eq!(key(Some(h), None, None), Some("k1"), "{h:?}");
        }
    }

    #[test]
    fn other_schemes_fall_back_to_x_api_key() {
        assert_eq!(key(Some("Basic a2V5"), Some("k2"), None), Some("k2"));
        assert_eq!(key(Some("Bearerk1"), None, None), None);
        assert_eq!(key(Some("Bearer "), None, None), None);
        assert_eq!(key(None, Some(" k2 "), None), Some("k2"));
        assert_eq!(key(Some("Bearer k1"), Some("k2"), None), Some("k1"));
        assert_eq!(key(None, None, None), None);
    }

    #[test]
    fn a_browser_websocket_carries_its_key_as_a_subprotocol() {
        let ws = Some("sandstone.v1, bearer.s0_local_ab12");
        assert_eq!(key(None, None, ws), Some("s0_local_ab12"));
        // A header wins over the subprotocol; a list without one has no key.
        assert_eq!(key(Some("Bearer k1"), None, ws), Some("k1"));
        assert_eq!(key(None, None, Some("sandstone.v1")), None);
        assert_eq!(key(None, None, Some("bearer.")), None);
    }
}
