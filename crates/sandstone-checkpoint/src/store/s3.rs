//! `s3://bucket/prefix`: S3 or any S3-compatible server, over the
//! workspace's `reqwest` with a hand-written SigV4 signer.
//!
//! Why not `object_store`: its 0.14 shares the workspace's reqwest 0.13,
//! but `cargo tree` shows it adding some twenty crates (chrono, quick-xml,
//! nix, walkdir, itertools, md-5, crc-fast, humantime, async-trait, ...)
//! for the five calls used here — PUT, GET, HEAD and DELETE of an object
//! and ListObjectsV2 — which are one signed request each. The AWS SDK is
//! larger still. Path-style addressing (`endpoint/bucket/key`) is used for
//! custom endpoints, which is what MinIO, Ceph, moto and most
//! S3-compatible servers expect; AWS's own endpoint gets virtual-hosted
//! addressing. HTTPS is reqwest's rustls with aws-lc-rs (both already in
//! the workspace) and the platform verifier (the host's roots).
//! Transient failures (connection errors, HTTP 5xx) are retried twice with
//! a short backoff; every request is idempotent (chunks are
//! content-addressed, manifests are never rewritten).

use super::sigv4::{self, Credentials};
use super::{Blobs, StoreError, StoreResult, check_key, check_prefix};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use reqwest::{Method, StatusCode};
use sandstone_api::Secret;
use std::time::Duration;

const ATTEMPTS: u32 = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per request; objects are at most a few MiB.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Error codes S3 uses for a key, secret or token it does not accept.
const AUTH_CODES: &[&str] = &[
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "InvalidClientTokenId",
];

/// How to reach the bucket. Each field left `None` is taken from the
/// usual AWS variables: `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`,
/// `AWS_REGION` or `AWS_DEFAULT_REGION` (else `us-east-1`),
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// `http(s)://host[:port]` of an S3-compatible server; without one,
    /// AWS's regional endpoint.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub credentials: Option<Credentials>,
    /// `endpoint/bucket/key` (true) or `bucket.endpoint/key` (false);
    /// default: path-style for a custom endpoint, virtual-hosted for AWS.
    pub path_style: Option<bool>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The given credentials, else the environment's.
fn credentials(given: Option<Credentials>) -> StoreResult<Credentials> {
    if let Some(c) = given {
        return Ok(c);
    }
    let missing = |field| StoreError::Config {
        field,
        reason: "not set, and no credentials were given".into(),
    };
    Ok(Credentials {
        access_key_id: env("AWS_ACCESS_KEY_ID").ok_or(missing("AWS_ACCESS_KEY_ID"))?,
        secret_access_key: Secret::new(
            env("AWS_SECRET_ACCESS_KEY").ok_or(missing("AWS_SECRET_ACCESS_KEY"))?,
        ),
        session_token: env("AWS_SESSION_TOKEN").map(Secret::new),
    })
}

pub struct S3Blobs {
    client: reqwest::Client,
    name: String,
    /// `scheme://host[:port]` requests go to.
    base: String,
    /// The `Host` header, as signed.
    host: String,
    /// Shown in errors about reaching it.
    endpoint: String,
    bucket: String,
    /// Empty, or `prefix/`.
    prefix: String,
    region: String,
    credentials: Credentials,
    path_style: bool,
}

