//! A sandbox's app services (`config.services`): stored with its
//! configuration; a `cmd` service's command is started by the daemon with
//! every runtime generation (the claim, each resume) and again when the
//! services are replaced, as the init context `svc-<service id>`.

use super::{Lifecycle, Result, Runtime, config_of, internal};
use sandstone_api::services::{AppService, RuntimeKind, check_services};
use sandstone_db::SandboxRow;
use sandstone_init::proto::{ProcKind, Request};

/// The init context a `cmd` service runs as.
pub fn context_of(service: &str) -> String {
    format!("svc-{service}")
}

impl Lifecycle {
    /// `PUT /sandboxes/{id}/services`: replaces the services; on a running
    /// sandbox, the `cmd` ones start at once (one of the same id is
    /// restarted with its new command).
    pub async fn set_services(
        &self,
        id: &str,
        services: Vec<AppService>,
        field: &str,
    ) -> Result<SandboxRow> {
        check_services(&services, field).map_err(super::Error::Invalid)?;
        let _guard = self.lock(id).await;
        let row = self.row(id).await?;
        self.refuse_if_held(id, "change its services")?;
        let mut config = config_of(&row);
        let old = std::mem::replace(&mut config.services, services);
        let value = serde_json::to_value(&config).map_err(internal)?;
        self.store.set_config(&row.fence(), &value).await?;
        if let Some(rt) = self.runtime(id) {
            // A removed `cmd` service's process goes with it.
            for gone in old
                .iter()
                .filter(|o| !config.services.iter().any(|s| s.id == o.id))
            {
                let _ = rt
                    .socket
                    .call(
                        &Request::Remove {
                            id: context_of(&gone.id),
                        },
                        &[],
                    )
                    .await;
            }
            self.start_services(id, &rt, &config.services).await;
        }
        self.row(id).await
    }

    /// Starts the `cmd` services in a runtime (replacing a context of the
    /// same name). A command that cannot start is logged, not fatal: the
    /// sandbox is up, and its service answers 502 until it is fixed.
    pub(crate) async fn start_services(&self, id: &str, rt: &Runtime, services: &[AppService]) {
        for s in services {
            let Some(r) = s.runtime.as_ref().filter(|r| r.kind == RuntimeKind::Cmd) else {
                continue;
            };
            let ctx = context_of(&s.id);
            let _ = rt
                .socket
                .call(&Request::Remove { id: ctx.clone() }, &[])
                .await;
            let spawn = Request::Spawn {
                id: ctx,
                kind: ProcKind::Cmd {
                    argv: r.command.clone(),
                },
                cwd: r.cwd.clone(),
                env: rt
                    .env
                    .iter()
                    .chain(&r.env_vars)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                pty: None,
                attach: false,
                timeout_ms: None,
                hold_ms: None,
                restart: None,
            };
            if let Err(e) = rt.socket.call(&spawn, &[]).await {
                tracing::warn!(sandbox = %id, service = %s.id, error = %e, "service command did not start");
            }
        }
    }

    /// The runtime generation sandbox `id` runs now, with that runtime;
    /// `None` when it is not running on this node.
    pub async fn running_generation(&self, id: &str) -> Result<Option<(i64, Runtime)>> {
        let Some(rt) = self.runtime(id) else {
            return Ok(None);
        };
        let row = self.row(id).await?;
        // The row and the runtime agree unless a pause or resume ran
        // between the two reads: then the caller sees no runtime, as it
        // would a moment later.
        let same = row.pid == Some(i64::from(rt.pid))
            && row.status == sandstone_db::SandboxStatus::Running;
        Ok(same.then_some((row.generation, rt)))
    }
}
