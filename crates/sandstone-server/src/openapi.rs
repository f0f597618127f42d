//! The API's operations, declared once: [`operations`] gives each one's
//! route and its entry in the OpenAPI document the daemon serves at
//! `/openapi.json`, so no route can be missing from the document. An
//! end-to-end test calls every listed operation.

use crate::AppState;
use crate::routes::{
    cluster, contexts, credentials, files, keys, logs, metrics, network, observability, previews,
    registry, sandboxes, sessions, snapshots, ssh_keys, templates, tools, uploads, volumes,
    webhooks,
};
use axum::routing::MethodRouter;
use serde_json::{Map, Value, json};

/// One operation: its route and what the document says of it.
pub struct Operation {
    /// Lower case, as OpenAPI spells it.
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// The success status.
    pub status: u16,
    pub body: Body,
    pub route: MethodRouter<AppState>,
}

/// `method "path" handler => status body "summary",` per operation.
macro_rules! operations {
    ($($method:ident $path:literal $handler:path => $status:literal $body:ident $summary:literal,)*) => {
        vec![$(Operation {
            method: stringify!($method),
            path: $path,
            summary: $summary,
            status: $status,
            body: Body::$body,
            route: axum::routing::$method($handler),
        }),*]
    };
}

/// Every operation of the API under authentication, in the document's
/// order.
pub fn operations() -> Vec<Operation> {
    operations![
        post "/api/v1/sandboxes" sandboxes::claim => 201 Json "Claim (create) a sandbox",
        get "/api/v1/sandboxes" sandboxes::list => 200 None "List sandboxes (limit, offset, status, template_id)",
        get "/api/v1/sandboxes/{id}" sandboxes::get => 200 None "Get a sandbox",
        put "/api/v1/sandboxes/{id}" sandboxes::update => 200 Json "Update a sandbox's ttl, hard_ttl, auto_resume",
        delete "/api/v1/sandboxes/{id}" sandboxes::delete => 202 None "Delete a sandbox",
        get "/api/v1/sandboxes/{id}/status" sandboxes::status => 200 None "Sandbox status",
        post "/api/v1/sandboxes/{id}/pause" sandboxes::pause => 200 Json "Pause: end the processes, keep identity and files",
        post "/api/v1/sandboxes/{id}/resume" sandboxes::resume => 200 Json "Resume: a new runtime generation on the same files",
        post "/api/v1/sandboxes/{id}/checkpoint" sandboxes::checkpoint => 200 None "Checkpoint the sandbox's files to the object store (running: frozen only for an O(1) snapshot)",
        post "/api/v1/sandboxes/{id}/refresh" sandboxes::refresh => 200 Json "Restart the idle (ttl) clock",
        post "/api/v1/sandboxes/{id}/snapshots" snapshots::create => 201 Json "Snapshot the sandbox's files (running or paused)",
        get "/api/v1/sandboxes/{id}/snapshots" snapshots::list => 200 None "List the sandbox's snapshots",
        post "/api/v1/sandboxes/{id}/rootfs/restore" snapshots::restore => 200 Json "Replace a paused sandbox's files with a snapshot",
        post "/api/v1/sandboxes/{id}/fork" snapshots::fork => 201 Json "Fork into a new paused sandbox sharing files copy-on-write",
        get "/api/v1/sandbox-rootfs-snapshots/{snap}" snapshots::get => 200 None "Get a snapshot",
        delete "/api/v1/sandbox-rootfs-snapshots/{snap}" snapshots::delete => 200 None "Delete a snapshot",
        get "/api/v1/sandboxes/{id}/network" network::get => 200 None "The sandbox's network policy",
        put "/api/v1/sandboxes/{id}/network" network::put => 200 Json "Replace the network policy (new connections see it at once)",
        get "/api/v1/sandboxes/{id}/sessions" sessions::list => 200 None "The sandbox's execution sessions (supervised commands), with their phase and latest attempt",
        post "/api/v1/sandboxes/{id}/sessions" sessions::create => 201 Json "Start a supervised command: restarted as its policy says (backoff, a limit within a window), again after a resume, while the daemon restarts",
        get "/api/v1/sandboxes/{id}/sessions/{session_id}" sessions::get => 200 None "An execution session",
        put "/api/v1/sandboxes/{id}/sessions/{session_id}" sessions::replace => 200 Json "Replace a session's spec (a running one starts a new attempt with it)",
        delete "/api/v1/sandboxes/{id}/sessions/{session_id}" sessions::delete => 200 None "Stop and forget a session",
        put "/api/v1/sandboxes/{id}/sessions/{session_id}/desired-state" sessions::desired_state => 200 Json "Start (running) or stop (stopped) a session",
        post "/api/v1/sandboxes/{id}/sessions/{session_id}/attempts" sessions::attempts => 201 Json "Start a new attempt now (replace_current replaces a running one)",
        post "/api/v1/sandboxes/{id}/sessions/{session_id}/inputs" sessions::inputs => 202 Json "Write input (base64) to the current attempt's stdin, or close it (eof); a retried input_id is not written twice",
        get "/api/v1/sandboxes/{id}/sessions/{session_id}/events" sessions::events => 200 None "The session's output and exits from the sandbox's log, after a sequence number (410 when older than what is kept)",
        post "/api/v1/sandboxes/{id}/sessions/{session_id}/signals" sessions::signals => 202 Json "Send a signal (a name such as TERM, or a number) to the session's process group",
        put "/api/v1/sandboxes/{id}/sessions/{session_id}/terminal" sessions::terminal => 200 Json "Resize a pty session's terminal (this attempt's and the next ones')",
        get "/api/v1/sandboxes/{id}/sessions/{session_id}/events/stream" sessions::events_stream => 200 None "The session's events as server-sent events: what is kept after `after` (or Last-Event-ID), then what comes",
        get "/api/v1/sandboxes/{id}/sessions/{session_id}/ws" sessions::ws => 101 None "Attach over a WebSocket: events out; input, signal and resize requests in, each answered; closing it stops nothing",
        get "/api/v1/sandboxes/{id}/services" previews::get_services => 200 None "The sandbox's app services and where the public ones are reached",
        put "/api/v1/sandboxes/{id}/services" previews::put_services => 200 Json "Replace the app services (cmd services start at once and with every runtime generation)",
        post "/api/v1/sandboxes/{id}/previews" previews::create_preview => 201 Json "Grant a short-lived preview of a loopback port (a one-time bootstrap URL that sets a cookie)",
        put "/api/v1/sandboxes/{id}/previews/{preview_id}" previews::renew_preview => 200 Json "Renew a preview grant of the current runtime generation",
        delete "/api/v1/sandboxes/{id}/previews/{preview_id}" previews::revoke_preview => 200 None "Revoke a preview grant (its cookie stops working at once on this node, within 2 s on the others)",
        get "/api/v1/sandboxes/{id}/observability/events" observability::events => 200 None "Egress audit records as network_audit events (cursor, limit, start_time, end_time, outcome and the other filters; watch=true streams NDJSON)",
        get "/api/v1/sandboxes/{id}/observability/logs" logs::logs => 200 None "Every context's output, line by line, from the sandbox's durable log (start_time, end_time, limit, cursor, context_id, stream; without cursor or start_time, the latest lines; watch=true streams NDJSON)",
        get "/api/v1/sandboxes/{id}/metrics" metrics::series => 200 None "Runtime metric series of the last hour (start_time, end_time, metrics, step_seconds, statistic, max_points): CPU, memory, processes, disk and egress bytes, sampled by this node",
        get "/api/v1/sandboxes/{id}/metrics/catalog" metrics::catalog => 200 None "The runtime metrics served: names, kinds, units, dimensions, descriptions",
        post "/api/v1/sandboxes/{id}/contexts" contexts::create => 201 Json "Create a context (cmd or repl); wait_until_done runs it to completion",
        get "/api/v1/sandboxes/{id}/contexts" contexts::list => 200 None "List contexts",
        get "/api/v1/sandboxes/{id}/contexts/{ctx}" contexts::get => 200 None "Get a context",
        delete "/api/v1/sandboxes/{id}/contexts/{ctx}" contexts::delete => 200 None "Kill and remove a context",
        post "/api/v1/sandboxes/{id}/contexts/{ctx}/exec" contexts::exec => 200 Json "Run code in a REPL context",
        post "/api/v1/sandboxes/{id}/contexts/{ctx}/input" contexts::input => 200 Json "Write to a context's stdin",
        post "/api/v1/sandboxes/{id}/contexts/{ctx}/signal" contexts::signal => 200 Json "Signal a context's process group",
        post "/api/v1/sandboxes/{id}/contexts/{ctx}/resize" contexts::resize => 200 Json "Resize a context's PTY",
        post "/api/v1/sandboxes/{id}/contexts/{ctx}/restart" contexts::restart => 200 None "Restart a context",
        get "/api/v1/sandboxes/{id}/contexts/{ctx}/ws" contexts::ws => 101 None "WebSocket: output stream (output, truncated when earlier output was dropped, done), input, resize, signal",
        get "/api/v1/sandboxes/{id}/files" files::read => 200 None "Read a file (raw bytes; query: path)",
        post "/api/v1/sandboxes/{id}/files" files::write => 200 Bytes "Write a file (raw body), or mkdir=true[&recursive=true]",
        delete "/api/v1/sandboxes/{id}/files" files::remove => 200 None "Remove a file or directory tree",
        get "/api/v1/sandboxes/{id}/files/stat" files::stat => 200 None "Stat a path",
        get "/api/v1/sandboxes/{id}/files/list" files::list => 200 None "List a directory",
        post "/api/v1/sandboxes/{id}/files/move" files::rename => 200 Json "Move a path",
        get "/api/v1/sandboxes/{id}/files/watch" files::watch => 101 None "WebSocket: subscribe to file events",
        get "/api/v1/sandboxes/{id}/webhook/deliveries" webhooks::deliveries => 200 None "Sandstone extension: the sandbox's webhook deliveries (config.webhook), newest first (query: limit): event id and type, state (pending, delivered, failed, dropped), attempts, last status or error, delivered_at",
        get "/api/v1/sandboxes/{id}/uploads" uploads::list => 200 None "List the files of the sandbox's read-only uploads directory (config.uploads_dir)",
        put "/api/v1/sandboxes/{id}/uploads/{name}" uploads::put => 200 Bytes "Upload a file (raw body) into the sandbox's read-only uploads directory, replacing one of that name",
        delete "/api/v1/sandboxes/{id}/uploads/{name}" uploads::delete => 200 None "Remove a file from the sandbox's uploads directory",
        post "/api/v1/sandboxes/{id}/tools/{name}" tools::call => 200 Json "Run an agent toolset tool (bash, read, write, edit, glob, grep) in the sandbox",
        get "/api/v1/templates" templates::list => 200 None "List templates",
        post "/api/v1/templates" templates::create => 201 Json "Pull spec.mainContainer.image from its registry as a template (answers once it is ready)",
        post "/api/v1/templates/from-sandbox" templates::from_sandbox => 202 Json "Capture a running or paused sandbox's files as a template (O(1) on the btrfs pool; ready on return)",
        get "/api/v1/templates/{id}" templates::get => 200 None "A template, or one being pulled with its creation status",
        put "/api/v1/templates/{id}" templates::update => 200 Json "Update a template made from an image: a new version (pulled, or the same layers with new settings) for new sandboxes; existing sandboxes, their snapshots and forks keep theirs",
        delete "/api/v1/templates/{id}" templates::delete => 200 None "Delete an image or captured template and what only it used (409 while sandboxes, snapshots or captured templates use it)",
        post "/api/v1/templates/build" templates::build => 200 Bytes "Build a template from a Sandstonefile (query: name; body: a tar of the build context holding `Sandstonefile`); answers with the build's progress as JSON lines, ending in `done` or `failed`",
        post "/api/v1/templates/import" templates::import => 201 Bytes "Import an OCI image archive (OCI layout or docker save; query: name) as a template",
        post "/api/v1/templates/prune" templates::prune => 200 None "Remove build-cache entries and image layers nothing uses (waits for running builds)",
        post "/api/v1/registry/credentials" registry::credentials => 200 Json "A push login for this daemon's registry (`/v2/`), good for an hour; images pushed there are named in a template's spec.mainContainer.image",
        get "/api/v1/nodes" cluster::list => 200 None "List the nodes sharing this database (load, templates, lease, draining)",
        post "/api/v1/nodes/{id}/drain" cluster::drain => 200 None "Drain a node: no new sandboxes are placed on it",
        post "/api/v1/nodes/{id}/undrain" cluster::undrain => 200 None "Undo a drain",
        get "/api-keys" keys::list => 200 None "List API keys (admin; never their values)",
        post "/api-keys" keys::create => 201 Json "Create an API key (admin): name, roles (one of admin, developer, viewer), expires_in, team_id (the caller's team by default); its value is in this answer only",
        get "/api-keys/current" keys::current => 200 None "The calling key: its role and permissions",
        delete "/api-keys/{id}" keys::delete => 200 None "Delete an API key (admin): refused from the next request",
        post "/api-keys/{id}/deactivate" keys::deactivate => 200 None "Deactivate an API key (admin): refused from the next request",
        post "/api/v1/sandboxvolumes" volumes::create => 201 Json "Create a sandbox volume (access_mode RWO, ROX or RWX; default_posix_uid/gid; snapshot_id; size, a Sandstone extension): a pool subvolume that outlives sandboxes, bound into them with the claim's `mounts`",
        get "/api/v1/sandboxvolumes" volumes::list => 200 None "List the team's sandbox volumes (with the sandboxes mounting each)",
        get "/api/v1/sandboxvolumes/{id}" volumes::get => 200 None "Get a sandbox volume",
        delete "/api/v1/sandboxvolumes/{id}" volumes::delete => 200 None "Delete a sandbox volume and its snapshots (409 naming the sandboxes while any mounts it)",
        post "/api/v1/sandboxvolumes/{id}/fork" volumes::fork => 201 Bytes "Fork a volume: a new volume sharing its files copy-on-write (optional body: access_mode, default_posix_uid/gid)",
        post "/api/v1/sandboxvolumes/{id}/checkpoint" volumes::checkpoint => 200 None "Checkpoint a volume to the object store now (serve --object-store; pauses and deletes of its sandboxes and the interval checkpointer do it too): a volume whose node dies then mounts on another",
        post "/api/v1/sandboxvolumes/{id}/snapshots" volumes::create_snapshot => 201 Json "Snapshot a volume (name, description): read-only, O(1) on the btrfs pool",
        get "/api/v1/sandboxvolumes/{id}/snapshots" volumes::list_snapshots => 200 None "List a volume's snapshots",
        get "/api/v1/sandboxvolumes/{id}/snapshots/{snap}" volumes::get_snapshot => 200 None "Get a volume snapshot",
        delete "/api/v1/sandboxvolumes/{id}/snapshots/{snap}" volumes::delete_snapshot => 200 None "Delete a volume snapshot",
        post "/api/v1/sandboxvolumes/{id}/snapshots/{snap}/restore" volumes::restore_snapshot => 200 None "Restore a volume to a snapshot (409 while a sandbox mounts it read-write)",
        get "/api/v1/sandboxvolumes/{id}/files" volumes::read_file => 200 None "Read a volume's file (query: path, relative to the volume's root); no sandbox needed",
        post "/api/v1/sandboxvolumes/{id}/files" volumes::write_file => 200 Bytes "Write a volume's file (raw body), or with mkdir=true make a directory (recursive=true for parents)",
        delete "/api/v1/sandboxvolumes/{id}/files" volumes::remove_file => 200 None "Delete a volume's file or directory",
        get "/api/v1/sandboxvolumes/{id}/files/stat" volumes::stat => 200 None "Stat a volume's file",
        get "/api/v1/sandboxvolumes/{id}/files/list" volumes::list_files => 200 None "List a volume's directory",
        post "/api/v1/sandboxvolumes/{id}/files/move" volumes::move_file => 200 Json "Move a volume's file (source, destination)",
        get "/api/v1/sandboxvolumes/{id}/files/watch" volumes::watch => 101 None "WebSocket: subscribe to a volume's file events",
        put "/api/v1/sandboxvolumes/{id}/files/archive" volumes::import_archive => 200 Bytes "Import a tar archive under path (regular files replace what is there; directories, symlinks and hard links made; devices refused): counts of files, directories, symlinks and bytes",
        get "/users/me/ssh-keys" ssh_keys::list => 200 None "List the calling API key's SSH public keys (the SSH gateway's logins)",
        post "/users/me/ssh-keys" ssh_keys::create => 201 Json "Register an SSH public key (name, public_key): `ssh <sandbox-id>@host -p <--ssh-listen port>` then reaches the calling key's team's sandboxes while the key may run commands (409 when the key is registered already)",
        delete "/users/me/ssh-keys/{id}" ssh_keys::delete => 200 None "Remove one of the calling API key's SSH public keys",
        get "/teams" keys::teams => 200 None "List teams (the caller's own; every team for the default team's admins)",
        post "/teams" keys::create_team => 201 Json "Create a team (admin keys of the default team): name; keys made with its team_id see only its sandboxes, snapshots and credential sources",
        post "/api/v1/credential-sources" credentials::create => 201 Json "Create a credential source (values are write-only)",
        get "/api/v1/credential-sources" credentials::list => 200 None "List credential sources (metadata only)",
        get "/api/v1/credential-sources/{name}" credentials::get => 200 None "Get a credential source's metadata",
        put "/api/v1/credential-sources/{name}" credentials::update => 200 Json "Replace a credential source's values",
        delete "/api/v1/credential-sources/{name}" credentials::delete => 200 None "Delete a credential source",
    ]
}

