//! `/api/v1/sandboxvolumes…` (Sandbox0's 2026-07 paths): volumes, their
//! snapshots, forks and restores, their files without a sandbox, and the
//! claim's `mounts`. A team's volumes are its own: another team's answer
//! 404, as missing ones do. The work is `lifecycle/volumes.rs`'s; files
//! go through the volume's file helper with the sandbox files API's code.

use crate::error::{ApiError, ApiResult, ok};
use crate::extract::JsonBody;
use crate::initclient::InitSocket;
use crate::lifecycle::volumes::NewVolume;
use crate::routes::files::{self, volume_path};
use crate::{AppState, Caller};
use axum::Extension;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandstone_api::timefmt::rfc3339_ms;
use sandstone_api::volumes::{
    AccessMode, ArchiveImport, ClaimMount, CreateSandboxVolumeRequest, CreateVolumeSnapshotRequest,
    ForkVolumeRequest, MountState, MountStatus, SandboxVolume, VolumeBind, VolumeSnapshot,
    mount_point_problem,
};
use sandstone_db::SandboxRow;
use sandstone_db::volumes::{VolumeRow, VolumeSnapshotRow};
use sandstone_init::proto::{Request, Response as Init};
use serde_json::json;
use std::collections::HashMap;

/// Mounts one claim may ask for.
const MAX_MOUNTS: usize = 16;

async fn to_api(st: &AppState, v: VolumeRow) -> ApiResult<SandboxVolume> {
    let mounted_by = st
        .lifecycle
        .volumes
        .volume_mounts(&v.id)
        .await?
        .into_iter()
        .map(|m| m.sandbox_id)
        .collect();
    Ok(shape(st, v, mounted_by))
}

/// A volume as the API shows it, with the sandboxes mounting it.
fn shape(st: &AppState, v: VolumeRow, mounted_by: Vec<String>) -> SandboxVolume {
    let here = v.node_id == st.lifecycle.node;
    let usage = here.then(|| st.lifecycle.storage.user_volume_usage(&v.id) as i64);
    SandboxVolume {
        team_id: v.team_id,
        user_id: v.created_by,
        source_volume_id: v.source_volume_id,
        default_posix_uid: Some(v.default_uid),
        default_posix_gid: Some(v.default_gid),
        access_mode: v.access_mode,
        backend: "s0fs".into(),
        metered_storage_bytes: usage,
        storage_observed_at: usage.map(|_| rfc3339_ms(sandstone_api::timefmt::now_ms())),
        size_bytes: v.size_bytes,
        mounted_by,
        metadata: v.metadata,
        created_at: rfc3339_ms(v.created_at),
        updated_at: rfc3339_ms(v.updated_at),
        id: v.id,
    }
}

fn snapshot_to_api(s: VolumeSnapshotRow) -> VolumeSnapshot {
    VolumeSnapshot {
        id: s.id,
        volume_id: s.volume_id,
        name: s.name,
        description: s.description,
        size_bytes: s.size_bytes,
        created_at: rfc3339_ms(s.created_at),
    }
}

/// A POSIX id field: 0 to 2^31-1 (what a sandbox's id map covers).
fn posix_id(field: &str, v: Option<i64>) -> ApiResult<Option<u32>> {
    match v {
        None => Ok(None),
        Some(n) if (0..=i64::from(i32::MAX)).contains(&n) => Ok(Some(n as u32)),
        Some(n) => Err(ApiError::bad_request(format!(
            "invalid field `{field}`: {n} is not an id from 0 to {}",
            i32::MAX
        ))),
    }
}

