//! The daemon's own registry over HTTP: `POST /api/v1/registry/credentials`
//! hands out a push login (Sandbox0's `RegistryCredentials`), and `/v2/`
//! speaks the OCI distribution protocol's push and pull side for it
//! (blob uploads monolithic or chunked, cross-repository mounts, manifests
//! by tag or digest), with the distribution spec's error bodies. Pushed
//! images become templates when `spec.mainContainer.image` names them.

use crate::AppState;
use crate::error::{ApiError, ApiResult, ok};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use sandstone_api as api;
use sandstone_api::timefmt::{now_ms, rfc3339_ms};
use sandstone_oci::Digest;
use sandstone_registry::store::{MAX_MANIFEST, PushError, UploadError, check_name, check_tag};
use std::collections::HashMap;

/// Refuses a caller of a team other than the default one: the registry is
/// one namespace, the installation's (see [`authorized`]).
pub(crate) fn check_registry_team(by: &crate::Caller) -> ApiResult<()> {
    if by.team == sandstone_db::DEFAULT_TEAM {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "this daemon's registry is the installation's: only the default team's keys use it",
    ))
}

/// `POST /api/v1/registry/credentials`: a push login good for an hour.
pub async fn credentials(
    State(st): State<AppState>,
    axum::Extension(by): axum::Extension<crate::Caller>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    check_registry_team(&by)?;
    let req: api::RegistryCredentialsRequest = if body.iter().all(u8::is_ascii_whitespace) {
        Default::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?
    };
    let registry = &st.lifecycle.registry;
    let image = match &req.target_image {
        Some(target) => {
            let (name, tag) = target.split_once(':').unwrap_or((target, "latest"));
            let bad =
                |e: PushError| ApiError::bad_request(format!("invalid field `targetImage`: {e}"));
            check_name(name).map_err(bad)?;
            check_tag(tag).map_err(bad)?;
            Some(format!("{}/{name}:{tag}", registry.host()))
        }
        None => None,
    };
    let c = registry.issue(now_ms());
    Ok(ok(
        StatusCode::OK,
        api::RegistryCredentials {
            provider: "sandstone".into(),
            push_registry: c.registry.clone(),
            pull_registry: c.registry,
            push_image: image.clone(),
            pull_image: image,
            username: c.username,
            password: c.password.expose().to_string(),
            expires_at: rfc3339_ms(c.expires_at),
        },
    ))
}

/// A distribution-spec error answer.
fn oci_error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message.to_string()}]});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn push_error(e: PushError) -> Response {
    let status = match e {
        PushError::UploadUnknown(_) | PushError::ManifestBlobUnknown(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_REQUEST,
    };
    oci_error(status, e.code(), e)
}

fn upload_error(e: UploadError) -> Response {
    match e {
        UploadError::Push(p) => push_error(p),
        UploadError::Store(s) => oci_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", s),
    }
}

/// Whether the request carries a push login handed out (basic auth), or
/// an API key (basic auth's password, or a bearer token) whose role may
/// do what `method` does (a viewer pulls, never pushes). The registry is
/// the installation's, one namespace for every image: only the default
/// team's keys use it.
async fn authorized(st: &AppState, method: &Method, headers: &HeaderMap) -> bool {
    use base64::Engine as _;
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let key = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => {
            let Some(pair) = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
            else {
                return false;
            };
            let password = pair.split_once(':').map_or("", |(_, p)| p).to_string();
            if st.lifecycle.registry.accepts(&password, now_ms()) {
                return true;
            }
            password
        }
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim().to_string(),
        _ => return false,
    };
    let action = if method == Method::GET || method == Method::HEAD {
        sandstone_api::auth::Action::Read
    } else {
        sandstone_api::auth::Action::Write
    };
    !key.is_empty()
        && st
            .keys
            .verify(&key)
            .await
            .is_ok_and(|k| k.role.may(action) && k.team_id == sandstone_db::DEFAULT_TEAM)
}

/// What a `/v2/` path names.
enum Target<'a> {
    Base,
    Upload(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Manifest(&'a str, &'a str),
}

