//! Rust client of Sandstone's REST API (used by the CLI and tests).

pub use reqwest::Method;
use reqwest::StatusCode;
use sandstone_api as api;
use serde::de::DeserializeOwned;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the daemon at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{code}: {message} (HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected response: {0}")]
    Decode(String),
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    /// The team its calls act for (`x-sandstone-team`): heeded only for
    /// the daemon's own key, which acts for every team.
    team: Option<String>,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
            team: None,
        }
    }

    /// A client whose calls give up: connecting after `connect`, any call
    /// after `total` (for a long-running service that must not hang).
    pub fn with_timeouts(
        base: &str,
        token: &str,
        connect: std::time::Duration,
        total: std::time::Duration,
    ) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(connect)
            .timeout(total)
            .build()
            .expect("a client with timeouts builds");
        Client {
            http,
            ..Client::new(base, token)
        }
    }

    /// The same client, its calls acting for `team`.
    pub fn for_team(mut self, team: &str) -> Client {
        self.team = Some(team.to_string());
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let mut req = req.bearer_auth(&self.token);
        if let Some(team) = &self.team {
            req = req.header("x-sandstone-team", team);
        }
        let resp = req.send().await.map_err(|source| Error::Connect {
            url: self.base.clone(),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        Err(Error::Api {
            status: status.as_u16(),
            // Sandbox0's shape names a `code`, Anthropic's a `type`.
            code: body["error"]["code"]
                .as_str()
                .or(body["error"]["type"].as_str())
                .unwrap_or("error")
                .to_string(),
            message: body["error"]["message"]
                .as_str()
                .unwrap_or(status.canonical_reason().unwrap_or(""))
                .to_string(),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.data(req).await
    }

    /// Sends `req` and takes `data` out of the answer's envelope.
    async fn data<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        let env: api::Envelope<T> = self
            .send(req)
            .await?
            .json()
            .await
            .map_err(|e| Error::Decode(e.to_string()))?;
        env.data.ok_or_else(|| Error::Decode("missing data".into()))
    }

    /// A Managed Agents call under `/v1` (Anthropic's shapes, no envelope).
    pub async fn v1(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        self.send(self.v1_request(method, path, body))
            .await?
            .json()
            .await
            .map_err(|e| Error::Decode(e.to_string()))
    }

    /// A session's live event stream (SSE), as a response to read from.
    pub async fn v1_stream(&self, path: &str) -> Result<reqwest::Response> {
        self.send(self.v1_request(Method::GET, path, None)).await
    }

    fn v1_request(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, self.url(&format!("/v1{path}")))
            .header("anthropic-beta", "managed-agents-2026-04-01");
        if let Some(b) = body {
            req = req.json(&b);
        }
        req
    }

    pub async fn claim(
        &self,
        template: &str,
        config: Option<api::SandboxConfig>,
    ) -> Result<api::ClaimResponse> {
        self.claim_from(template, config, None).await
    }

    /// Claims a sandbox, starting from a snapshot's files when given.
    pub async fn claim_from(
        &self,
        template: &str,
        config: Option<api::SandboxConfig>,
        snapshot: Option<&str>,
    ) -> Result<api::ClaimResponse> {
        self.claim_request(&api::ClaimRequest {
            template: Some(template.to_string()),
            config,
            snapshot_id: snapshot.map(str::to_string),
            mounts: Vec::new(),
        })
        .await
    }

    /// Claims a sandbox as `req` says (volumes in `mounts` included).
    pub async fn claim_request(&self, req: &api::ClaimRequest) -> Result<api::ClaimResponse> {
        self.call(Method::POST, "/api/v1/sandboxes", Some(json!(req)))
            .await
    }

    pub async fn create_volume(
        &self,
        req: &api::volumes::CreateSandboxVolumeRequest,
    ) -> Result<api::volumes::SandboxVolume> {
        self.call(Method::POST, "/api/v1/sandboxvolumes", Some(json!(req)))
            .await
    }

    pub async fn volumes(&self) -> Result<Vec<api::volumes::SandboxVolume>> {
        self.call(Method::GET, "/api/v1/sandboxvolumes", None).await
    }

    pub async fn delete_volume(&self, id: &str) -> Result<serde_json::Value> {
        let path = format!("/api/v1/sandboxvolumes/{id}");
        self.call(Method::DELETE, &path, None).await
    }

    pub async fn fork_volume(&self, id: &str) -> Result<api::volumes::SandboxVolume> {
        let path = format!("/api/v1/sandboxvolumes/{id}/fork");
        self.call(Method::POST, &path, Some(json!({}))).await
    }

    pub async fn snapshot_volume(
        &self,
        id: &str,
        name: &str,
    ) -> Result<api::volumes::VolumeSnapshot> {
        let path = format!("/api/v1/sandboxvolumes/{id}/snapshots");
        self.call(Method::POST, &path, Some(json!({"name": name})))
            .await
    }

    /// A file of a volume, read without a sandbox.
    pub async fn read_volume_file(&self, id: &str, path: &str) -> Result<Vec<u8>> {
        self.get_file(&format!("/api/v1/sandboxvolumes/{id}/files"), path)
            .await
    }

    pub async fn write_volume_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<()> {
        self.post_file(&format!("/api/v1/sandboxvolumes/{id}/files"), path, data)
            .await
    }

    /// The bytes of file `path` at a files route.
    async fn get_file(&self, route: &str, path: &str) -> Result<Vec<u8>> {
        let req = self.http.get(self.url(route)).query(&[("path", path)]);
        let resp = self.send(req).await?;
        Ok(resp
            .bytes()
            .await
            .map_err(|e| Error::Decode(e.to_string()))?
            .to_vec())
    }

    async fn post_file(&self, route: &str, path: &str, data: Vec<u8>) -> Result<()> {
        let req = self
            .http
            .post(self.url(route))
            .query(&[("path", path)])
            .header("content-type", "application/octet-stream")
            .body(data);
        self.send(req).await.map(drop)
    }

    /// The nodes sharing the daemon's database (`{"nodes": [...]}`).
    pub async fn nodes(&self) -> Result<serde_json::Value> {
        self.call(Method::GET, "/api/v1/nodes", None).await
    }

    /// Drains node `id` (no new sandboxes there), or undoes it.
    pub async fn set_draining(&self, id: &str, draining: bool) -> Result<serde_json::Value> {
        let verb = if draining { "drain" } else { "undrain" };
        self.call(Method::POST, &format!("/api/v1/nodes/{id}/{verb}"), None)
            .await
    }

    pub async fn network(&self, id: &str) -> Result<serde_json::Value> {
        self.call(
            Method::GET,
            &format!("/api/v1/sandboxes/{id}/network"),
            None,
        )
        .await
    }

    pub async fn set_network(
        &self,
        id: &str,
        policy: serde_json::Value,
    ) -> Result<serde_json::Value> {
        self.call(
            Method::PUT,
            &format!("/api/v1/sandboxes/{id}/network"),
            Some(policy),
        )
        .await
    }

    /// Egress audit events after `cursor` (a record's sequence number;
    /// 0 for the first), denials only when `denied`.
    pub async fn events(
        &self,
        id: &str,
        cursor: i64,
        denied: bool,
    ) -> Result<sandstone_api::observability::EventsPage> {
        let outcome = if denied { "&outcome=denied" } else { "" };
        let path = format!(
            "/api/v1/sandboxes/{id}/observability/events?cursor={cursor}&limit=1000{outcome}"
        );
        self.call(Method::GET, &path, None).await
    }

    /// A page of a sandbox's durable output log: after `cursor`, or the
    /// latest `limit` lines without one; only context `context`'s if set.
    pub async fn logs(
        &self,
        id: &str,
        cursor: Option<&str>,
        limit: usize,
        context: Option<&str>,
    ) -> Result<sandstone_api::logs::LogPage> {
        let mut query = vec![("limit", limit.to_string())];
        for (key, value) in [("cursor", cursor), ("context_id", context)] {
            if let Some(v) = value {
                query.push((key, v.to_string()));
            }
        }
        let req = self
            .http
            .get(self.url(&format!("/api/v1/sandboxes/{id}/observability/logs")))
            .query(&query);
        self.data(req).await
    }

    pub async fn put_credential(
        &self,
        name: &str,
        headers: &std::collections::BTreeMap<String, String>,
        create: bool,
    ) -> Result<api::CredentialSourceMeta> {
        let body = json!({"name": name, "resolverKind": "static_headers", "spec": {"staticHeaders": {"values": headers}}});
        if create {
            self.call(Method::POST, "/api/v1/credential-sources", Some(body))
                .await
        } else {
            self.call(
                Method::PUT,
                &format!("/api/v1/credential-sources/{name}"),
                Some(body),
            )
            .await
        }
    }

    pub async fn credentials(&self) -> Result<Vec<api::CredentialSourceMeta>> {
        self.call(Method::GET, "/api/v1/credential-sources", None)
            .await
    }

    pub async fn delete_credential(&self, name: &str) -> Result<serde_json::Value> {
        self.call(
            Method::DELETE,
            &format!("/api/v1/credential-sources/{name}"),
            None,
        )
        .await
    }

    /// The daemon's Prometheus metrics page.
    pub async fn metrics(&self) -> Result<String> {
        let resp = self.send(self.http.get(self.url("/metrics"))).await?;
        resp.text().await.map_err(|e| Error::Decode(e.to_string()))
    }

    /// `POST /api/v1/sandboxes/{id}/{op}` with an empty body.
    async fn sandbox_op<T: DeserializeOwned>(&self, id: &str, op: &str) -> Result<T> {
        self.call(
            Method::POST,
            &format!("/api/v1/sandboxes/{id}/{op}"),
            Some(json!({})),
        )
        .await
    }

    pub async fn pause(&self, id: &str) -> Result<api::PauseResponse> {
        self.sandbox_op(id, "pause").await
    }

    /// Pauses keeping the processes with their memory (frozen in place);
    /// the next resume continues them.
    pub async fn pause_with_memory(&self, id: &str) -> Result<api::PauseResponse> {
        self.call(
            Method::POST,
            &format!("/api/v1/sandboxes/{id}/pause"),
            Some(json!({"memory": true})),
        )
        .await
    }

    pub async fn resume(&self, id: &str) -> Result<api::ResumeResponse> {
        self.sandbox_op(id, "resume").await
    }

    pub async fn fork(&self, id: &str) -> Result<api::ForkResponse> {
        self.sandbox_op(id, "fork").await
    }

    pub async fn restore(&self, id: &str, snapshot: &str) -> Result<api::RestoreResponse> {
        let body = json!({"snapshot_id": snapshot});
        self.call(
            Method::POST,
            &format!("/api/v1/sandboxes/{id}/rootfs/restore"),
            Some(body),
        )
        .await
    }

    pub async fn snapshot(&self, id: &str, name: Option<&str>) -> Result<api::Snapshot> {
        let body = json!({"name": name});
        self.call(
            Method::POST,
            &format!("/api/v1/sandboxes/{id}/snapshots"),
            Some(body),
        )
        .await
    }

    pub async fn snapshots(&self, id: &str) -> Result<api::SnapshotList> {
        self.call(
            Method::GET,
            &format!("/api/v1/sandboxes/{id}/snapshots"),
            None,
        )
        .await
    }

    pub async fn delete_snapshot(&self, snapshot: &str) -> Result<serde_json::Value> {
        self.call(
            Method::DELETE,
            &format!("/api/v1/sandbox-rootfs-snapshots/{snapshot}"),
            None,
        )
        .await
    }

    pub async fn list(&self) -> Result<api::SandboxList> {
        self.call(Method::GET, "/api/v1/sandboxes?limit=1000", None)
            .await
    }

    pub async fn get(&self, id: &str) -> Result<api::Sandbox> {
        self.call(Method::GET, &format!("/api/v1/sandboxes/{id}"), None)
            .await
    }

    pub async fn delete(&self, id: &str) -> Result<api::Message> {
        self.call(Method::DELETE, &format!("/api/v1/sandboxes/{id}"), None)
            .await
    }

    pub async fn templates(&self) -> Result<api::TemplateList> {
        self.call(Method::GET, "/api/v1/templates", None).await
    }

    /// Runs a command to completion.
    pub async fn run(
        &self,
        id: &str,
        argv: &[String],
        cwd: Option<&str>,
        timeout_sec: Option<u64>,
    ) -> Result<api::ContextResponse> {
        let body = json!({
            "type": "cmd", "cmd": {"command": argv}, "wait_until_done": true,
            "cwd": cwd, "timeout_sec": timeout_sec,
        });
        self.create_context(id, body).await
    }

    /// `POST .../contexts`: every way of starting a context goes through it.
    async fn create_context(
        &self,
        id: &str,
        body: serde_json::Value,
    ) -> Result<api::ContextResponse> {
        self.call(
            Method::POST,
            &format!("/api/v1/sandboxes/{id}/contexts"),
            Some(body),
        )
        .await
    }

    /// Starts a REPL context (`python` or `bash`) and returns its id.
    pub async fn repl(&self, id: &str, language: &str) -> Result<String> {
        let body = json!({"type": "repl", "repl": {"alias": language}});
        Ok(self.create_context(id, body).await?.id)
    }

    /// Runs code in a REPL context.
    pub async fn exec(&self, id: &str, ctx: &str, code: &str) -> Result<api::ExecResponse> {
        let body = json!({"data": code});
        self.call(
            Method::POST,
            &format!("/api/v1/sandboxes/{id}/contexts/{ctx}/exec"),
            Some(body),
        )
        .await
    }

    /// Imports an image archive (a tar of an OCI layout or of `docker
    /// save`'s output, plain or gzipped) as template `name`, streamed.
    pub async fn import_template(
        &self,
        name: &str,
        archive: tokio::fs::File,
    ) -> Result<serde_json::Value> {
        let req = self
            .http
            .post(self.url("/api/v1/templates/import"))
            .query(&[("name", name)])
            .header("content-type", "application/x-tar")
            .body(reqwest::Body::wrap_stream(chunks(archive)));
        self.data(req).await
    }

    /// Builds template `name` from `context` (a tar of the build context
    /// with its `Sandstonefile`), calling `progress` with each event as the
    /// daemon sends it; the last (`done` or `failed`).
    pub async fn build_template(
        &self,
        name: &str,
        context: Vec<u8>,
        mut progress: impl FnMut(&api::BuildEvent),
    ) -> Result<api::BuildEvent> {
        use futures_util::StreamExt;
        let req = self
            .http
            .post(self.url("/api/v1/templates/build"))
            .query(&[("name", name)])
            .header("content-type", "application/x-tar")
            .body(context);
        let mut body = self.send(req).await?.bytes_stream();
        let mut buf = Vec::new();
        let mut last = None;
        while let Some(piece) = body.next().await {
            buf.extend_from_slice(&piece.map_err(|e| Error::Decode(e.to_string()))?);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let event: api::BuildEvent =
                    serde_json::from_slice(&line).map_err(|e| Error::Decode(e.to_string()))?;
                progress(&event);
                last = Some(event);
            }
        }
        last.ok_or_else(|| Error::Decode("the build's answer ended before it did".into()))
    }

    /// Removes the build cache and layers nothing uses.
    pub async fn prune_templates(&self) -> Result<serde_json::Value> {
        self.call(Method::POST, "/api/v1/templates/prune", None)
            .await
    }

    /// Pulls `image` as template `name` (answers once it is ready).
    pub async fn pull_template(
        &self,
        name: &str,
        image: &str,
        memory: &str,
    ) -> Result<api::Template> {
        let body = json!({"template_id": name, "spec": {"mainContainer": {
            "image": image, "resources": {"memory": memory}}}});
        self.call(Method::POST, "/api/v1/templates", Some(body))
            .await
    }

    /// Captures sandbox `id`'s files as template `name`.
    pub async fn capture_template(&self, id: &str, name: &str) -> Result<api::Template> {
        let body = json!({"template_id": name, "sandbox_id": id});
        self.call(Method::POST, "/api/v1/templates/from-sandbox", Some(body))
            .await
    }

    /// Deletes template `name`; `force` retires one in use (see the API).
    pub async fn delete_template(&self, name: &str, force: bool) -> Result<serde_json::Value> {
        let path = format!("/api/v1/templates/{name}?force={force}");
        self.call(Method::DELETE, &path, None).await
    }

    pub async fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>> {
        self.get_file(&format!("/api/v1/sandboxes/{id}/files"), path)
            .await
    }

    pub async fn write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<()> {
        self.post_file(&format!("/api/v1/sandboxes/{id}/files"), path, data)
            .await
    }

    /// Runs one agent toolset tool (`bash`, `read`, `write`, `edit`, `glob`,
    /// `grep`) in the sandbox. A failure the model should see is a result
    /// with `is_error`, not an `Err`.
    pub async fn tool(
        &self,
        id: &str,
        name: &str,
        req: &api::ToolCallRequest,
    ) -> Result<api::ToolCallResult> {
        self.call(
            Method::POST,
            &format!("/api/v1/sandboxes/{id}/tools/{name}"),
            Some(json!(req)),
        )
        .await
    }

    /// Writes a file with a mode (octal permission bits).
    pub async fn write_file_mode(
        &self,
        id: &str,
        path: &str,
        data: Vec<u8>,
        mode: u32,
    ) -> Result<()> {
        let req = self
            .http
            .post(self.url(&format!("/api/v1/sandboxes/{id}/files")))
            .query(&[("path", path), ("mode", &format!("{mode:o}"))])
            .header("content-type", "application/octet-stream")
            .body(data);
        self.send(req).await.map(drop)
    }

    /// `/api/v1/sandboxes/{id}/uploads/{name}`, the name escaped.
    fn upload_url(&self, id: &str, name: &str) -> Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.url(&format!("/api/v1/sandboxes/{id}/uploads")))
            .map_err(|e| Error::Decode(format!("the daemon's URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| Error::Decode("the daemon's URL cannot take a path".into()))?
            .push(name);
        Ok(url)
    }

    /// Puts `data` in the sandbox's read-only uploads directory (its
    /// `config.uploads_dir`) as `name`.
    pub async fn put_upload(&self, id: &str, name: &str, data: Vec<u8>) -> Result<api::UploadInfo> {
        let req = self
            .http
            .put(self.upload_url(id, name)?)
            .header("content-type", "application/octet-stream")
            .body(data);
        self.data(req).await
    }

    pub async fn uploads(&self, id: &str) -> Result<Vec<api::UploadInfo>> {
        self.call(
            Method::GET,
            &format!("/api/v1/sandboxes/{id}/uploads"),
            None,
        )
        .await
    }

    pub async fn delete_upload(&self, id: &str, name: &str) -> Result<()> {
        let req = self.http.delete(self.upload_url(id, name)?);
        self.send(req).await.map(drop)
    }

    /// `PUT /sandboxes/{id}`: what `config` sets, the rest kept.
    pub async fn update(&self, id: &str, config: &api::SandboxUpdateConfig) -> Result<()> {
        let body = json!({"config": config});
        self.call::<serde_json::Value>(Method::PUT, &format!("/api/v1/sandboxes/{id}"), Some(body))
            .await
            .map(drop)
    }

    /// `GET /api-keys` (admin keys only).
    pub async fn api_keys(&self) -> Result<Vec<api::ApiKey>> {
        let v: serde_json::Value = self.call(Method::GET, "/api-keys", None).await?;
        serde_json::from_value(v["api_keys"].clone()).map_err(|e| Error::Decode(e.to_string()))
    }

    /// `POST /api-keys`: the answer holds the key's value, shown only here.
    pub async fn create_api_key(
        &self,
        req: &api::CreateApiKeyRequest,
    ) -> Result<api::CreatedApiKey> {
        self.call(Method::POST, "/api-keys", Some(json!(req))).await
    }

    /// `GET /teams`: the caller's team (every team for the default team's
    /// admins).
    pub async fn teams(&self) -> Result<Vec<api::Team>> {
        let v: serde_json::Value = self.call(Method::GET, "/teams", None).await?;
        serde_json::from_value(v["teams"].clone()).map_err(|e| Error::Decode(e.to_string()))
    }

    /// `POST /teams`.
    pub async fn create_team(&self, name: &str) -> Result<api::Team> {
        self.call(Method::POST, "/teams", Some(json!({ "name": name })))
            .await
    }

    /// `GET /api-keys/current`: the key this client calls with.
    pub async fn current_api_key(&self) -> Result<api::CurrentKey> {
        let v: api::CurrentApiKey = self.call(Method::GET, "/api-keys/current", None).await?;
        Ok(v.api_key)
    }

    pub async fn delete_api_key(&self, id: &str) -> Result<()> {
        self.call::<serde_json::Value>(Method::DELETE, &format!("/api-keys/{id}"), None)
            .await
            .map(drop)
    }

    pub async fn deactivate_api_key(&self, id: &str) -> Result<()> {
        self.call::<serde_json::Value>(Method::POST, &format!("/api-keys/{id}/deactivate"), None)
            .await
            .map(drop)
    }

    /// `mkdir -p`.
    pub async fn mkdir(&self, id: &str, path: &str) -> Result<()> {
        let req = self
            .http
            .post(self.url(&format!("/api/v1/sandboxes/{id}/files")))
            .query(&[("path", path), ("mkdir", "true"), ("recursive", "true")]);
        self.send(req).await.map(drop)
    }

    pub async fn list_dir(&self, id: &str, path: &str) -> Result<Vec<api::FileInfo>> {
        self.list_at(&format!("/api/v1/sandboxes/{id}/files/list"), path)
            .await
    }

    /// Entries of directory `path` at a files route's `list`.
    async fn list_at(&self, route: &str, path: &str) -> Result<Vec<api::FileInfo>> {
        let req = self.http.get(self.url(route)).query(&[("path", path)]);
        let list: api::FileList = self.data(req).await?;
        Ok(list.entries)
    }

    /// Removes a file or a whole directory tree.
    pub async fn remove_path(&self, id: &str, path: &str) -> Result<()> {
        let req = self
            .http
            .delete(self.url(&format!("/api/v1/sandboxes/{id}/files")))
            .query(&[("path", path)]);
        self.send(req).await.map(drop)
    }

    pub async fn move_path(&self, id: &str, from: &str, to: &str) -> Result<()> {
        let body = json!({"source": from, "destination": to});
        self.call::<serde_json::Value>(
            Method::POST,
            &format!("/api/v1/sandboxes/{id}/files/move"),
            Some(body),
        )
        .await
        .map(drop)
    }

    /// Sandbox volumes labelled `key=value`.
    pub async fn find_labeled_volumes(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<api::volumes::SandboxVolume>> {
        let req = self
            .http
            .get(self.url("/api/v1/sandboxvolumes"))
            .query(&[(&format!("metadata.{key}"), value)]);
        self.data(req).await
    }

    /// Entries of directory `path` of a volume.
    pub async fn list_volume_dir(&self, id: &str, path: &str) -> Result<Vec<api::FileInfo>> {
        self.list_at(&format!("/api/v1/sandboxvolumes/{id}/files/list"), path)
            .await
    }

    /// Sandboxes labelled `key=value` (see `SandboxConfig::metadata`).
    pub async fn find_labeled(&self, key: &str, value: &str) -> Result<Vec<api::SandboxSummary>> {
        let req = self
            .http
            .get(self.url("/api/v1/sandboxes"))
            .query(&[("limit", "1000"), (&format!("metadata.{key}"), value)]);
        let list: api::SandboxList = self.data(req).await?;
        Ok(list.sandboxes)
    }
}

/// Whether an error is the API's "not found".
pub fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Api { status, .. } if *status == StatusCode::NOT_FOUND.as_u16())
}