impl S3Blobs {
    pub fn new(bucket: &str, prefix: &str, options: S3Options) -> StoreResult<S3Blobs> {
        let prefix = prefix.trim_matches('/');
        let name = match prefix {
            "" => format!("s3://{bucket}"),
            p => format!("s3://{bucket}/{p}"),
        };
        let bucket_ok = !bucket.is_empty()
            && bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !bucket_ok {
            return Err(StoreError::Config {
                field: "bucket",
                reason: format!("{bucket:?} is not a bucket name"),
            });
        }
        check_prefix(&name, prefix)?;
        let region = options
            .region
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let custom = options
            .endpoint
            .map(|e| ("endpoint", e))
            .or_else(|| env("AWS_ENDPOINT_URL_S3").map(|e| ("AWS_ENDPOINT_URL_S3", e)))
            .or_else(|| env("AWS_ENDPOINT_URL").map(|e| ("AWS_ENDPOINT_URL", e)));
        let is_custom = custom.is_some();
        let path_style = options.path_style.unwrap_or(is_custom);
        let (field, endpoint) =
            custom.unwrap_or(("region", format!("https://s3.{region}.amazonaws.com")));
        let url = reqwest::Url::parse(&endpoint).map_err(|e| StoreError::Config {
            field,
            reason: format!("{endpoint:?}: {e}"),
        })?;
        let authority = match (url.scheme(), url.host_str(), url.port()) {
            ("http" | "https", Some(host), None) => host.to_string(),
            ("http" | "https", Some(host), Some(port)) => format!("{host}:{port}"),
            _ => {
                return Err(StoreError::Config {
                    field,
                    reason: format!("{endpoint:?}: expected http(s)://host[:port]"),
                });
            }
        };
        let host = if path_style {
            authority
        } else {
            format!("{bucket}.{authority}")
        };
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| StoreError::Config {
                field,
                reason: format!("HTTP client: {e}"),
            })?;
        Ok(S3Blobs {
            client,
            base: format!("{}://{host}", url.scheme()),
            host,
            bucket: bucket.into(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            region,
            credentials: credentials(options.credentials)?,
            path_style,
            // A custom endpoint is part of the store's identity (and of
            // the local index's name): the same bucket name on two
            // servers is two stores.
            name: if is_custom {
                format!("{name} at {endpoint}")
            } else {
                name
            },
            endpoint,
        })
    }

