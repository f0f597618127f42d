//! `poll --on-work PROGRAM`: each claimed session item goes to a program
//! instead of being served in this process, as `ant beta:worker poll
//! --on-work` does: the program gets `ANTHROPIC_WORK_ID`,
//! `ANTHROPIC_ENVIRONMENT_ID`, `ANTHROPIC_SESSION_ID` and
//! `ANTHROPIC_ENVIRONMENT_KEY`, the polled item (secret included) on stdin,
//! and this process's stderr for its output. When it exits the item is
//! stopped (not forced), so the program must serve the item to its end, for
//! example by running `sandstone worker run` in the foreground.

use crate::Worker;
use crate::item::Item;
use sandstone_agents_api::{WorkItem, WorkKind};
use std::os::fd::AsFd;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How long a program gets to finish after SIGTERM before SIGKILL.
const WAIT_DELAY: Duration = Duration::from_secs(30);

impl Worker {
    /// Hands `item` (`raw`: as polled) to `program`; healthcheck items are
    /// never passed on, only stopped.
    pub async fn hand_off(&self, item: Item, raw: WorkItem, program: &std::path::Path) {
        let cfg = &self.config;
        let Some(key) = cfg.environment_key.as_ref() else {
            return;
        };
        if item.kind == WorkKind::Session {
            self.metrics.item_started(&item.id, &item.session);
            let outcome = match self.run_program(&item, raw, program, key.expose()).await {
                Ok(status) if status.success() => "handed_off",
                Ok(status) => {
                    tracing::warn!(work = %item.id, %status, "the on-work program failed");
                    "handed_off_failed"
                }
                Err(e) => {
                    tracing::error!(work = %item.id, error = %e, "the on-work program could not run");
                    "handed_off_failed"
                }
            };
            self.metrics.item_finished(&item.id, outcome);
        }
        if let Err(e) = self
            .cma
            .stop(&cfg.environment_id, &item.id, key, false)
            .await
        {
            tracing::warn!(work = %item.id, error = %e, "stop after the on-work program failed");
        }
    }

    async fn run_program(
        &self,
        item: &Item,
        raw: WorkItem,
        program: &std::path::Path,
        key: &str,
    ) -> std::io::Result<std::process::ExitStatus> {
        let stderr = || -> std::io::Result<Stdio> {
            Ok(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?))
        };
        let mut child = tokio::process::Command::new(program)
            .env("ANTHROPIC_WORK_ID", &item.id)
            .env("ANTHROPIC_ENVIRONMENT_ID", &self.config.environment_id)
            .env("ANTHROPIC_SESSION_ID", &item.session)
            .env("ANTHROPIC_ENVIRONMENT_KEY", key)
            .stdin(Stdio::piped())
            .stdout(stderr()?)
            .stderr(stderr()?)
            .kill_on_drop(true)
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            // As polled: unknown fields pass through the model unchanged.
            let bytes = serde_json::to_vec(&raw).expect("the wire model always serialises");
            tokio::spawn(async move {
                let _ = stdin.write_all(&bytes).await;
            });
        }
        tracing::info!(work = %item.id, session = %item.session, pid = child.id(), "handed to the on-work program");
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            status = child.wait() => status,
            _ = crate::shutting_down(&mut shutdown) => {
                if let Some(pid) = child.id() {
                    // Gone already is what we want anyway.
                    let _ = sandstone_sys::process::kill(sandstone_sys::Pid::from_raw(pid as i32), libc::SIGTERM);
                }
                match tokio::time::timeout(WAIT_DELAY, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        child.kill().await?;
                        child.wait().await
                    }
                }
            }
        }
    }
}
