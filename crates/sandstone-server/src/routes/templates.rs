//! Templates (`/api/v1/templates`): the built-in ones, those imported from
//! an image archive, those pulled from a registry (`POST` with
//! `spec.mainContainer.image`) and those captured from a sandbox
//! (`POST .../from-sandbox`), in Sandbox0's `Template` shape.

use crate::error::{ApiError, ApiResult, ok};
use crate::extract::JsonBody;
use crate::lifecycle::images::{Creating, Stage};
use crate::limits;
use crate::{AppState, Caller};
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandstone_api as api;
use sandstone_api::timefmt::{now_ms, rfc3339_ms};
use std::collections::HashMap;

fn to_api(t: sandstone_volumes::Template) -> api::Template {
    // A template's files are written once, when it is made.
    let made = t
        .lower
        .first()
        .and_then(|p| std::fs::metadata(p).ok()?.modified().ok())
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(now_ms, |d| d.as_millis() as i64);
    let made = rfc3339_ms(made);
    api::Template {
        id: t.id.clone(),
        template_id: t.id.clone(),
        description: t.description.clone(),
        scope: "public".into(),
        spec: api::TemplateSpec {
            description: t.description,
            display_name: t.display_name,
            tags: t.tags,
            pool: t.warm.map(|min_idle| api::PoolStrategy {
                min_idle,
                max_idle: t.warm_max.unwrap_or(min_idle),
            }),
            main_container: api::ContainerSpec {
                image: t.image.unwrap_or(t.id),
                resources: api::ResourceQuota {
                    memory: t
                        .memory
                        .unwrap_or_else(|| format!("{}Mi", limits::DEFAULT_MEMORY >> 20)),
                    ephemeral_storage: t.disk,
                },
            },
            env_vars: t.env,
            volume_mounts: t.volume_mounts,
        },
        status: None,
        created_at: made.clone(),
        updated_at: made,
    }
}

/// A template being pulled: what there is to show of it yet.
fn creating(id: &str, c: Creating) -> api::Template {
    let started = rfc3339_ms(c.started_at);
    let message = match c.stage {
        Stage::Pulling => format!("pulling {}", c.image),
        Stage::Unpacking => format!("unpacking the layers of {}", c.image),
        Stage::Building => format!("building from a Sandstonefile over {}", c.image),
    };
    api::Template {
        id: id.to_string(),
        template_id: id.to_string(),
        description: String::new(),
        scope: "public".into(),
        spec: api::TemplateSpec {
            description: String::new(),
            display_name: None,
            tags: Vec::new(),
            pool: None,
            main_container: api::ContainerSpec {
                image: c.image,
                resources: api::ResourceQuota {
                    memory: format!("{}Mi", limits::DEFAULT_MEMORY >> 20),
                    ephemeral_storage: None,
                },
            },
            env_vars: Default::default(),
            volume_mounts: Vec::new(),
        },
        status: Some(api::TemplateStatus {
            creation: api::CreationStatus {
                state: api::CreationState::Creating,
                stage: api::CreationStage::Reconciling,
                started_at: started.clone(),
                message,
            },
        }),
        created_at: started.clone(),
        updated_at: started,
    }
}

fn storage_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

/// A template as its team sees it: `team` when a team made it, `public`
/// (everyone's) otherwise.
fn scoped(owned: bool, mut t: api::Template) -> api::Template {
    if owned {
        t.scope = "team".into();
    }
    t
}

/// Refuses a template another team made exactly as one that does not
/// exist (shared templates, those with no team, are everyone's to use).
/// Answers whether the template is shared.
pub(crate) async fn check_template_team(st: &AppState, team: &str, id: &str) -> ApiResult<bool> {
    let base = sandstone_volumes::template_base(id);
    match st.lifecycle.store.template_team(base).await? {
        Some(owner) if owner != team => {
            tracing::warn!(target: "sandstone::audit", team, object = base,
                "refused: template of another team");
            Err(ApiError::not_found("template", base))
        }
        owner => Ok(owner.is_none()),
    }
}

