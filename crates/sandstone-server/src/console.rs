//! The web console: static assets compiled into the binary and served at
//! `/` (the page) and `/console/<file>` (its scripts and styles). The
//! console talks to the same public APIs as any client, with the key the
//! user signs in with; these routes need no key because they hold no data.
//!
//! Each asset is gzipped once, on first request, and served compressed to
//! the clients that accept it (every browser does), with an `ETag` so a
//! reload transfers nothing. `SANDSTONE_CONSOLE_DIR` serves the files from
//! a directory instead, read on every request, for working on the console
//! without rebuilding the daemon.

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::Digest;
use std::sync::OnceLock;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// A file of `crates/sandstone-server/console/`, compiled in.
macro_rules! asset {
    ($name:literal, $type:expr) => {
        ($name, $type, include_bytes!(concat!("../console/", $name)))
    };
}

/// Every file of the console: its name under `/console/`, its type and its
/// bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    asset!("index.html", HTML),
    asset!("app.css", CSS),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("ui.js", JS),
    asset!("sandboxes.js", JS),
    asset!("terminal.js", JS),
    asset!("network.js", JS),
    asset!("agents.js", JS),
    asset!("overview.js", JS),
    asset!("keys.js", JS),
    asset!("xterm.js", JS),
    asset!("xterm-addon-fit.js", JS),
    asset!("xterm.css", CSS),
];

struct Asset {
    name: &'static str,
    content_type: &'static str,
    plain: Bytes,
    gzip: Bytes,
    etag: HeaderValue,
}

fn assets() -> &'static [Asset] {
    static ASSETS: OnceLock<Vec<Asset>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        FILES
            .iter()
            .map(|&(name, content_type, bytes)| Asset {
                name,
                content_type,
                plain: Bytes::from_static(bytes),
                gzip: crate::gzip::compress(bytes, flate2::Compression::best()),
                etag: etag(bytes),
            })
            .collect()
    })
}

fn etag(bytes: &[u8]) -> HeaderValue {
    let digest = hex::encode(&sha2::Sha256::digest(bytes)[..12]);
    HeaderValue::from_str(&format!("\"{digest}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

/// `GET /`: the console's page.
pub async fn page(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /console/{file}`.
pub async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    if let Some(dir) = std::env::var_os("SANDSTONE_CONSOLE_DIR") {
        return from_dir(std::path::Path::new(&dir), name);
    }
    let Some(asset) = assets().iter().find(|a| a.name == name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if headers.get(header::IF_NONE_MATCH) == Some(&asset.etag) {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, asset.etag.clone())],
        )
            .into_response();
    }
    let common = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        ),
        (header::ETAG, asset.etag.clone()),
        // Revalidated on every load (a 304 when unchanged), so a new
        // daemon's console is picked up at once.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::VARY, HeaderValue::from_static("accept-encoding")),
        (
            header::HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if crate::gzip::accepts(headers) {
        let enc = [(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"))];
        (common, enc, asset.gzip.clone()).into_response()
    } else {
        (common, asset.plain.clone()).into_response()
    }
}

/// A file of the console from `dir`, for development: only plain names
/// (no path separators), typed by their extension.
fn from_dir(dir: &std::path::Path, name: &str) -> Response {
    if name.contains('/') || name.starts_with('.') {
        return StatusCode::NOT_FOUND.into_response();
    }
    let content_type = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => HTML,
        Some("js") => JS,
        Some("css") => CSS,
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    };
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => ([(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file added to the console's directory but not to [`FILES`] would
    /// be missing from the binary, and the console broken, only in release.
    #[test]
    fn every_file_of_the_console_is_compiled_in() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/console");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let mut served: Vec<String> = FILES.iter().map(|(n, ..)| n.to_string()).collect();
        on_disk.sort();
        served.sort();
        assert_eq!(on_disk, served);
    }

    #[test]
    fn an_asset_is_gzipped_for_browsers_and_revalidated_by_its_etag() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, "gzip, br".parse().unwrap());
        let r = serve("app.js", &headers);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        let etag = r.headers()[header::ETAG].clone();
        headers.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(serve("app.js", &headers).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            serve("../Cargo.toml", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