    /// Creates the bucket (for tests and first-time setup); one that this
    /// account already owns is fine.
    pub async fn create_bucket(&self) -> StoreResult<()> {
        // Outside us-east-1, S3 wants the region in the body.
        let body = if self.region == "us-east-1" {
            Bytes::new()
        } else {
            Bytes::from(format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.region
            ))
        };
        let what = format!("create bucket {}", self.bucket);
        let (status, answer) = self
            .send(Method::PUT, &self.bucket_path(), &[], None, body, &what)
            .await?;
        let owned = xml_values(&String::from_utf8_lossy(&answer), "Code")
            .any(|c| c == "BucketAlreadyOwnedByYou");
        if status.is_success() || owned {
            Ok(())
        } else {
            Err(self.refusal(status, &answer, &what, &self.bucket))
        }
    }

    /// The request path of the bucket (for listing).
    fn bucket_path(&self) -> String {
        if self.path_style {
            format!("/{}", sigv4::uri_encode(&self.bucket, false))
        } else {
            "/".into()
        }
    }

    /// The request path of an object.
    fn object_path(&self, key: &str) -> String {
        let full = sigv4::uri_encode(&format!("{}{key}", self.prefix), true);
        if self.path_style {
            format!("{}/{full}", self.bucket_path())
        } else {
            format!("/{full}")
        }
    }

    /// Sends one signed request, retrying transient failures; the status
    /// and body of the answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        extra: Option<(&'static str, String)>,
        body: Bytes,
        what: &str,
    ) -> StoreResult<(StatusCode, Bytes)> {
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (sigv4::uri_encode(k, false), sigv4::uri_encode(v, false)))
            .collect();
        pairs.sort();
        let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let query = query.join("&");
        let url = if query.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{query}", self.base)
        };
        let payload = sigv4::sha256_hex(&body);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let amz_date = sigv4::amz_date(now);
            let mut headers = vec![
                ("host", self.host.clone()),
                ("x-amz-content-sha256", payload.clone()),
                ("x-amz-date", amz_date.clone()),
            ];
            if let Some(token) = &self.credentials.session_token {
                headers.push(("x-amz-security-token", token.expose().to_string()));
            }
            headers.extend(extra.clone());
            let authorization = sigv4::authorization(
                &self.credentials,
                &self.region,
                &sigv4::Request {
                    method: method.as_str(),
                    path,
                    query: &query,
                    headers: &headers,
                    payload_sha256: &payload,
                    amz_date: &amz_date,
                },
            );
            // reqwest sets Host from the URL, the same value as signed.
            let mut request = self
                .client
                .request(method.clone(), &url)
                .header("authorization", authorization);
            for (name, value) in headers.iter().filter(|(n, _)| *n != "host") {
                request = request.header(*name, value);
            }
            if method == Method::PUT {
                request = request.body(body.clone());
            }
            let retry = attempt < ATTEMPTS;
            match request.send().await {
                Ok(response) if response.status().is_server_error() && retry => {}
                Ok(response) => {
                    let status = response.status();
                    match response.bytes().await {
                        Ok(bytes) => return Ok((status, bytes)),
                        Err(_) if retry => {}
                        Err(e) => return Err(self.transport(e, what)),
                    }
                }
                Err(_) if retry => {}
                Err(e) => return Err(self.transport(e, what)),
            }
            tokio::time::sleep(Duration::from_millis(100 * 4u64.pow(attempt - 1))).await;
        }
    }

    fn transport(&self, e: reqwest::Error, what: &str) -> StoreError {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            reason = format!("{reason}: {s}");
            source = s.source();
        }
        if e.is_connect() || e.is_timeout() {
            StoreError::Unreachable {
                store: self.name.clone(),
                endpoint: self.endpoint.clone(),
                reason,
            }
        } else {
            StoreError::Other {
                store: self.name.clone(),
                what: what.into(),
                detail: reason,
            }
        }
    }

    /// The error an unsuccessful answer means.
    fn refusal(&self, status: StatusCode, body: &[u8], what: &str, key: &str) -> StoreError {
        let body = String::from_utf8_lossy(body);
        let code = xml_values(&body, "Code").next();
        let message = xml_values(&body, "Message").next().unwrap_or_default();
        let store = self.name.clone();
        match code.as_deref() {
            Some("NoSuchBucket") => StoreError::NoSuchBucket {
                store,
                bucket: self.bucket.clone(),
            },
            Some("NoSuchKey") => StoreError::NotFound {
                store,
                key: key.into(),
            },
            Some(c) if AUTH_CODES.contains(&c) => StoreError::AccessDenied {
                store,
                detail: format!("{c}: {message}"),
            },
            None if status == StatusCode::NOT_FOUND => StoreError::NotFound {
                store,
                key: key.into(),
            },
            None if matches!(status.as_u16(), 401 | 403) => StoreError::AccessDenied {
                store,
                detail: format!("HTTP {status}"),
            },
            code => StoreError::Other {
                store,
                what: what.into(),
                detail: format!(
                    "HTTP {status}: {}: {message}",
                    code.unwrap_or("no error code")
                ),
            },
        }
    }

    /// One page of ListObjectsV2 under the full `prefix`: keys (without
    /// the store's prefix) and the token for the next page.
    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<&str>,
        max_keys: Option<&str>,
    ) -> StoreResult<(Vec<String>, Option<String>)> {
        let mut query = vec![("list-type", "2"), ("prefix", prefix)];
        query.extend(start_after.map(|s| ("start-after", s)));
        query.extend(token.map(|t| ("continuation-token", t)));
        query.extend(max_keys.map(|m| ("max-keys", m)));
        let what = format!("list {prefix}");
        let (status, body) = self
            .send(
                Method::GET,
                &self.bucket_path(),
                &query,
                None,
                Bytes::new(),
                &what,
            )
            .await?;
        if !status.is_success() {
            return Err(self.refusal(status, &body, &what, prefix));
        }
        let body = String::from_utf8_lossy(&body);
        let keys = xml_values(&body, "Key")
            .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_string))
            .collect();
        let truncated = xml_values(&body, "IsTruncated").next().as_deref() == Some("true");
        let next = xml_values(&body, "NextContinuationToken").next();
        Ok((keys, next.filter(|_| truncated)))
    }
}