/// A template `by` may change or delete: its team's own; a shared one only
/// for the installation's admins (every team's sandboxes use it).
async fn check_template_writable(st: &AppState, by: &Caller, id: &str) -> ApiResult<()> {
    if check_template_team(st, &by.team, id).await? && !by.owns_installation() {
        tracing::warn!(target: "sandstone::audit", team = %by.team, object = id,
            "refused: changing a shared template");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "template {id} is shared by every team: only the installation's admins change it"
            ),
        ));
    }
    Ok(())
}

/// A new template's name, refused when it is of the kind the daemon gives
/// its `cloud` environments' packages templates (`cloud-<16 hex>`) or
/// taken by another team (answered as for any name in use, naming no team).
async fn new_template_name(st: &AppState, by: &Caller, field: &str, name: &str) -> ApiResult<()> {
    if crate::cloud::is_packages_template(name) {
        return Err(ApiError::bad_request(format!(
            "invalid field `{field}`: `cloud-` and 16 hex digits name the daemon's packages templates"
        )));
    }
    match st.lifecycle.store.template_team(name).await? {
        Some(owner) if owner != by.team => {
            Err(ApiError::conflict(format!("template {name} exists")))
        }
        _ => Ok(()),
    }
}

pub async fn list(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
) -> ApiResult<Response> {
    let teams = st.lifecycle.store.template_teams().await?;
    let list = st
        .lifecycle
        .storage
        .templates()
        .map_err(storage_error)?
        .into_iter()
        .filter(|t| teams.get(&t.id).is_none_or(|owner| *owner == by.team))
        .map(|t| scoped(teams.contains_key(&t.id), to_api(t)))
        .collect();
    Ok(ok(StatusCode::OK, api::TemplateList { templates: list }))
}

/// `GET /api/v1/templates/{id}`: a template, or one being pulled (with
/// its creation status).
pub async fn get(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    check_template_team(&st, &by.team, &id).await?;
    if let Some(c) = st.lifecycle.creating(&id) {
        return Ok(ok(StatusCode::OK, creating(&id, c)));
    }
    let t = st
        .lifecycle
        .storage
        .templates()
        .map_err(storage_error)?
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(|| ApiError::not_found("template", &id))?;
    let owned = st.lifecycle.store.template_team(&t.id).await?.is_some();
    Ok(ok(StatusCode::OK, scoped(owned, to_api(t))))
}

/// A size field of the request: a quantity of at least `min` bytes.
fn quantity(v: &str, field: &str, min: u64) -> ApiResult<()> {
    match limits::parse_memory(v) {
        Some(n) if n >= min => Ok(()),
        _ => Err(ApiError::bad_request(format!(
            "invalid field `{field}`: {v:?} is not a size of at least {}Mi like 4Gi",
            min >> 20
        ))),
    }
}

/// The most warm sandboxes a template may ask for (`spec.pool.maxIdle`):
/// each holds a uid range and a subnet while it waits.
const MAX_WARM: u32 = 16;