fn target(path: &str) -> Option<Target<'_>> {
    let rest = path.strip_prefix("/v2")?.trim_start_matches('/');
    if rest.is_empty() {
        return Some(Target::Base);
    }
    let split = |marker: &str| {
        rest.rfind(marker)
            .map(|i| (&rest[..i], &rest[i + marker.len()..]))
    };
    if let Some((name, id)) = split("/blobs/uploads/").or_else(|| split("/blobs/uploads")) {
        return Some(Target::Upload(name, id));
    }
    if let Some((name, digest)) = split("/blobs/") {
        return Some(Target::Blob(name, digest));
    }
    if let Some((name, reference)) = split("/manifests/") {
        return Some(Target::Manifest(name, reference));
    }
    None
}

/// Every `/v2/` request.
pub async fn v2(
    State(st): State<AppState>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !authorized(&st, &method, &headers).await {
        let mut r = oci_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "a push login from POST /api/v1/registry/credentials, or an API key",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"sandstone\""),
        );
        return r;
    }
    let Some(t) = target(uri.path()) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "no such registry path",
        );
    };
    let name = match &t {
        Target::Base => "",
        Target::Upload(n, _) | Target::Blob(n, _) | Target::Manifest(n, _) => n,
    };
    if !name.is_empty()
        && let Err(e) = check_name(name)
    {
        return push_error(e);
    }
    let store = &st.lifecycle.registry.store;
    match (method, t) {
        (Method::GET, Target::Base) => {
            ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
        }
        (m @ (Method::GET | Method::HEAD), Target::Blob(_, digest)) => {
            let Ok(d) = digest.parse::<Digest>() else {
                return push_error(PushError::DigestInvalid(digest.to_string()));
            };
            let Some(size) = store.blob_size(&d) else {
                return oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", format!("{d}"));
            };
            let body = if m == Method::HEAD {
                Body::empty()
            } else {
                match tokio::fs::File::open(store.blob_path(&d)).await {
                    Ok(f) => Body::from_stream(file_stream(f)),
                    Err(e) => return oci_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e),
                }
            };
            let mut r = Response::new(body);
            let h = r.headers_mut();
            h.insert(header::CONTENT_LENGTH, size.into());
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            insert_digest(h, &d);
            r
        }
        (Method::POST, Target::Upload(name, "")) => start_upload(&st, name, &q, body).await,
        (Method::PATCH, Target::Upload(name, id)) => {
            if let Err(r) = stream_into(&st, id, body).await {
                return r;
            }
            upload_state(store, name, id, StatusCode::ACCEPTED)
        }
        (Method::GET, Target::Upload(name, id)) => {
            upload_state(store, name, id, StatusCode::NO_CONTENT)
        }
        (Method::PUT, Target::Upload(name, id)) => {
            let Some(digest) = q.get("digest") else {
                return push_error(PushError::DigestInvalid(
                    "the digest query parameter is missing".into(),
                ));
            };
            if let Err(r) = stream_into(&st, id, body).await {
                return r;
            }
            match store.finish(id, digest) {
                Ok(d) => blob_created(name, &d),
                Err(e) => upload_error(e),
            }
        }
        (Method::DELETE, Target::Upload(_, id)) => match store.cancel(id) {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => push_error(e),
        },
        (Method::PUT, Target::Manifest(name, reference)) => {
            let media_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/vnd.oci.image.manifest.v1+json")
                .to_string();
            let bytes = match axum::body::to_bytes(body, MAX_MANIFEST).await {
                Ok(b) => b,
                Err(_) => {
                    return push_error(PushError::SizeInvalid(format!(
                        "a manifest is {MAX_MANIFEST} bytes at most"
                    )));
                }
            };
            match store.put_manifest(name, reference, &media_type, &bytes) {
                Ok(d) => {
                    let mut r = StatusCode::CREATED.into_response();
                    let h = r.headers_mut();
                    if let Ok(v) = HeaderValue::from_str(&format!("/v2/{name}/manifests/{d}")) {
                        h.insert(header::LOCATION, v);
                    }
                    insert_digest(h, &d);
                    r
                }
                Err(e) => upload_error(e),
            }
        }
        (m @ (Method::GET | Method::HEAD), Target::Manifest(name, reference)) => {
            let Some(found) = store.manifest(name, reference) else {
                return oci_error(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    format!("{name}:{reference}"),
                );
            };
            let len = found.bytes.len();
            let body = if m == Method::HEAD {
                Body::empty()
            } else {
                Body::from(found.bytes)
            };
            let mut r = Response::new(body);
            let h = r.headers_mut();
            h.insert(header::CONTENT_LENGTH, len.into());
            if let Ok(v) = HeaderValue::from_str(&found.media_type) {
                h.insert(header::CONTENT_TYPE, v);
            }
            insert_digest(h, &found.digest);
            r
        }
        _ => oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "not supported here",
        ),
    }
}

