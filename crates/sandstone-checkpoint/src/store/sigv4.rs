//! AWS Signature Version 4 for S3, by hand: HMAC-SHA256 (`sandstone_api::hmac`), the
//! canonical request, the string to sign and the derived signing key, as
//! AWS documents them. About eighty lines instead of an SDK.

use sandstone_api::Secret;
use sha2::{Digest, Sha256};

/// An access key; the secret part prints as `[redacted]`.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

use sandstone_api::hmac::sha256 as hmac;

/// S3's URI encoding: every byte but `A-Za-z0-9-_.~` as `%XX`, and `/`
/// too unless it separates path segments.
pub(crate) fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `20130524T000000Z` for a Unix second.
pub(crate) fn amz_date(unix_secs: i64) -> String {
    let rfc = sandstone_api::timefmt::rfc3339_ms(unix_secs * 1000);
    format!("{}Z", rfc[..19].replace(['-', ':'], ""))
}

/// What is signed of one request. `headers` are lower-case names with
/// their values and must include `host`, `x-amz-date` and
/// `x-amz-content-sha256` (and `x-amz-security-token` with a session
/// token); the request must send exactly these.
pub(crate) struct Request<'a> {
    pub method: &'a str,
    /// Already URI-encoded.
    pub path: &'a str,
    /// Already canonical: sorted, each name and value URI-encoded.
    pub query: &'a str,
    pub headers: &'a [(&'a str, String)],
    pub payload_sha256: &'a str,
    pub amz_date: &'a str,
}

/// The `Authorization` header's value.
pub(crate) fn authorization(creds: &Credentials, region: &str, req: &Request<'_>) -> String {
    let mut headers: Vec<_> = req.headers.iter().collect();
    headers.sort_by_key(|(name, _)| *name);
    let canonical_headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}:{}\n", value.trim()))
        .collect();
    let signed: Vec<&str> = headers.iter().map(|(name, _)| *name).collect();
    let signed = signed.join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
        req.method, req.path, req.query, req.payload_sha256
    );
    let date = &req.amz_date[..8];
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        req.amz_date,
        sha256_hex(canonical.as_bytes())
    );
    let secret = format!("AWS4{}", creds.secret_access_key.expose());
    let key = [region, "s3", "aws4_request"]
        .iter()
        .fold(hmac(secret.as_bytes(), date.as_bytes()), |k, part| {
            hmac(&k, part.as_bytes())
        });
    let signature = hex::encode(hmac(&key, to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
        creds.access_key_id
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_credentials() -> Credentials {
        Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            session_token: None,
        }
    }

    /// AWS's worked example "GET Object" from the S3 SigV4 documentation.
    #[test]
    fn signs_the_documented_get_object_example() {
        let empty = sha256_hex(b"");
        let headers = [
            ("host", "examplebucket.s3.amazonaws.com".to_string()),
            ("range", "bytes=0-9".to_string()),
            ("x-amz-content-sha256", empty.clone()),
            ("x-amz-date", "20130524T000000Z".to_string()),
        ];
        let auth = authorization(
            &example_credentials(),
            "us-east-1",
            &Request {
                method: "GET",
                path: "/test.txt",
                query: "",
                headers: &headers,
                payload_sha256: &empty,
                amz_date: "20130524T000000Z",
            },
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// AWS's worked example "GET Bucket (List Objects)": a query string.
    #[test]
    fn signs_the_documented_list_objects_example() {
        let empty = sha256_hex(b"");
        let headers = [
            ("host", "examplebucket.s3.amazonaws.com".to_string()),
            ("x-amz-content-sha256", empty.clone()),
            ("x-amz-date", "20130524T000000Z".to_string()),
        ];
        let auth = authorization(
            &example_credentials(),
            "us-east-1",
            &Request {
                method: "GET",
                path: "/",
                query: "max-keys=2&prefix=J",
                headers: &headers,
                payload_sha256: &empty,
                amz_date: "20130524T000000Z",
            },
        );
        assert!(
            auth.ends_with(
                "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
            ),
            "{auth}"
        );
    }

    #[test]
    fn encodes_and_dates_as_s3_wants() {
        assert_eq!(uri_encode("a b/c~d+é", true), "a%20b/c~d%2B%C3%A9");
        assert_eq!(uri_encode("x/y", false), "x%2Fy");
        assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
        assert_eq!(amz_date(1_369_353_661), "20130524T000101Z");
    }
}