/// What a template spec asks for, checked field by field.
fn pulled_from(spec: api::TemplateSpecRequest) -> ApiResult<sandstone_volumes::Pulled> {
    if let Some(field) = spec.unsupported() {
        return Err(ApiError::bad_request(format!(
            "invalid field `{field}`: not supported by Sandstone yet"
        )));
    }
    if let Some(p) = spec.pool
        && (p.min_idle > p.max_idle || p.max_idle > MAX_WARM)
    {
        return Err(ApiError::bad_request(format!(
            "invalid field `spec.pool`: minIdle {} and maxIdle {} must be 0 ≤ minIdle ≤ maxIdle ≤ {MAX_WARM}",
            p.min_idle, p.max_idle
        )));
    }
    if let Some((i, _)) = spec
        .tags
        .iter()
        .enumerate()
        .find(|(_, t)| t.is_empty() || t.len() > 63)
    {
        return Err(ApiError::bad_request(format!(
            "invalid field `spec.tags[{i}]`: a tag is 1 to 63 characters"
        )));
    }
    let c = spec.main_container;
    quantity(
        &c.resources.memory,
        "spec.mainContainer.resources.memory",
        16 << 20,
    )?;
    if let Some(disk) = &c.resources.ephemeral_storage {
        quantity(
            disk,
            "spec.mainContainer.resources.ephemeralStorage",
            64 << 20,
        )?;
    }
    let network = match spec.network {
        Some(v) => {
            let policy = crate::lifecycle::parse_policy(v, "spec.network")?;
            Some(serde_json::to_value(policy).map_err(storage_error)?)
        }
        None => None,
    };
    let mut env = Vec::new();
    let named = c.env.iter().map(|e| (e.name.as_str(), e.value.as_str()));
    for (i, (name, value)) in named
        .chain(spec.env_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .enumerate()
    {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "invalid field `spec.mainContainer.env[{i}]`/`spec.envVars`: {name:?} is not a variable name"
            )));
        }
        env.push(format!("{name}={value}"));
    }
    Ok(sandstone_volumes::Pulled {
        reference: c.image,
        description: spec.description,
        env,
        settings: sandstone_volumes::TemplateSettings {
            disk: c.resources.ephemeral_storage,
            memory: Some(c.resources.memory),
            network,
            network_enabled: None,
            display_name: spec.display_name,
            tags: spec.tags,
            warm: spec.pool.map(|p| p.min_idle),
            warm_max: spec.pool.map(|p| p.max_idle),
            volume_mounts: declared_mounts(spec.volume_mounts)?,
        },
    })
}

/// A template's `volumeMounts`, checked: named, at sane paths, each once.
fn declared_mounts(
    mounts: Vec<api::volumes::VolumeMountSpec>,
) -> ApiResult<Vec<api::volumes::VolumeMountSpec>> {
    for (i, m) in mounts.iter().enumerate() {
        if m.name.is_empty() || m.name.len() > 63 {
            return Err(ApiError::bad_request(format!(
                "invalid field `spec.volumeMounts[{i}].name`: 1 to 63 characters"
            )));
        }
        if let Some(why) = api::volumes::mount_point_problem(&m.mount_path) {
            return Err(ApiError::bad_request(format!(
                "invalid field `spec.volumeMounts[{i}].mountPath`: {:?} is {why}",
                m.mount_path
            )));
        }
        let earlier = &mounts[..i];
        if earlier
            .iter()
            .any(|e| e.name == m.name || e.mount_path == m.mount_path)
        {
            return Err(ApiError::bad_request(format!(
                "invalid field `spec.volumeMounts[{i}]`: its name or mountPath is declared twice"
            )));
        }
    }
    Ok(mounts)
}

/// `POST /api/v1/templates`: pulls `spec.mainContainer.image` and makes
/// it a template, answering once its sandboxes can be claimed (as
/// Sandbox0's image templates are ready on creation).
pub async fn create(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    JsonBody(req): JsonBody<api::TemplateCreateRequest>,
) -> ApiResult<Response> {
    new_template_name(&st, &by, "template_id", &req.template_id).await?;
    super::network::check_bindings(&by, req.spec.network.as_ref(), "spec.network")?;
    let pulled = pulled_from(req.spec)?;
    if st.lifecycle.is_own_image(&pulled.reference) {
        super::registry::check_registry_team(&by)?;
    }
    let t = st.lifecycle.pull_template(&req.template_id, pulled).await?;
    st.lifecycle
        .store
        .set_template_team(&t.id, &by.team)
        .await?;
    Ok(ok(StatusCode::CREATED, scoped(true, to_api(t))))
}

