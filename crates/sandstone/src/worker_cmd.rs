//! `sandstone worker`: the Managed Agents environment worker, with the flags
//! and environment variables of `ant beta:worker` plus where Sandstone is
//! and what each session's sandbox looks like.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use sandstone_worker::item::{Item, plain_id};
use sandstone_worker::secret::Secret;
use sandstone_worker::{Config, Worker, poll, status};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Subcommand)]
pub enum WorkerCmd {
    /// Long-poll the environment's queue and serve every session it hands out.
    Poll {
        #[command(flatten)]
        common: Common,
        /// This worker's id in queue stats (default `{hostname}-{12 hex}`).
        #[arg(long, env = "ANTHROPIC_WORKER_ID")]
        worker_id: Option<String>,
        /// Items served at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Serve `/metrics` and `/status` here (`off` to disable).
        #[arg(long, default_value = "127.0.0.1:7790")]
        status_listen: String,
        /// Hand each session item to this program (run directly, no shell)
        /// instead of serving it here: it gets ANTHROPIC_WORK_ID,
        /// _ENVIRONMENT_ID, _SESSION_ID and _ENVIRONMENT_KEY, the item JSON
        /// (secret included) on stdin, and must serve the item to its end,
        /// e.g. with `sandstone worker run`. The item is stopped after.
        #[arg(long, value_name = "PROGRAM")]
        on_work: Option<PathBuf>,
    },
    /// Serve one already-claimed work item, then exit.
    Run {
        #[command(flatten)]
        common: Common,
        #[arg(long, env = "ANTHROPIC_WORK_ID")]
        work_id: String,
        #[arg(long, env = "ANTHROPIC_SESSION_ID")]
        session_id: String,
        /// The item's secret (base64url JSON carrying the sessions token).
        #[arg(long, env = "ANTHROPIC_WORK_SECRET", hide_env_values = true)]
        work_secret: Option<String>,
    },
    /// What a running worker is doing.
    Status {
        #[arg(long, default_value = "127.0.0.1:7790")]
        addr: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
pub struct Common {
    #[arg(long, env = "ANTHROPIC_ENVIRONMENT_ID")]
    environment_id: String,
    #[arg(long, env = "ANTHROPIC_ENVIRONMENT_KEY", hide_env_values = true)]
    environment_key: Option<String>,
    /// The Managed Agents API.
    #[arg(
        long,
        env = "ANTHROPIC_BASE_URL",
        default_value = "https://api.anthropic.com"
    )]
    base_url: String,
    /// End a session's item after it idles this long (not waiting on a
    /// tool or a user's confirmation); `0` never does. `60s`, `2m`, `500ms`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    max_idle: Duration,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// The Sandstone daemon that hosts the sessions' sandboxes (default: `--url`).
    #[arg(long, env = "SANDSTONE_WORKER_SANDSTONE_URL")]
    sandstone_url: Option<String>,
    /// Template of new session sandboxes.
    #[arg(long, default_value = "default")]
    template: String,
    /// A network policy file (Sandbox0's `SandboxNetworkPolicy` JSON) for new
    /// session sandboxes (presets allowed). Default: `block-all` plus the
    /// `--allow`s.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// A preset (python, node, rust, go, ruby, debian, github, anthropic), domain
    /// or CIDR, optional `:port`, session sandboxes may reach (with the
    /// default policy); repeatable.
    #[arg(long = "allow", visible_alias = "allow-domain", value_name = "TARGET")]
    allow: Vec<String>,
    /// Serve a custom tool with a command on this host: stdin gets
    /// `{"name","input","session_id","tool_use_id"}`, stdout is the result.
    #[arg(long = "custom-tool", value_name = "NAME=COMMAND")]
    custom_tools: Vec<String>,
    /// How often memory stores sync back (min 5s); `off` disables memory.
    #[arg(long, default_value = "15s")]
    memory_sync_interval: String,
}

/// `60s`, `2m`, `1500ms`, `1h`, or bare seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration {s:?}: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {s:?}"))
}

impl Common {
    fn config(
        &self,
        daemon_url: &str,
        sandstone_token: &str,
        worker_id: String,
        concurrency: usize,
    ) -> Result<Config> {
        Ok(Config {
            environment_id: self.environment_id.clone(),
            environment_key: self
                .environment_key
                .clone()
                .filter(|k| !k.is_empty())
                .map(Secret::new),
            base_url: self.base_url.clone(),
            worker_id,
            max_idle: (!self.max_idle.is_zero()).then_some(self.max_idle),
            sandstone_url: self
                .sandstone_url
                .clone()
                .unwrap_or_else(|| daemon_url.to_string()),
            sandstone_token: Secret::new(sandstone_token),
            template: self.template.clone(),
            network: self.network()?,
            custom_tools: Arc::new(self.custom_tools()?),
            memory_sync_interval: self.memory_interval()?,
            team: None,
            concurrency,
            on_work: None,
        })
    }