/// The text of each `<tag>...</tag>` in an S3 answer, unescaped. S3's
/// answers are flat enough (ListObjectsV2, Error) that this is all the XML
/// needed.
fn xml_values<'a>(body: &'a str, tag: &str) -> impl Iterator<Item = String> + 'a {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut rest = body;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let len = rest[start..].find(&close)?;
        let value = xml_unescape(&rest[start..start + len]);
        rest = &rest[start + len + close.len()..];
        Some(value)
    })
}

fn xml_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

impl Blobs for S3Blobs {
    fn describe(&self) -> &str {
        &self.name
    }

    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            check_key(&self.name, key)?;
            let what = format!("put {key}");
            let (status, body) = self
                .send(Method::PUT, &self.object_path(key), &[], None, data, &what)
                .await?;
            if status.is_success() {
                Ok(())
            } else {
                Err(self.refusal(status, &body, &what, key))
            }
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Bytes>> {
        Box::pin(async move {
            check_key(&self.name, key)?;
            let what = format!("get {key}");
            let (status, body) = self
                .send(
                    Method::GET,
                    &self.object_path(key),
                    &[],
                    None,
                    Bytes::new(),
                    &what,
                )
                .await?;
            if status.is_success() {
                Ok(body)
            } else {
                Err(self.refusal(status, &body, &what, key))
            }
        })
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'a, StoreResult<Bytes>> {
        Box::pin(async move {
            check_key(&self.name, key)?;
            if range.is_empty() {
                return Ok(Bytes::new());
            }
            let what = format!("get {key} bytes {}..{}", range.start, range.end);
            let header = format!("bytes={}-{}", range.start, range.end - 1);
            let (status, body) = self
                .send(
                    Method::GET,
                    &self.object_path(key),
                    &[],
                    Some(("range", header)),
                    Bytes::new(),
                    &what,
                )
                .await?;
            let len = (range.end - range.start) as usize;
            match status {
                StatusCode::PARTIAL_CONTENT => Ok(body.slice(..body.len().min(len))),
                // A server that ignores Range sends the whole object.
                StatusCode::OK => {
                    let start = (range.start as usize).min(body.len());
                    Ok(body.slice(start..body.len().min(start + len)))
                }
                // The range starts past the object's end.
                StatusCode::RANGE_NOT_SATISFIABLE => Ok(Bytes::new()),
                s => Err(self.refusal(s, &body, &what, key)),
            }
        })
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            check_key(&self.name, key)?;
            let what = format!("head {key}");
            let (status, body) = self
                .send(
                    Method::HEAD,
                    &self.object_path(key),
                    &[],
                    None,
                    Bytes::new(),
                    &what,
                )
                .await?;
            match status {
                s if s.is_success() => Ok(true),
                StatusCode::NOT_FOUND => Ok(false),
                s => Err(self.refusal(s, &body, &what, key)),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        self.list_after(prefix, "")
    }

    fn list_after<'a>(
        &'a self,
        prefix: &'a str,
        after: &'a str,
    ) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        Box::pin(async move {
            check_prefix(&self.name, prefix)?;
            let full = format!("{}{prefix}", self.prefix);
            let start = match after {
                "" => None,
                a => {
                    check_prefix(&self.name, a)?;
                    Some(format!("{}{a}", self.prefix))
                }
            };
            let mut keys = Vec::new();
            let mut token = None;
            loop {
                // A continuation token carries on from where start-after
                // began.
                let from = start.as_deref().filter(|_| token.is_none());
                let (page, next) = self.list_page(&full, from, token.as_deref(), None).await?;
                keys.extend(page);
                match next {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
            keys.sort();
            Ok(keys)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            check_key(&self.name, key)?;
            let what = format!("delete {key}");
            let (status, body) = self
                .send(
                    Method::DELETE,
                    &self.object_path(key),
                    &[],
                    None,
                    Bytes::new(),
                    &what,
                )
                .await?;
            if status.is_success() || status == StatusCode::NOT_FOUND {
                Ok(())
            } else {
                Err(self.refusal(status, &body, &what, key))
            }
        })
    }

    fn probe(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            self.list_page(&self.prefix, None, None, Some("1")).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> S3Options {
        S3Options {
            endpoint: Some("http://127.0.0.1:9".into()),
            region: Some("eu-west-3".into()),
            credentials: Some(Credentials {
                access_key_id: "AKID".into(),
                secret_access_key: Secret::new("very-secret"),
                session_token: None,
            }),
            path_style: None,
        }
    }

    #[test]
    fn addressing_follows_the_endpoint() {
        let s = S3Blobs::new("bkt", "/a/b/", options()).unwrap();
        assert_eq!(s.object_path("chunks/x"), "/bkt/a/b/chunks/x");
        assert_eq!(s.bucket_path(), "/bkt");
        assert_eq!(
            (s.base.as_str(), s.host.as_str()),
            ("http://127.0.0.1:9", "127.0.0.1:9")
        );
        let aws = S3Blobs::new(
            "bkt",
            "",
            S3Options {
                endpoint: None,
                ..options()
            },
        )
        .unwrap();
        assert_eq!(aws.base, "https://bkt.s3.eu-west-3.amazonaws.com");
        assert_eq!(aws.object_path("k"), "/k");
        assert!(!format!("{:?}", aws.credentials).contains("very-secret"));
        assert_eq!(aws.describe(), "s3://bkt");
        assert_eq!(s.describe(), "s3://bkt/a/b at http://127.0.0.1:9");
        for (bucket, endpoint, field) in [
            ("", None, "bucket"),
            ("a/b", None, "bucket"),
            ("b", Some("ftp://x"), "endpoint"),
            ("b", Some("not a url"), "endpoint"),
        ] {
            let o = S3Options {
                endpoint: endpoint.map(String::from),
                ..options()
            };
            match S3Blobs::new(bucket, "", o) {
                Err(StoreError::Config { field: f, .. }) => assert_eq!(f, field),
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("accepted {bucket:?} {endpoint:?}"),
            }
        }
    }

    #[test]
    fn reads_s3_answers() {
        let body = "<ListBucketResult><Contents><Key>p/a&amp;b</Key></Contents>\
                    <Contents><Key>p/c&#x41;&#66;</Key></Contents>\
                    <IsTruncated>true</IsTruncated></ListBucketResult>";
        let keys: Vec<_> = xml_values(body, "Key").collect();
        assert_eq!(keys, ["p/a&b", "p/cAB"]);
        assert_eq!(xml_unescape("a & b &zz; c"), "a & b &zz; c");
        let s = S3Blobs::new("bkt", "", options()).unwrap();
        let e = s.refusal(
            StatusCode::FORBIDDEN,
            b"<Error><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error>",
            "put k",
            "k",
        );
        assert!(matches!(e, StoreError::AccessDenied { .. }), "{e}");
        let e = s.refusal(StatusCode::NOT_FOUND, b"", "head k", "k");
        assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
        let e = s.refusal(
            StatusCode::NOT_FOUND,
            b"<Error><Code>NoSuchBucket</Code></Error>",
            "get k",
            "k",
        );
        assert!(e.to_string().contains("bucket bkt does not exist"), "{e}");
        let e = s.refusal(
            StatusCode::BAD_REQUEST,
            b"<Error><Code>Weird</Code></Error>",
            "put k",
            "k",
        );
        assert!(
            e.to_string().contains("put k: HTTP 400 Bad Request: Weird"),
            "{e}"
        );
    }
}