/// `PUT /api/v1/templates/{id}`: a new version of a template made from an
/// image, ready when this answers. Its sandboxes so far keep theirs.
pub async fn update(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<api::TemplateUpdateRequest>,
) -> ApiResult<Response> {
    check_template_writable(&st, &by, &id).await?;
    super::network::check_bindings(&by, req.spec.network.as_ref(), "spec.network")?;
    let pulled = pulled_from(req.spec)?;
    if st.lifecycle.is_own_image(&pulled.reference) {
        super::registry::check_registry_team(&by)?;
    }
    let t = st.lifecycle.update_template(&id, pulled).await?;
    Ok(ok(StatusCode::OK, to_api(t)))
}

/// `POST /api/v1/templates/from-sandbox`: the sandbox's files, captured
/// at once (O(1) on the btrfs pool), are the template; it is ready when
/// this answers.
pub async fn from_sandbox(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    headers: axum::http::HeaderMap,
    JsonBody(req): JsonBody<api::TemplateFromSandboxRequest>,
) -> ApiResult<Response> {
    let key = match headers.get("idempotency-key") {
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 255 => Some(k.to_string()),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid header `Idempotency-Key`: 1 to 255 visible characters",
                ));
            }
        },
        None => None,
    };
    if req.spec_overrides.is_some() {
        return Err(ApiError::bad_request(
            "invalid field `spec_overrides`: not supported by Sandstone yet",
        ));
    }
    new_template_name(&st, &by, "template_id", &req.template_id).await?;
    // Another team's sandbox is one that does not exist.
    if st
        .lifecycle
        .team_of(&req.sandbox_id)
        .await?
        .is_some_and(|team| team != by.team)
    {
        tracing::warn!(target: "sandstone::audit", team = %by.team, object = %req.sandbox_id,
            "refused: capturing a sandbox of another team");
        return Err(ApiError::not_found("sandbox", &req.sandbox_id));
    }
    let started = rfc3339_ms(now_ms());
    let t = st
        .lifecycle
        .capture_template(&req.sandbox_id, &req.template_id, key.as_deref())
        .await?;
    st.lifecycle
        .store
        .set_template_team(&t.id, &by.team)
        .await?;
    let mut out = scoped(true, to_api(t));
    out.status = Some(api::TemplateStatus {
        creation: api::CreationStatus {
            state: api::CreationState::Ready,
            stage: api::CreationStage::Capturing,
            started_at: started,
            message: format!("captured from sandbox {}", req.sandbox_id),
        },
    });
    let mut resp = ok(StatusCode::ACCEPTED, out);
    if let Ok(v) = format!("/api/v1/templates/{}", req.template_id).parse() {
        resp.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    Ok(resp)
}

/// The query's `name`: a template id a user may take.
fn name_of(q: &HashMap<String, String>) -> ApiResult<String> {
    let name = q.get("name").ok_or_else(|| {
        ApiError::bad_request("missing query parameter `name`: the template's id")
    })?;
    sandstone_volumes::check_id(name)
        .map_err(|e| ApiError::bad_request(format!("invalid query parameter `name`: {e}")))?;
    Ok(name.clone())
}

/// Writes the request body to a private file beside the templates as it
/// arrives.
async fn save_body(st: &AppState, body: axum::body::Body) -> ApiResult<tempfile::NamedTempFile> {
    use futures_util::StreamExt;
    use std::io::Write;
    st.lifecycle.check_free_space()?;
    let mut file = tempfile::Builder::new()
        .prefix(".upload-")
        .tempfile_in(st.lifecycle.import_scratch())
        .map_err(|e| ApiError::internal(format!("a file for the upload: {e}")))?;
    let mut stream = body.into_data_stream();
    while let Some(piece) = stream.next().await {
        let piece =
            piece.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        file.write_all(&piece)
            .map_err(|e| ApiError::internal(format!("writing the upload: {e}")))?;
    }
    Ok(file)
}