/// How often (in bytes) a growing upload checks the pool's free space.
const SPACE_CHECK_EVERY: u64 = 64 << 20;

/// `POST …/blobs/uploads/`: a cross-repository mount of a blob the store
/// has (blobs are shared), a whole blob (`?digest=`), or a new upload.
async fn start_upload(
    st: &AppState,
    name: &str,
    q: &HashMap<String, String>,
    body: Body,
) -> Response {
    let store = &st.lifecycle.registry.store;
    if let Some(d) = q.get("mount").and_then(|d| d.parse::<Digest>().ok())
        && store.blob_size(&d).is_some()
    {
        return blob_created(name, &d);
    }
    if let Err(e) = st.lifecycle.check_free_space() {
        return oci_error(StatusCode::INSUFFICIENT_STORAGE, "DENIED", e);
    }
    let id = sandstone_api::random_hex(16);
    if let Err(e) = store.begin_upload(&id) {
        return oci_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e);
    }
    if let Some(digest) = q.get("digest") {
        if let Err(r) = stream_into(st, &id, body).await {
            let _ = store.cancel(&id);
            return r;
        }
        return match store.finish(&id, digest) {
            Ok(d) => blob_created(name, &d),
            Err(e) => upload_error(e),
        };
    }
    upload_state(store, name, &id, StatusCode::ACCEPTED)
}

/// Appends the request body to upload `id` as it arrives; the answer to
/// give when it cannot.
async fn stream_into(st: &AppState, id: &str, body: Body) -> Result<(), Response> {
    use futures_util::StreamExt;
    let store = &st.lifecycle.registry.store;
    let mut size = store.upload_size(id).map_err(push_error)?;
    let mut checked = 0;
    let mut stream = body.into_data_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| {
            oci_error(
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
                format!("the body: {e}"),
            )
        })?;
        // However large the push, the pool keeps its reserve.
        if size >= checked + SPACE_CHECK_EVERY {
            st.lifecycle
                .check_free_space()
                .map_err(|e| oci_error(StatusCode::INSUFFICIENT_STORAGE, "DENIED", e))?;
            checked = size;
        }
        size = store.append(id, &piece).map_err(upload_error)?;
    }
    Ok(())
}

/// Where upload `id` stands: its location and the bytes it has.
fn upload_state(
    store: &sandstone_registry::Store,
    name: &str,
    id: &str,
    status: StatusCode,
) -> Response {
    let size = match store.upload_size(id) {
        Ok(s) => s,
        Err(e) => return push_error(e),
    };
    let mut r = status.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/v2/{name}/blobs/uploads/{id}")) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("docker-upload-uuid", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("0-{}", size.saturating_sub(1))) {
        h.insert(header::RANGE, v);
    }
    h.insert(header::CONTENT_LENGTH, 0.into());
    r
}

fn blob_created(name: &str, d: &Digest) -> Response {
    let mut r = StatusCode::CREATED.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/v2/{name}/blobs/{d}")) {
        h.insert(header::LOCATION, v);
    }
    insert_digest(h, d);
    r
}

fn insert_digest(h: &mut HeaderMap, d: &Digest) {
    if let Ok(v) = HeaderValue::from_str(&d.to_string()) {
        h.insert("docker-content-digest", v);
    }
}

/// A file as a stream of 1 MiB pieces.
fn file_stream(
    f: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    futures_util::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}
