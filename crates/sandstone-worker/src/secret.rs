//! Credentials the worker holds and never passes on: the environment key,
//! the work secret and the sessions token derived from it, each a
//! [`Secret`].

use base64::Engine;
use sandstone_agents_api::WorkSecret;

pub use sandstone_api::Secret;

/// The work secret is base64url(JSON) with optional padding; its
/// `sessions_token` authorises the per-item calls.
pub fn sessions_token(secret: &str) -> Option<Secret> {
    let trimmed = secret.trim().trim_end_matches('=');
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .ok()?;
    let secret: WorkSecret = serde_json::from_slice(&raw).ok()?;
    Some(secret.sessions_token)
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
}
