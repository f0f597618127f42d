//! Registry logins: the operator's credentials per registry host, read
//! from a Docker `config.json` (`{"auths": {"host": {"auth":
//! base64("user:password")}}}`, or `username`/`password`), and the
//! `WWW-Authenticate` challenge a registry answers an anonymous request
//! with.

use crate::{Error, Result};
use base64::Engine as _;
use sandstone_api::Secret;
use std::collections::HashMap;
use std::path::Path;

/// Credentials by registry host. Never printed: `Debug` shows hosts only.
#[derive(Clone, Default)]
pub struct Auths(HashMap<String, (String, Secret)>);

impl std::fmt::Debug for Auths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

#[derive(serde::Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, Entry>,
}

#[derive(serde::Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl Auths {
    /// Reads a Docker `config.json`.
    pub fn load(path: &Path) -> Result<Auths> {
        let bad = |reason: String| Error::AuthFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let file: ConfigFile = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not a Docker config.json: {e}")))?;
        let mut out = HashMap::new();
        for (host, e) in file.auths {
            let (user, pass) = match (e.auth, e.username, e.password) {
                (Some(auth), _, _) => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .ok_or_else(|| {
                            bad(format!("auths.{host}.auth is not base64 of user:password"))
                        })?;
                    let (u, p) = raw.split_once(':').ok_or_else(|| {
                        bad(format!("auths.{host}.auth is not base64 of user:password"))
                    })?;
                    (u.to_string(), p.to_string())
                }
                (None, Some(u), Some(p)) => (u, p),
                _ => {
                    return Err(bad(format!(
                        "auths.{host} has neither auth nor username and password"
                    )));
                }
            };
            out.insert(normalize(&host), (user, Secret::new(pass)));
        }
        Ok(Auths(out))
    }

    /// Credentials for `registry` (`host[:port]`); Docker Hub's are
    /// filed under its old index URL too.
    pub(crate) fn get(&self, registry: &str) -> Option<&(String, Secret)> {
        self.0.get(&normalize(registry))
    }
}

/// `https://index.docker.io/v1/` and `docker.io` both mean Docker Hub's
/// registry; other keys are hosts, with or without a scheme.
fn normalize(host: &str) -> String {
    let h = host
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let h = h.split('/').next().unwrap_or(h);
    match h {
        "index.docker.io" | "docker.io" => "registry-1.docker.io".into(),
        other => other.to_string(),
    }
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

impl Challenge {
    pub(crate) fn parse(header: &str) -> Option<Challenge> {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut fields: HashMap<String, String> = HashMap::new();
        // key="value" pairs; values may hold commas (scopes do).
        let mut rest = params;
        while let Some((key, after)) = rest.split_once('=') {
            let key = key
                .trim()
                .trim_start_matches(',')
                .trim()
                .to_ascii_lowercase();
            let (value, next) = match after.strip_prefix('"') {
                Some(quoted) => {
                    let end = quoted.find('"')?;
                    (&quoted[..end], &quoted[end + 1..])
                }
                None => after.split_once(',').map_or((after, ""), |(v, n)| (v, n)),
            };
            fields.insert(key, value.to_string());
            rest = next;
        }
        Some(Challenge::Bearer {
            realm: fields.remove("realm")?,
            service: fields.remove("service"),
            scope: fields.remove("scope"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_as_registries_send_them() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.io/token",service="registry.io",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.io/token".into(),
                service: Some("registry.io".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    #[test]
    fn docker_config_logins_are_read_by_host_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("sst-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("me:s3cret-pw");
        std::fs::write(
            &file,
            format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{auth}"}},
                "127.0.0.1:5000": {{"username": "u", "password": "p"}}}}}}"#
            ),
        )
        .unwrap();
        let a = Auths::load(&file).unwrap();
        assert_eq!(
            a.get("registry-1.docker.io").unwrap().1.expose(),
            "s3cret-pw"
        );
        assert_eq!(a.get("127.0.0.1:5000").unwrap().0, "u");
        assert!(!format!("{a:?}").contains("s3cret"));
        std::fs::write(&file, r#"{"auths": {"x.io": {"auth": "bm9jb2xvbg=="}}}"#).unwrap();
        let e = Auths::load(&file).unwrap_err().to_string();
        assert!(e.contains("auths.x.io.auth"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