pub async fn create(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    JsonBody(req): JsonBody<CreateSandboxVolumeRequest>,
) -> ApiResult<Response> {
    if req.backend.as_deref().is_some_and(|b| b != "s0fs") {
        return Err(ApiError::bad_request(
            "invalid field `backend`: only `s0fs` (a volume on this node's storage pool) is served",
        ));
    }
    let uid = posix_id("default_posix_uid", req.default_posix_uid)?.unwrap_or(0);
    let gid = posix_id("default_posix_gid", req.default_posix_gid)?.unwrap_or(0);
    let size_bytes = st.lifecycle.volume_cap(req.size.as_deref())?;
    crate::limits::metadata("metadata", &req.metadata)?;
    let v = st
        .lifecycle
        .create_volume(NewVolume {
            team: by.team.clone(),
            created_by: by.key.as_ref().map(|k| k.id.clone()).unwrap_or_default(),
            access_mode: req.access_mode.unwrap_or_default(),
            size_bytes,
            owner: sandstone_volumes::Owner { uid, gid },
            snapshot: req.snapshot_id,
            source: None,
            metadata: req.metadata,
        })
        .await?;
    Ok(ok(StatusCode::CREATED, to_api(&st, v).await?))
}

/// `?metadata.<key>=<value>` filters (all must hold).
pub async fn list(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let wanted: Vec<(&str, &String)> = q
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?, v)))
        .collect();
    let mut mounts: HashMap<String, Vec<String>> = HashMap::new();
    for m in st.lifecycle.volumes.team_volume_mounts(&by.team).await? {
        mounts.entry(m.volume_id).or_default().push(m.sandbox_id);
    }
    let mut out = Vec::new();
    for v in st.lifecycle.volumes.list_volumes(&by.team).await? {
        if wanted
            .iter()
            .all(|(k, val)| v.metadata.get(*k) == Some(*val))
        {
            let mounted_by = mounts.remove(&v.id).unwrap_or_default();
            out.push(shape(&st, v, mounted_by));
        }
    }
    Ok(ok(StatusCode::OK, out))
}

pub async fn get(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let v = st.lifecycle.volume(&id, &by.team).await?;
    Ok(ok(StatusCode::OK, to_api(&st, v).await?))
}

pub async fn delete(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    st.lifecycle.delete_volume(&id, &by.team).await?;
    Ok(ok(StatusCode::OK, json!({"deleted": true})))
}

pub async fn fork(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    // The body is optional: none is `{}`.
    let req: ForkVolumeRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ForkVolumeRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let src = st.lifecycle.volume(&id, &by.team).await?;
    let uid = posix_id("default_posix_uid", req.default_posix_uid)?;
    let gid = posix_id("default_posix_gid", req.default_posix_gid)?;
    let v = st
        .lifecycle
        .create_volume(NewVolume {
            team: by.team.clone(),
            created_by: by.key.as_ref().map(|k| k.id.clone()).unwrap_or_default(),
            access_mode: req.access_mode.unwrap_or(AccessMode::ReadWriteOnce),
            size_bytes: src.size_bytes.map(|b| b as u64),
            owner: sandstone_volumes::Owner {
                uid: uid.unwrap_or(src.default_uid as u32),
                gid: gid.unwrap_or(src.default_gid as u32),
            },
            snapshot: None,
            source: Some(src.id),
            metadata: src.metadata,
        })
        .await?;
    Ok(ok(StatusCode::CREATED, to_api(&st, v).await?))
}

/// `POST …/checkpoint` (a Sandstone extension): the volume to the object
/// store now (its sandboxes' pauses and deletes, and the interval
/// checkpointer, do it too).
pub async fn checkpoint(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let at = st.lifecycle.checkpoint_volume(&id, &by.team).await?;
    Ok(ok(
        StatusCode::OK,
        json!({"checkpointed_at": rfc3339_ms(at)}),
    ))
}

pub async fn create_snapshot(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CreateVolumeSnapshotRequest>,
) -> ApiResult<Response> {
    if req.name.trim().is_empty() || req.name.len() > 128 {
        return Err(ApiError::bad_request(
            "invalid field `name`: 1 to 128 characters",
        ));
    }
    let s = st
        .lifecycle
        .snapshot_volume(&id, &by.team, req.name, req.description.unwrap_or_default())
        .await?;
    Ok(ok(StatusCode::CREATED, snapshot_to_api(s)))
}

