//! Credentials the worker holds and never passes on: the environment key,
//! the work secret and the sessions token derived from it.

use base64::Engine;

/// A credential whose `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The work secret is base64url(JSON) with optional padding; its
/// `sessions_token` authorises the per-item calls.
pub fn sessions_token(secret: &str) -> Option<Secret> {
    let trimmed = secret.trim().trim_end_matches('=');
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v["sessions_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(Secret::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_out_of_padded_and_unpadded_secrets() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE.encode(s);
        let padded = b64(r#"{"sessions_token":"sk-x","api_base_url":"u"}"#);
        assert_eq!(sessions_token(&padded).unwrap().expose(), "sk-x");
        assert_eq!(
            sessions_token(padded.trim_end_matches('='))
                .unwrap()
                .expose(),
            "sk-x"
        );
        assert!(sessions_token(&b64(r#"{"other":1}"#)).is_none());
        assert!(sessions_token("not base64!").is_none());
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("sk-very-secret");
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
    }
}
