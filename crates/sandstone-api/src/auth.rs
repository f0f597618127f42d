//! The API key a request carries, read the same way by every API.

/// The key of `Authorization: Bearer <key>` (the scheme in any case: HTTP
/// auth schemes are case-insensitive, RFC 9110 §11.1), else of
/// `X-Api-Key`. `None` when neither holds a key.
pub fn api_key<'a>(authorization: Option<&'a str>, x_api_key: Option<&'a str>) -> Option<&'a str> {
    let bearer = authorization.and_then(|v| {
        let v = v.trim_start();
        let (scheme, rest) = v.split_at(v.find([' ', '\t'])?);
        scheme.eq_ignore_ascii_case("bearer").then_some(rest)
    });
    bearer
        .or(x_api_key)
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::api_key;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        for h in [
            "Bearer k1",
            "bearer k1",
            "BEARER k1",
            "bEaReR  k1 ",
            "Bearer\tk1",
        ] {
            assert_eq!(api_key(Some(h), None), Some("k1"), "{h:?}");
        }
    }

    #[test]
    fn other_schemes_fall_back_to_x_api_key() {
        assert_eq!(api_key(Some("Basic a2V5"), Some("k2")), Some("k2"));
        assert_eq!(api_key(Some("Bearerk1"), None), None);
        assert_eq!(api_key(Some("Bearer "), None), None);
        assert_eq!(api_key(None, Some(" k2 ")), Some("k2"));
        assert_eq!(api_key(Some("Bearer k1"), Some("k2")), Some("k1"));
        assert_eq!(api_key(None, None), None);
    }
}