/// Output and completion of a context, streamed over its WebSocket.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Output {
        source: String,
        data: String,
    },
    Done {
        exit_code: Option<i32>,
        state: String,
    },
    Error(String),
    /// Output the sandbox could not keep (nobody read it in time) was
    /// dropped before what follows.
    Truncated {
        dropped_bytes: u64,
    },
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a context [`Client::start`]s keeps its output whole for the
/// attach that follows (see `hold_output_sec`).
const START_HOLD_SEC: u64 = 300;

/// A live attachment to a context (`.../contexts/{ctx}/ws`).
pub struct Attached {
    ws: Ws,
}

impl Client {
    /// Starts a command without waiting; returns the context id.
    pub async fn start(
        &self,
        id: &str,
        argv: &[String],
        cwd: Option<&str>,
        pty: Option<api::PtySize>,
        timeout_sec: Option<u64>,
    ) -> Result<String> {
        // The caller attaches right after: however loaded the machine is,
        // output waits for it rather than being dropped.
        let body = json!({
            "type": "cmd", "cmd": {"command": argv}, "wait_until_done": false,
            "cwd": cwd, "pty_size": pty, "timeout_sec": timeout_sec,
            "hold_output_sec": START_HOLD_SEC,
        });
        Ok(self.create_context(id, body).await?.id)
    }

