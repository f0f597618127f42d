//! The warm pool: per template, a few sandboxes made ahead of time (volume,
//! namespaces, rootfs, cgroup, init answering), so that a claim is a
//! handoff. One background task refills it, one sandbox at a time, so
//! refilling never holds up claims; a claim that finds the pool empty
//! creates a sandbox the ordinary way.

use super::Result;
use super::{Lifecycle, Runtime, internal, random_hex};
use sandstone_api::SandboxConfig;
use sandstone_volumes::Template;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Member {
    pub id: String,
    pub slot: i64,
    pub runtime: Runtime,
}

#[derive(Default)]
pub struct WarmPool {
    pub size: usize,
    members: Mutex<HashMap<String, VecDeque<Member>>>,
    wake: tokio::sync::Notify,
}

impl WarmPool {
    pub fn new(size: usize) -> Self {
        WarmPool {
            size,
            ..Default::default()
        }
    }

    fn take(&self, template: &str) -> Option<Member> {
        let m = self
            .members
            .lock()
            .expect("lock poisoned: a holder panicked")
            .get_mut(template)?
            .pop_front();
        self.wake.notify_one();
        m
    }

    fn count(&self, template: &str) -> usize {
        self.members
            .lock()
            .expect("lock poisoned: a holder panicked")
            .get(template)
            .map_or(0, VecDeque::len)
    }

    pub fn ready(&self) -> usize {
        self.members
            .lock()
            .expect("lock poisoned: a holder panicked")
            .values()
            .map(VecDeque::len)
            .sum()
    }
}

impl Lifecycle {
    /// A pre-made sandbox of `template`, if the pool has one.
    pub(super) fn take_warm(&self, template: &str) -> Option<Member> {
        self.warm.take(template)
    }

    /// Makes one pool member for `template`.
    async fn make_member(&self, template: &Template) -> Result<Member> {
        self.check_free_space()?;
        let slot = self.take_slot()?;
        let id = format!("sb-{}", random_hex(8));
        let made = async {
            self.storage.create_sandbox(&id, None).map_err(internal)?;
            self.launch(&id, template, &SandboxConfig::default(), slot, None)
                .await
        }
        .await;
        match made {
            Ok(runtime) => Ok(Member { id, slot, runtime }),
            Err(e) => {
                let _ = self.storage.remove_sandbox(&id);
                self.free_slot(slot);
                Err(e)
            }
        }
    }

    /// Tops up one template by one member; false when all are full.
    async fn refill_one(&self) -> bool {
        let Ok(templates) = self.storage.templates() else {
            return false;
        };
        for t in templates {
            // The template's own pool size (`spec.pool`), else the daemon's.
            let size = t.warm.map_or(self.warm.size, |n| n as usize);
            if self.warm.count(&t.pinned()) >= size {
                continue;
            }
            match self.make_member(&t).await {
                Ok(m) => self
                    .warm
                    .members
                    .lock()
                    .expect("lock poisoned: a holder panicked")
                    .entry(t.pinned())
                    .or_default()
                    .push_back(m),
                Err(e) => {
                    tracing::warn!(template = %t.id, error = %e, "warm pool refill failed");
                    return false;
                }
            }
            return true;
        }
        false
    }

    /// Destroys the unclaimed members (at shutdown: they belong to no one).
    pub(super) fn drain_warm_pool(&self) {
        let members: Vec<Member> = self
            .warm
            .members
            .lock()
            .expect("lock poisoned: a holder panicked")
            .drain()
            .flat_map(|(_, q)| q)
            .collect();
        self.destroy_members(members);
    }

    /// Destroys the unclaimed members of every version of `template` (it
    /// is being deleted, or updated: new claims get the new version).
    pub(super) fn drain_warm_template(&self, template: &str) {
        let members: Vec<Member> = {
            let mut all = self
                .warm
                .members
                .lock()
                .expect("lock poisoned: a holder panicked");
            let keys: Vec<String> = all
                .keys()
                .filter(|k| sandstone_volumes::template_base(k) == template)
                .cloned()
                .collect();
            keys.iter()
                .flat_map(|k| all.remove(k).unwrap_or_default())
                .collect()
        };
        self.destroy_members(members);
    }

    fn destroy_members(&self, members: Vec<Member>) {
        for m in members {
            self.stop_runtime(&m.id, &m.runtime.cgroup);
            let _ = self.storage.remove_sandbox(&m.id);
            self.free_slot(m.slot);
        }
    }

    /// Keeps the pool full until the daemon stops. Runs with a default
    /// size of 0 too: a template may ask for its own (`spec.pool`).
    pub fn spawn_warm_pool(self: &Arc<Self>) {
        let lc = self.clone();
        tokio::spawn(async move {
            loop {
                while lc.refill_one().await {
                    tokio::task::yield_now().await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), lc.warm.wake.notified()).await;
            }
        });
    }
}