pub async fn list_snapshots(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    st.lifecycle.volume(&id, &by.team).await?;
    let rows = st.lifecycle.volumes.list_volume_snapshots(&id).await?;
    let out: Vec<VolumeSnapshot> = rows.into_iter().map(snapshot_to_api).collect();
    Ok(ok(StatusCode::OK, out))
}

pub async fn get_snapshot(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path((id, snap)): Path<(String, String)>,
) -> ApiResult<Response> {
    let s = st.lifecycle.volume_snapshot(&snap, &by.team).await?;
    if s.volume_id != id {
        return Err(ApiError::not_found("volume snapshot", &snap));
    }
    Ok(ok(StatusCode::OK, snapshot_to_api(s)))
}

pub async fn delete_snapshot(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path((id, snap)): Path<(String, String)>,
) -> ApiResult<Response> {
    st.lifecycle
        .delete_volume_snapshot(&id, &snap, &by.team)
        .await?;
    Ok(ok(StatusCode::OK, json!({"deleted": true})))
}

pub async fn restore_snapshot(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path((id, snap)): Path<(String, String)>,
) -> ApiResult<Response> {
    st.lifecycle.restore_volume(&id, &snap, &by.team).await?;
    Ok(ok(StatusCode::OK, json!({"status": "restored"})))
}

/// The claim's `mounts`, checked for shape (the volumes themselves are
/// checked when they are reserved, with the sandbox's team).
pub fn binds(mounts: &[ClaimMount]) -> ApiResult<Vec<VolumeBind>> {
    if mounts.len() > MAX_MOUNTS {
        return Err(ApiError::bad_request(format!(
            "invalid field `mounts`: at most {MAX_MOUNTS}"
        )));
    }
    let mut out: Vec<VolumeBind> = Vec::with_capacity(mounts.len());
    for (i, m) in mounts.iter().enumerate() {
        let field = format!("mounts[{i}].mount_point");
        let p = m.mount_point.as_str();
        if let Some(why) = mount_point_problem(p) {
            return Err(ApiError::bad_request(format!(
                "invalid field `{field}`: {p:?} is {why}"
            )));
        }
        if out.iter().any(|b| b.mount_point == p) {
            return Err(ApiError::bad_request(format!(
                "invalid field `{field}`: {p} is named twice"
            )));
        }
        if out.iter().any(|b| b.sandboxvolume_id == m.sandboxvolume_id) {
            return Err(ApiError::bad_request(format!(
                "invalid field `mounts[{i}].sandboxvolume_id`: {} is mounted twice",
                m.sandboxvolume_id
            )));
        }
        out.push(VolumeBind {
            sandboxvolume_id: m.sandboxvolume_id.clone(),
            mount_point: p.to_string(),
            read_only: false,
        });
    }
    Ok(out)
}

/// The claim's answer on its mounts: all bound before the sandbox started.
pub fn bootstrap_status(row: &SandboxRow) -> Vec<MountStatus> {
    crate::lifecycle::config_of(row)
        .mounts
        .into_iter()
        .map(|m| MountStatus {
            sandboxvolume_id: m.sandboxvolume_id,
            mount_point: m.mount_point,
            state: MountState::Mounted,
            mounted_at: Some(rfc3339_ms(row.created_at)),
            mounted_duration_sec: Some(0),
            error_code: None,
            error_message: None,
        })
        .collect()
}

/// The file helper of one of the caller's volumes.
async fn helper(st: &AppState, by: &Caller, id: &str) -> ApiResult<InitSocket> {
    Ok(st.lifecycle.volume_files(id, &by.team).await?)
}