    /// Attaches to a context's output (replayed from its start) and input.
    pub async fn attach(&self, id: &str, ctx: &str) -> Result<Attached> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}/api/v1/sandboxes/{id}/contexts/{ctx}/ws", self.base)
            .replacen("http", "ws", 1);
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::Decode(e.to_string()))?;
        let auth = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| Error::Decode("token is not a valid header".into()))?;
        req.headers_mut().insert("authorization", auth);
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => {
                    let body: serde_json::Value = resp
                        .body()
                        .as_deref()
                        .and_then(|b| serde_json::from_slice(b).ok())
                        .unwrap_or_default();
                    Error::Api {
                        status: resp.status().as_u16(),
                        code: body["error"]["code"]
                            .as_str()
                            .unwrap_or("error")
                            .to_string(),
                        message: body["error"]["message"].as_str().unwrap_or("").to_string(),
                    }
                }
                other => Error::Decode(other.to_string()),
            })?;
        Ok(Attached { ws })
    }
}

impl Attached {
    /// The next event; `None` once the stream is closed.
    pub async fn next(&mut self) -> Option<StreamEvent> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let msg = match self.ws.next().await? {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            };
            let v: serde_json::Value = serde_json::from_str(&msg).unwrap_or_default();
            return Some(match v["type"].as_str() {
                Some("done") => StreamEvent::Done {
                    exit_code: v["exit_code"].as_i64().map(|c| c as i32),
                    state: v["state"].as_str().unwrap_or("").to_string(),
                },
                Some("error") => StreamEvent::Error(v["error"].as_str().unwrap_or("").to_string()),
                Some("truncated") => StreamEvent::Truncated {
                    dropped_bytes: v["dropped_bytes"].as_u64().unwrap_or(0),
                },
                _ => StreamEvent::Output {
                    source: v["source"].as_str().unwrap_or("stdout").to_string(),
                    data: v["data"].as_str().unwrap_or("").to_string(),
                },
            });
        }
    }

    async fn send(&mut self, v: serde_json::Value) -> Result<()> {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(
                v.to_string().into(),
            ))
            .await
            .map_err(|e| Error::Decode(e.to_string()))
    }

    pub async fn input(&mut self, data: &str) -> Result<()> {
        self.send(json!({"type": "input", "data": data})).await
    }

    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<()> {
        self.send(json!({"type": "resize", "rows": rows, "cols": cols}))
            .await
    }
}

/// A file as a stream of 1 MiB pieces: each read of a tokio file is a
/// blocking task, so small pieces (reqwest's own file body reads 8 KiB)
/// would make an upload of a large archive slow.
fn chunks(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::with_capacity(1 << 20);
        match (&mut file).take(1 << 20).read_to_end(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(buf), file)),
            Err(e) => Some((Err(e), file)),
        }
    })
}