    fn network(&self) -> Result<Option<serde_json::Value>> {
        if let Some(p) = &self.policy {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let v = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", p.display()))?;
            return Ok(Some(v));
        }
        if self.allow.is_empty() {
            return Ok(None);
        }
        crate::policy_cmd::policy_from_flags(None, &self.allow, &[]).map(Some)
    }

    fn custom_tools(&self) -> Result<BTreeMap<String, Vec<String>>> {
        self.custom_tools
            .iter()
            .map(|spec| {
                let (name, cmd) = spec
                    .split_once('=')
                    .with_context(|| format!("--custom-tool {spec:?}: expected NAME=COMMAND"))?;
                let argv: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
                if name.is_empty() || argv.is_empty() {
                    bail!("--custom-tool {spec:?}: expected NAME=COMMAND");
                }
                Ok((name.to_string(), argv))
            })
            .collect()
    }

    fn memory_interval(&self) -> Result<Option<Duration>> {
        if self.memory_sync_interval == "off" {
            return Ok(None);
        }
        let d = parse_duration(&self.memory_sync_interval).map_err(anyhow::Error::msg)?;
        Ok(Some(d.max(Duration::from_secs(5))))
    }
}

impl WorkerCmd {
    pub fn log_format(&self) -> LogFormat {
        match self {
            WorkerCmd::Poll { common, .. } | WorkerCmd::Run { common, .. } => common.log_format,
            WorkerCmd::Status { .. } => LogFormat::Text,
        }
    }
}

/// SIGTERM or SIGINT flips the flag every item watches.
fn shutdown_signal() -> Result<tokio::sync::watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down: cancelling in-flight tools and releasing items");
        let _ = tx.send(true);
    });
    Ok(rx)
}

pub async fn run(
    cmd: &WorkerCmd,
    daemon_url: &str,
    sandstone_token: impl FnOnce() -> Result<String>,
) -> Result<()> {
    match cmd {
        WorkerCmd::Status { addr } => status_cmd(addr, &sandstone_token()?).await,
        WorkerCmd::Poll {
            common,
            worker_id,
            concurrency,
            status_listen,
            on_work,
        } => {
            let id = worker_id
                .clone()
                .unwrap_or_else(sandstone_worker::default_worker_id);
            let token = sandstone_token()?;
            let mut config = common.config(daemon_url, &token, id, *concurrency)?;
            // An unrunnable program is fatal now, not at the first item.
            config.on_work = on_work.clone().map(runnable).transpose()?;
            if config.environment_key.is_none() {
                bail!("--environment-key (or ANTHROPIC_ENVIRONMENT_KEY) is required to poll");
            }
            let worker = Arc::new(Worker::new(config, shutdown_signal()?));
            // A second worker on the host serves without one rather than
            // not at all.
            if status_listen != "off" {
                match tokio::net::TcpListener::bind(status_listen).await {
                    Ok(l) => {
                        tokio::spawn(status::serve(
                            l,
                            worker.metrics.clone(),
                            sandstone_api::Secret::new(token),
                        ));
                    }
                    Err(e) => tracing::warn!(addr = %status_listen, error = %e,
                        "status endpoint not served (is another worker using it?)"),
                }
            }

            tracing::info!(worker_id = %worker.config.worker_id, environment = %worker.config.environment_id, "polling");
            poll::poll_loop(worker).await.map_err(anyhow::Error::msg)
        }
        WorkerCmd::Run {
            common,
            work_id,
            session_id,
            work_secret,
        } => {
            let config = common.config(
                daemon_url,
                &sandstone_token()?,
                sandstone_worker::default_worker_id(),
                1,
            )?;
            if !plain_id(work_id) || !plain_id(session_id) {
                bail!(
                    "ANTHROPIC_WORK_ID and ANTHROPIC_SESSION_ID must be plain ids (letters, digits, _ and -)"
                );
            }
            if config.environment_key.is_none() && work_secret.is_none() {
                bail!("one of --environment-key or ANTHROPIC_WORK_SECRET is required");
            }
            let worker = Worker::new(config, shutdown_signal()?);
            let item = Item {
                id: work_id.clone(),
                kind: "session".into(),
                session: session_id.clone(),
                secret: work_secret.clone(),
                polled_at: std::time::Instant::now(),
                extras: Default::default(),
            };
            match worker.handle(item).await {
                sandstone_worker::item::Outcome::Failed(e) => bail!("the item failed: {e}"),
                _ => Ok(()),
            }
        }
    }
}

/// `path`, if it is an executable file.
fn runnable(path: PathBuf) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&path).with_context(|| format!("--on-work {}", path.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!("--on-work {}: not an executable file", path.display());
    }
    Ok(path)
}

async fn status_cmd(addr: &str, token: &str) -> Result<()> {
    let url = format!("http://{addr}/status");
    let resp = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("no worker answering at {addr}"))?;
    if !resp.status().is_success() {
        bail!(
            "the worker at {addr} refused: {}",
            resp.text().await.unwrap_or_default().trim()
        );
    }
    let v: serde_json::Value = resp.json().await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_official_cli() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("1e300h").is_err());
    }
}
