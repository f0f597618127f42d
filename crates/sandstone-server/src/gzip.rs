//! Gzip for what the daemon answers: the console's assets (compressed once)
//! and complete JSON answers above [`MIN_JSON`] (a list of a thousand
//! sandboxes is some 250 KiB of JSON and a tenth of that gzipped).
//! Streams (NDJSON, SSE, file bytes, WebSockets) are never buffered here:
//! only a JSON body whose length is known is compressed.

use axum::body::HttpBody as _;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use std::io::Write;

/// Smaller JSON answers go as they are: compressing them saves less than
/// it costs.
const MIN_JSON: u64 = 1024;

/// Whether the request's `Accept-Encoding` takes gzip.
pub fn accepts(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';').map(str::trim);
            parts.next() == Some("gzip") && parts.all(|p| p != "q=0")
        })
}

/// `bytes`, gzipped at `level`.
pub fn compress(bytes: &[u8], level: flate2::Compression) -> Bytes {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4), level);
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(bytes);
    Bytes::from(enc.finish().unwrap_or_default())
}

/// Middleware: gzips a complete JSON answer above [`MIN_JSON`] bytes for
/// a client that accepts it.
pub async fn json(req: Request, next: Next) -> Response {
    let wanted = accepts(req.headers());
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    let big = resp
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n > MIN_JSON);
    if !wanted || !is_json || !big || resp.headers().contains_key(header::CONTENT_ENCODING) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // The body is complete (its length is exact), so this does not wait.
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let gz = compress(&bytes, flate2::Compression::fast());
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("accept-encoding"));
    Response::from_parts(parts, Body::from(gz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_taken_unless_refused() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, v.parse().unwrap());
            m
        };
        assert!(accepts(&h("gzip, deflate, br")));
        assert!(accepts(&h("br;q=1.0, gzip;q=0.8")));
        assert!(!accepts(&h("gzip;q=0")));
        assert!(!accepts(&h("identity")));
        assert!(!accepts(&HeaderMap::new()));
    }

    #[test]
    fn compressed_bytes_come_back_whole() {
        let data = b"{\"a\":1}".repeat(500);
        let gz = compress(&data, flate2::Compression::fast());
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut out).unwrap();
        assert_eq!(out, data);
        assert!(gz.len() < data.len() / 10);
    }
}
