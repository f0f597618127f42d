//! Rust client of Sandstone's REST API (used by the CLI and tests).

use reqwest::{Method, StatusCode};
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
}

impl Client {
    pub fn new(base: &str, token: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| Error::Connect {
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
            code: body["error"]["code"]
                .as_str()
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
        let env: api::Envelope<T> = self
            .send(req)
            .await?
            .json()
            .await
            .map_err(|e| Error::Decode(e.to_string()))?;
        env.data.ok_or_else(|| Error::Decode("missing data".into()))
    }

    pub async fn claim(
        &self,
        template: &str,
        config: Option<api::SandboxConfig>,
    ) -> Result<api::ClaimResponse> {
        let body = json!({"template": template, "config": config});
        self.call(Method::POST, "/api/v1/sandboxes", Some(body))
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
        let ctx: api::ContextResponse = self
            .call(
                Method::POST,
                &format!("/api/v1/sandboxes/{id}/contexts"),
                Some(body),
            )
            .await?;
        Ok(ctx.id)
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

    pub async fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>> {
        let req = self
            .http
            .get(self.url(&format!("/api/v1/sandboxes/{id}/files")))
            .query(&[("path", path)]);
        let resp = self.send(req).await?;
        Ok(resp
            .bytes()
            .await
            .map_err(|e| Error::Decode(e.to_string()))?
            .to_vec())
    }

    pub async fn write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<()> {
        let req = self
            .http
            .post(self.url(&format!("/api/v1/sandboxes/{id}/files")))
            .query(&[("path", path)])
            .header("content-type", "application/octet-stream")
            .body(data);
        self.send(req).await.map(drop)
    }
}

/// Whether an error is the API's "not found".
pub fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Api { status, .. } if *status == StatusCode::NOT_FOUND.as_u16())
}