/// `POST /api/v1/templates/import?name=NAME`: the body is an image archive
/// (a tar, plain or gzipped, of an OCI layout or of `docker save`'s
/// output), written to a private file as it arrives, then imported.
pub async fn import(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let name = name_of(&q)?;
    new_template_name(&st, &by, "name", &name).await?;
    let file = save_body(&st, body).await?;
    let done = st.lifecycle.import_template(&name, file.path()).await?;
    st.lifecycle
        .store
        .set_template_team(&name, &by.team)
        .await?;
    Ok(ok(
        StatusCode::CREATED,
        serde_json::json!({
            "template_id": name,
            "layers": done.layers,
            "layers_reused": done.layers_reused,
            "bytes": done.bytes,
        }),
    ))
}

/// The file in a build context that says what to build.
const SANDSTONEFILE: &str = "Sandstonefile";

/// `POST /api/v1/templates/build?name=NAME`: the body is a tar (plain or
/// gzipped) of the build context, with the `Sandstonefile` at its top. A
/// context or file that cannot be built is a 400 before anything runs;
/// then the answer streams the build's progress as JSON lines
/// (`BuildEvent`), ending in `done` or `failed`.
pub async fn build(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let name = name_of(&q)?;
    // Refused before the context is read and before the answer streams.
    new_template_name(&st, &by, "name", &name).await?;
    st.lifecycle.check_build_name(&name)?;
    let file = save_body(&st, body).await?;
    let context = tempfile::Builder::new()
        .prefix(".build-context-")
        .tempdir_in(st.lifecycle.import_scratch())
        .map_err(|e| ApiError::internal(format!("a dir for the build context: {e}")))?;
    let dest = context.path().to_path_buf();
    tokio::task::spawn_blocking(move || sandstone_oci::image::unpack_archive(file.path(), &dest))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| {
            ApiError::bad_request(format!("invalid request body (the build context): {e}"))
        })?;
    let text = std::fs::read_to_string(context.path().join(SANDSTONEFILE)).map_err(|_| {
        ApiError::bad_request(format!(
            "invalid request body: the build context has no {SANDSTONEFILE} at its top"
        ))
    })?;
    let steps = sandstone_build::parse(&text)
        .map_err(|e| ApiError::bad_request(format!("invalid {SANDSTONEFILE}: {e}")))?;
    // A FROM naming another team's template builds on nothing there is.
    for step in &steps {
        if let sandstone_build::Kind::From(base) = &step.kind {
            check_template_team(&st, &by.team, base).await?;
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<api::BuildEvent>(256);
    let lifecycle = st.lifecycle.clone();
    tokio::spawn(async move {
        let spec = crate::lifecycle::BuildSpec {
            name,
            steps,
            context: context.path().to_path_buf(),
        };
        let name = spec.name.clone();
        lifecycle.build_template(spec, &tx).await;
        if lifecycle.storage.template(&name).is_ok()
            && let Err(e) = lifecycle.store.set_template_team(&name, &by.team).await
        {
            tracing::warn!(template = %name, error = %e, "recording a built template's team");
        }
        // The context goes once the build is over.
        drop(context);
    });
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(line), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(axum::http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(axum::body::Body::from_stream(lines))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// `POST /api/v1/templates/prune`: the build cache and layers nothing
/// uses, removed.
pub async fn prune(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
) -> ApiResult<Response> {
    // The build cache and layers are the installation's, shared by teams.
    if !by.owns_installation() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the installation's admins prune the shared build cache",
        ));
    }
    let done = st.lifecycle.prune_templates().await?;
    Ok(ok(
        StatusCode::OK,
        serde_json::json!({
            "cache_entries_removed": done.cache_entries,
            "versions_removed": done.versions,
            "layers_removed": done.layers,
        }),
    ))
}

/// `DELETE /api/v1/templates/{id}`: an imported template, and the layers
/// only it used.
pub async fn delete(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    check_template_writable(&st, &by, &id).await?;
    let force = match q.get("force").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid query parameter `force`: {other:?} is not true or false"
            )));
        }
    };
    let removed = st.lifecycle.delete_template(&id, force).await?;
    st.lifecycle.store.delete_template_team(&id).await?;
    Ok(ok(
        StatusCode::OK,
        serde_json::json!({"template_id": id, "layers_removed": removed}),
    ))
}