/// The request body an operation takes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    /// A JSON object, under the daemon's JSON body limit.
    Json,
    /// A raw upload, streamed to init and bounded by the sandbox's disk cap.
    Bytes,
}

fn params(path: &str) -> Vec<Value> {
    let mut v: Vec<Value> = path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    if path.contains("/files") && !path.ends_with("/move") && !path.ends_with("/watch") {
        v.push(
            json!({"name": "path", "in": "query", "required": true, "schema": {"type": "string"}}),
        );
    }
    v
}

/// The OpenAPI document of `ops`.
pub fn document(ops: &[Operation]) -> Value {
    let error = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut paths = Map::new();
    for Operation {
        method,
        path,
        summary,
        status,
        body,
        ..
    } in ops
    {
        let mut op = json!({
            "summary": summary,
            "parameters": params(path),
            "responses": {
                status.to_string(): {"description": "success", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}}},
                "400": error, "401": error, "404": error, "409": error,
            },
        });
        match body {
            Body::Json => {
                op["requestBody"] =
                    json!({"content": {"application/json": {"schema": {"type": "object"}}}})
            }
            Body::Bytes => {
                op["requestBody"] = json!({"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}})
            }
            Body::None => {}
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    // Served beside the operations: the probes (no token needed) and the
    // metrics page (in Prometheus' text format).
    let probe = |summary: &str| {
        json!({"get": {"summary": summary, "security": [], "responses": {
            "200": {"description": "success", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}}},
        }}})
    };
    paths.insert("/healthz".into(), probe("Liveness: the daemon answers"));
    paths.insert(
        "/readyz".into(),
        probe("Readiness: the daemon serves the API"),
    );
    paths.insert(
        "/metrics".into(),
        json!({"get": {"summary": "Metrics in Prometheus' text format", "responses": {
            "200": {"description": "success", "content": {"text/plain": {"schema": {"type": "string"}}}},
            "401": error,
        }}}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Sandstone API (Sandbox0-compatible)", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Envelope": {"type": "object", "required": ["success"], "properties": {"success": {"type": "boolean"}, "data": {}}},
                "Error": {"type": "object", "required": ["success", "error"], "properties": {
                    "success": {"const": false},
                    "error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
                }},
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_routed_and_documented_once() {
        let ops = operations();
        let doc = document(&ops);
        let mut seen = std::collections::HashSet::new();
        let mut router = axum::Router::<AppState>::new();
        for op in ops {
            assert!(
                seen.insert((op.method, op.path)),
                "{} {}",
                op.method,
                op.path
            );
            let entry = &doc["paths"][op.path][op.method];
            assert_eq!(entry["summary"], op.summary);
            assert!(entry["responses"][op.status.to_string()].is_object());
            // Panics on a path axum cannot route or a method declared twice.
            router = router.route(op.path, op.route);
        }
        let documented: usize = doc["paths"]
            .as_object()
            .map(|p| p.values().filter_map(Value::as_object).map(Map::len).sum())
            .unwrap_or_default();
        // With /healthz, /readyz and /metrics.
        assert_eq!(documented, seen.len() + 3);
    }
}