/// `r`, after an audit record when the helper refused a path that leads
/// out of the volume.
fn audited(r: ApiResult<Response>, by: &Caller, id: &str, path: &str) -> ApiResult<Response> {
    if let Err(e) = &r
        && e.code == "outside_root"
    {
        tracing::warn!(target: "sandstone::audit", volume = id, team = %by.team,
            key = by.key.as_ref().map_or("", |k| k.id.as_str()), path = ?path,
            "volume file request refused: the path leads out of the volume");
    }
    r
}

fn path_param(q: &HashMap<String, String>) -> ApiResult<String> {
    volume_path("path", q.get("path"))
}

pub async fn read_file(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let json = files::wants_json(&headers);
    on_path(&st, &by, &id, &q, async |s, p| {
        files::read_at(&st, &s, p, json).await
    })
    .await
}

/// Runs `op` on the request's `path` through the volume's helper, with an
/// audit record if the path leads out of the volume.
async fn on_path(
    st: &AppState,
    by: &Caller,
    id: &str,
    q: &HashMap<String, String>,
    op: impl AsyncFnOnce(InitSocket, String) -> ApiResult<Response>,
) -> ApiResult<Response> {
    let path = path_param(q)?;
    let socket = helper(st, by, id).await?;
    audited(op(socket, path.clone()).await, by, id, &path)
}

pub async fn write_file(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    on_path(&st, &by, &id, &q, async |s, p| {
        files::write_at(&st, &s, p, &q, body).await
    })
    .await
}

pub async fn remove_file(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    if path_param(&q)?.trim_end_matches('/').is_empty() {
        return Err(ApiError::bad_request(
            "invalid `path`: the volume's root is removed with the volume",
        ));
    }
    on_path(&st, &by, &id, &q, async |s, p| {
        files::remove_at(&s, p).await
    })
    .await
}

pub async fn stat(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    on_path(&st, &by, &id, &q, async |s, p| files::stat_at(&s, p).await).await
}

pub async fn list_files(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    on_path(&st, &by, &id, &q, async |s, p| files::list_at(&s, p).await).await
}

pub async fn move_file(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<sandstone_api::MoveRequest>,
) -> ApiResult<Response> {
    let from = volume_path("source", Some(&req.source))?;
    let to = volume_path("destination", Some(&req.destination))?;
    let socket = helper(&st, &by, &id).await?;
    let r = files::move_at(&socket, from.clone(), to.clone()).await;
    audited(r, &by, &id, &format!("{from} -> {to}"))
}

pub async fn watch(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let socket = helper(&st, &by, &id).await?;
    let path = socket.path().to_path_buf();
    Ok(crate::routes::accept_ws(&st, &by, upgrade, move |ws| {
        files::watch_with(ws, path, volume_path)
    }))
}

/// `PUT …/files/archive?path=DIR`: a tar body unpacked under DIR. The
/// archive is first written into the volume (counting against its cap),
/// then unpacked there by the helper, then removed.
pub async fn import_archive(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let root = path_param(&q)?;
    let socket = helper(&st, &by, &id).await?;
    st.lifecycle.check_free_space()?;
    let archive = format!("/.sandstone-import-{}.tar", crate::lifecycle::random_hex(6));
    let staged = files::write_in_chunks(&socket, archive.clone(), Some(0o600), body).await;
    let unpacked = match staged {
        Ok(()) => {
            let req = Request::Untar {
                archive: archive.clone(),
                root: root.clone(),
            };
            socket.call(&req, &[]).await.map_err(ApiError::from)
        }
        Err(e) => Err(e),
    };
    let _ = socket
        .call(&Request::RemovePath { path: archive }, &[])
        .await;
    let r = match unpacked {
        Ok((Init::Untarred(c), _)) => Ok(ok(
            StatusCode::OK,
            ArchiveImport {
                files: c.files,
                directories: c.directories,
                symlinks: c.symlinks,
                bytes: c.bytes,
            },
        )),
        Ok(_) => Err(ApiError::internal("unexpected answer to a tar import")),
        Err(e) => Err(e),
    };
    audited(r, &by, &id, &root)
}
