//! `sandstone env|agent|session`: the Managed Agents control plane from the
//! command line (the same `/v1` API the Anthropic SDKs speak).

use anyhow::{Context, Result};
use clap::Subcommand;
use sandstone_api::FileKind;
use sandstone_client::{Client, Method};
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum EnvCmd {
    /// Create a self_hosted environment and mint its first key.
    Create { name: String },
    /// List environments.
    Ls,
    /// List an environment's keys, mint one (--create) or revoke one.
    Keys {
        env: String,
        #[arg(long)]
        create: bool,
        #[arg(long, value_name = "KEY_ID")]
        revoke: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum AgentCmd {
    /// Create an agent with the agent toolset (and print its id).
    Create {
        name: String,
        #[arg(long)]
        model: String,
        #[arg(long)]
        system: Option<String>,
        /// Tools need a confirmation before they run (always_ask).
        #[arg(long)]
        ask: bool,
    },
    /// List agents.
    Ls,
}

#[derive(Subcommand)]
pub enum SessionCmd {
    /// Start a session (queues work for the environment's workers).
    Create {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        env: String,
        #[arg(long)]
        title: Option<String>,
    },
    /// List sessions.
    Ls,
    /// Send a user message.
    Send { id: String, text: String },
    /// Follow a session's events, human-readable.
    Tail { id: String },
    /// What the agent left in `/mnt/session/outputs` of the session's
    /// sandbox: listed, or downloaded into a directory.
    Outputs {
        id: String,
        /// Download every file here (relative paths kept).
        #[arg(long)]
        to: Option<std::path::PathBuf>,
    },
}

fn row(cols: &[&str]) {
    println!("{}", cols.join("  "));
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("-")
}

pub async fn env(c: &Client, cmd: &EnvCmd) -> Result<()> {
    match cmd {
        EnvCmd::Create { name } => {
            let env = c
                .v1(
                    Method::POST,
                    "/environments",
                    Some(json!({"name": name, "config": {"type": "self_hosted"}})),
                )
                .await?;
            let id = s(&env, "id");
            let key = c
                .v1(Method::POST, &format!("/environments/{id}/keys"), None)
                .await?;
            println!("ANTHROPIC_ENVIRONMENT_ID={id}");
            println!("ANTHROPIC_ENVIRONMENT_KEY={}", s(&key, "key"));
        }
        EnvCmd::Ls => {
            for e in c.v1(Method::GET, "/environments?limit=100", None).await?["data"]
                .as_array()
                .into_iter()
                .flatten()
            {
                row(&[
                    s(e, "id"),
                    s(e, "name"),
                    s(&e["config"], "type"),
                    s(e, "created_at"),
                ]);
            }
        }
        EnvCmd::Keys {
            env,
            create,
            revoke,
        } => {
            if *create {
                let key = c
                    .v1(Method::POST, &format!("/environments/{env}/keys"), None)
                    .await?;
                println!("{}", s(&key, "key"));
                return Ok(());
            }
            if let Some(k) = revoke {
                c.v1(
                    Method::POST,
                    &format!("/environments/{env}/keys/{k}/revoke"),
                    None,
                )
                .await?;
            }
            for k in c
                .v1(Method::GET, &format!("/environments/{env}/keys"), None)
                .await?["data"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let state = if k["revoked_at"].is_null() {
                    "active"
                } else {
                    "revoked"
                };
                row(&[s(k, "id"), state, s(k, "created_at")]);
            }
        }
    }
    Ok(())
}

pub async fn agent(c: &Client, cmd: &AgentCmd) -> Result<()> {
    match cmd {
        AgentCmd::Create {
            name,
            model,
            system,
            ask,
        } => {
            let policy = if *ask { "always_ask" } else { "always_allow" };
            let body = json!({
                "name": name, "model": model, "system": system,
                "tools": [{"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": policy}}}],
            });
            println!(
                "{}",
                s(&c.v1(Method::POST, "/agents", Some(body)).await?, "id")
            );
        }
        AgentCmd::Ls => {
            for a in c.v1(Method::GET, "/agents?limit=100", None).await?["data"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let version = a["version"].to_string();
                row(&[s(a, "id"), &version, s(a, "name"), s(&a["model"], "id")]);
            }
        }
    }
    Ok(())
}

pub async fn session(c: &Client, cmd: &SessionCmd) -> Result<()> {
    match cmd {
        SessionCmd::Create { agent, env, title } => {
            let body = json!({"agent": agent, "environment_id": env, "title": title});
            println!(
                "{}",
                s(&c.v1(Method::POST, "/sessions", Some(body)).await?, "id")
            );
        }
        SessionCmd::Ls => {
            for x in c.v1(Method::GET, "/sessions?limit=100", None).await?["data"]
                .as_array()
                .into_iter()
                .flatten()
            {
                row(&[
                    s(x, "id"),
                    s(x, "status"),
                    s(&x["agent"], "name"),
                    s(x, "created_at"),
                ]);
            }
        }
        SessionCmd::Send { id, text } => {
            let body = json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": text}]}]});
            c.v1(Method::POST, &format!("/sessions/{id}/events"), Some(body))
                .await?;
        }
        SessionCmd::Tail { id } => tail(c, id).await?,
        SessionCmd::Outputs { id, to } => outputs(c, id, to.as_deref()).await?,
    }
    Ok(())
}

