//! The OpenAPI document the daemon serves at `/openapi.json`.
//!
//! One table lists every operation and the document is derived from it; an
//! end-to-end test calls every listed operation to prove the route exists.

use serde_json::{Map, Value, json};

/// (method, path, summary, success status, request body kind).
pub const OPERATIONS: &[(&str, &str, &str, u16, Body)] = &[
    (
        "post",
        "/api/v1/sandboxes",
        "Claim (create) a sandbox",
        201,
        Body::Json,
    ),
    (
        "get",
        "/api/v1/sandboxes",
        "List sandboxes (limit, offset, status, template_id)",
        200,
        Body::None,
    ),
    (
        "get",
        "/api/v1/sandboxes/{id}",
        "Get a sandbox",
        200,
        Body::None,
    ),
    (
        "put",
        "/api/v1/sandboxes/{id}",
        "Update a sandbox's ttl, hard_ttl, auto_resume",
        200,
        Body::Json,
    ),
    (
        "delete",
        "/api/v1/sandboxes/{id}",
        "Delete a sandbox",
        202,
        Body::None,
    ),
    (
        "get",
        "/api/v1/sandboxes/{id}/status",
        "Sandbox status",
        200,
        Body::None,
    ),
    (
        "post",
        "/api/v1/sandboxes/{id}/pause",
        "Pause: end the processes, keep identity and files",
        200,
        Body::Json,
    ),
    (
        "post",
        "/api/v1/sandboxes/{id}/resume",
        "Resume: a new runtime generation on the same files",
        200,
        Body::Json,
    ),
    (
        "post",
        "/api/v1/sandboxes/{id}/refresh",
        "Restart the idle (ttl) clock",
        200,
        Body::Json,
    ),
    (
        "post",
        "/api/v1/sandboxes/{id}/snapshots",
        "Snapshot the sandbox's files (running or paused)",
        201,
        Body::Json,
    ),
    (
        "get",
        "/api/v1/sandboxes/{id}/snapshots",
        "List the sandbox's snapshots",
        200,
        Body::None,
    ),
    (
        "post",
        "/api/v1/sandboxes/{id}/rootfs/restore",
        "Replace a paused sandbox's files with a snapshot",
        200,
        Body::Json,
    ),
    (
        "post",
        "/api/v1/sandboxes/{id}/fork",
        "Fork into a new paused sandbox sharing files copy-on-write",
        201,
        Body::Json,
    ),
    (
        "get",
        "/api/v1/sandbox-rootfs-snapshots/{snap}",
        "Get a snapshot",
        200,
        Body::None,
    ),
    (
        "delete",
        "/api/v1/sandbox-rootfs-snapshots/{snap}",
        "Delete a snapshot",
        200,
        Body::None,
    ),
    (
        "get",
        "/api/v1/sandboxes/{id}/network",
        "The sandbox's network policy",
        200,
        Body::None,
    ),
    (
        "put",
        "/api/v1/sandboxes/{id}/network",
        "Replace the network policy (new connections see it at once)",
        200,
        Body::Json,
    ),
    (
        "get",
        "/api/v1/sandboxes/{id}/observability/events",
        "Egress audit records (after, limit, denied)",
        200,
        Body::None,
    ),
    (
        "post",
        "/api/v1/sandboxes/{id}/contexts",
        "Create a context (cmd or repl); wait_until_done runs it to completion",
        201,
        Body::Json,
    ),
    (
        "get",
        "/api/v1/sandboxes/{id}/contexts",
        "List contexts",
        200,
        Body::None,
    ),
    (
        "get",
        "/api/v1/sandboxes/{id}/contexts/{ctx}",
        "Get a context",
        200,
        Body::None,
    ),
    (
        "delete",
        "/api/v1/sandboxes/{id}/contexts/{ctx}",
        "Kill and remove a context",
        200,
        Body::None,
    ),
    (
        "post",
        "/api/v1/sandboxes/{id}/contexts/{ctx}/exec",
        "Run code in a REPL context",
        200,
        Body::Json,
    ),
    (
        "post",
        "/api/v1/sandboxes/{id}/contexts/{ctx}/input",
        "Write to a context's stdin",
        200,
        Body::Json,
    ),
    (
        "post",
        "/api/v1/sandboxes/{id}/contexts/{ctx}/signal",
        "Signal a context's process group",
        200,
        Body::Json,
    ),
    (
        "post",
        "/api/v1/sandboxes/{id}/contexts/{ctx}/resize",
        "Resize a context's PTY",
        200,
        Body::Json,
    ),
    (
        "post",
        "/api/v1/sandboxes/{id}/contexts/{ctx}/restart",
        "Restart a context",
        200,
        Body::None,
    ),
    (
        "get",
        "/api/v1/sandboxes/{id}/contexts/{ctx}/ws",
        "WebSocket: output stream (output, truncated when earlier output was dropped, done), input, resize, signal",
        101,
        Body::None,
    ),
    (
        "get",
        "/api/v1/sandboxes/{id}/files",
        "Read a file (raw bytes; query: path)",
        200,
        Body::None,
    ),
    (
        "post",
        "/api/v1/sandboxes/{id}/files",
        "Write a file (raw body), or mkdir=true[&recursive=true]",
        200,
        Body::Bytes,
    ),
    (
        "delete",
        "/api/v1/sandboxes/{id}/files",
        "Remove a file or directory tree",
        200,
        Body::None,
    ),
    (
        "get",
        "/api/v1/sandboxes/{id}/files/stat",
        "Stat a path",
        200,
        Body::None,
    ),
    (
        "get",
        "/api/v1/sandboxes/{id}/files/list",
        "List a directory",
        200,
        Body::None,
    ),
    (
        "post",
        "/api/v1/sandboxes/{id}/files/move",
        "Move a path",
        200,
        Body::Json,
    ),
    (
        "get",
        "/api/v1/sandboxes/{id}/files/watch",
        "WebSocket: subscribe to file events",
        101,
        Body::None,
    ),
    (
        "post",
        "/api/v1/sandboxes/{id}/tools/{name}",
        "Run an agent toolset tool (bash, read, write, edit, glob, grep) in the sandbox",
        200,
        Body::Json,
    ),
    (
        "get",
        "/api/v1/templates",
        "List templates",
        200,
        Body::None,
    ),
    (
        "post",
        "/api/v1/credential-sources",
        "Create a credential source (values are write-only)",
        201,
        Body::Json,
    ),
    (
        "get",
        "/api/v1/credential-sources",
        "List credential sources (metadata only)",
        200,
        Body::None,
    ),
    (
        "get",
        "/api/v1/credential-sources/{name}",
        "Get a credential source's metadata",
        200,
        Body::None,
    ),
    (
        "put",
        "/api/v1/credential-sources/{name}",
        "Replace a credential source's values",
        200,
        Body::Json,
    ),
    (
        "delete",
        "/api/v1/credential-sources/{name}",
        "Delete a credential source",
        200,
        Body::None,
    ),
];

#[derive(Clone, Copy)]
pub enum Body {
    None,
    Json,
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

pub fn document() -> Value {
    let error = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut paths = Map::new();
    for (method, path, summary, status, body) in OPERATIONS {
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
        entry[method] = op;
    }
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