/// Where a session's outputs are read from: its outputs volume (no
/// sandbox is woken), or, for a session served before volumes, its
/// sandbox.
enum OutputsAt {
    Volume(String),
    Sandbox(String),
}

impl OutputsAt {
    async fn find(c: &Client, session: &str) -> Result<(OutputsAt, String)> {
        use sandstone_worker::sandbox::{OUTPUTS_DIR, SESSION_LABEL, VOLUME_LABEL, VolumeRole};
        let volumes = c.find_labeled_volumes(SESSION_LABEL, session).await?;
        let outputs = VolumeRole::Outputs.label();
        if let Some(v) = volumes
            .iter()
            .find(|v| v.metadata.get(VOLUME_LABEL).map(String::as_str) == Some(outputs))
        {
            return Ok((OutputsAt::Volume(v.id.clone()), "/".into()));
        }
        let found = c.find_labeled(SESSION_LABEL, session).await?;
        let Some(sandbox) = found.first() else {
            anyhow::bail!("no sandbox serves session {session}: has a worker served it yet?");
        };
        Ok((OutputsAt::Sandbox(sandbox.id.clone()), OUTPUTS_DIR.into()))
    }

    async fn list(&self, c: &Client, dir: &str) -> Result<Vec<sandstone_api::FileInfo>> {
        Ok(match self {
            OutputsAt::Volume(id) => c.list_volume_dir(id, dir).await?,
            OutputsAt::Sandbox(id) => c.list_dir(id, dir).await?,
        })
    }

    async fn read(&self, c: &Client, path: &str) -> Result<Vec<u8>> {
        Ok(match self {
            OutputsAt::Volume(id) => c.read_volume_file(id, path).await?,
            OutputsAt::Sandbox(id) => c.read_file(id, path).await?,
        })
    }
}

/// Lists (and with `to`, downloads) a session's outputs. Only regular
/// files are taken; a name is never joined unless it is a plain component.
async fn outputs(c: &Client, session: &str, to: Option<&std::path::Path>) -> Result<()> {
    let (at, root) = OutputsAt::find(c, session).await?;
    let mut dirs = vec![(root, std::path::PathBuf::new())];
    while let Some((dir, rel)) = dirs.pop() {
        for e in at.list(c, &dir).await? {
            let plain =
                !e.name.is_empty() && e.name != "." && e.name != ".." && !e.name.contains('/');
            if !plain {
                continue;
            }
            let rel = rel.join(&e.name);
            match e.kind {
                FileKind::Dir => dirs.push((e.path.clone(), rel)),
                FileKind::File => {
                    println!("{}\t{}", e.size, rel.display());
                    if let Some(to) = to {
                        let dest = to.join(&rel);
                        if let Some(parent) = dest.parent() {
                            std::fs::create_dir_all(parent)?;
                        }
                        let bytes = at.read(c, &e.path).await?;
                        std::fs::write(&dest, bytes)
                            .with_context(|| format!("writing {}", dest.display()))?;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// One event as a line a person reads.
fn describe(e: &Value) -> Option<String> {
    let text = |v: &Value| {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("")
    };
    let kind = e["type"].as_str()?;
    Some(match kind {
        "user.message" => format!("you      {}", text(&e["content"])),
        "agent.message" => format!("agent    {}", text(&e["content"])),
        "agent.tool_use" | "agent.custom_tool_use" => format!(
            "tool     {} {} ({})",
            s(e, "name"),
            e["input"],
            e["evaluated_permission"].as_str().unwrap_or("custom")
        ),
        "user.tool_result" | "user.custom_tool_result" => {
            let flag = if e["is_error"] == true {
                " [error]"
            } else {
                ""
            };
            format!("result{flag}   {}", text(&e["content"]).trim_end())
        }
        "session.status_idle" => format!(
            "idle     {}",
            e["stop_reason"]["type"].as_str().unwrap_or("")
        ),
        "session.status_running" => "running".into(),
        "session.error" => format!("error    {}", s(&e["error"], "message")),
        _ => return None,
    })
}

/// Prints the history, then follows the live stream (deduplicating the
/// events both show).
async fn tail(c: &Client, id: &str) -> Result<()> {
    let mut stream = c
        .v1_stream(&format!("/sessions/{id}/events/stream"))
        .await?;
    let mut seen = std::collections::HashSet::new();
    let history = c
        .v1(
            Method::GET,
            &format!("/sessions/{id}/events?limit=1000"),
            None,
        )
        .await?;
    for e in history["data"].as_array().into_iter().flatten() {
        seen.insert(s(e, "id").to_string());
        if let Some(line) = describe(e) {
            println!("{line}");
        }
    }
    let mut buf = String::new();
    while let Some(chunk) = stream.chunk().await.context("event stream")? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let Ok(e) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if seen.insert(s(&e, "id").to_string())
                && let Some(line) = describe(&e)
            {
                println!("{line}");
            }
        }
    }
    Ok(())
}
