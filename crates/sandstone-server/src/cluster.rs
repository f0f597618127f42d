//! Nodes: every `sandstone serve` is one, and several share one PostgreSQL
//! database. A node announces itself (id, advertised URL, capacity, load,
//! templates) with a lease it renews every third of its TTL; the others see
//! it as live until the lease runs out. One machine with no flags is a
//! cluster of one, and none of this costs it anything on the hot path.
//!
//! Any node answers any call. A call for a sandbox another live node runs is
//! forwarded there ([`crate::forward`]); a create is placed on the
//! least-loaded live node that is not draining and has the template. Lists
//! and the Managed Agents API read the shared database directly.
//!
//! A node whose lease ran out has lost its sandboxes: each live node marks
//! the dead one's running (and failed) sandboxes `lost`, raising their
//! epochs, at its next round; a paused or lost one moves to the node a call
//! for it reaches, if it has a checkpoint. The node itself stopped acting
//! for them half a TTL earlier ([`crate::lease`]).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sandstone_api::timefmt::now_ms;
use sandstone_db::{NodeRecord, Store};

use crate::forward::Forwarder;
use crate::lifecycle::{Intent, Lifecycle};

/// Who this node is to the others (`serve --node-id`, `--advertise-url`, …).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: String,
    /// Where the other nodes send calls for this node's sandboxes.
    pub advertise_url: String,
    /// How long an announcement holds; renewed every third of it.
    pub lease_ttl: Duration,
    /// Sandboxes it runs at once, for placement.
    pub capacity: i64,
}

/// Where a call for a sandbox is served.
#[derive(Debug, PartialEq)]
pub enum Route {
    /// Here: this node runs it, or no node does (and the call says so).
    Local,
    /// On its live owner, at this URL.
    Remote { node: String, url: String },
    /// Its owner's lease has run out.
    OwnerDown { node: String },
}

pub struct Cluster {
    pub me: NodeConfig,
    store: Arc<dyn Store>,
    pub forwarder: Forwarder,
    /// Every node as of the last announcement round, this one included:
    /// placement reads it without a query.
    view: RwLock<Arc<Vec<NodeRecord>>>,
    started_at: i64,
}

impl Cluster {
    pub fn new(me: NodeConfig, store: Arc<dyn Store>, node_key: &[u8; 32]) -> Cluster {
        Cluster {
            forwarder: Forwarder::new(&me.id, node_key),
            me,
            store,
            view: RwLock::new(Arc::new(Vec::new())),
            started_at: now_ms(),
        }
    }

    /// Announces this node (renewing its lease), refreshes the view of the
    /// others and marks the sandboxes of dead ones lost. After a lapse of
    /// this node's own hold, it first keeps only the sandboxes still its
    /// own ([`Lifecycle::reconcile`]).
    pub async fn announce(&self, lc: &Lifecycle) -> sandstone_db::Result<()> {
        let started = Instant::now();
        self.renew(lc).await?;
        if lc.lease.renewed(started) {
            lc.reconcile().await?;
            tracing::info!(node = %self.me.id, "lease held again; this node's sandboxes checked");
        }
        self.refresh().await?;
        if lc.lease.holds() && lc.lease.is_shared() {
            self.mark_lost().await;
            self.drain_step(lc).await?;
            lc.prune_retained().await;
        }
        Ok(())
    }

    /// Moves paused sandboxes off draining nodes, a few per round: a node
    /// that is not draining takes over (compare-and-set on node and epoch)
    /// those with a checkpoint of their files, which it materialises when
    /// they are next resumed; a draining node removes its copies of what
    /// moved. Running sandboxes stay until they pause or are deleted.
    async fn drain_step(&self, lc: &Lifecycle) -> sandstone_db::Result<()> {
        const PER_ROUND: usize = 8;
        let now = now_ms();
        let view = self.view();
        if view.iter().any(|n| n.id == self.me.id && n.draining) {
            let mine = self.store.node_sandboxes(&self.me.id).await?;
            lc.remove_moved(&mine).await;
            return Ok(());
        }
        let Some(me) = view.iter().find(|n| n.id == self.me.id) else {
            return Ok(());
        };
        let mut moved = 0;
        for n in view
            .iter()
            .filter(|n| n.draining && n.id != self.me.id && n.live_at(now))
        {
            for row in self.store.node_sandboxes(&n.id).await? {
                if moved == PER_ROUND {
                    return Ok(());
                }
                // One paused with its memory (its init's pid kept) has its
                // processes on that node: it stays until resumed.
                let movable = row.status == sandstone_db::SandboxStatus::Paused
                    && row.pid.is_none()
                    && row.pending_op.is_none()
                    && row.checkpointed_at.is_some()
                    && (row.template == "default" || me.templates.iter().any(|t| t == sandstone_volumes::template_base(&row.template)))
                    // The node placement picks for it (ties by id): one
                    // taker per sandbox, spread by load.
                    && self.place(lc, Some(&row.template)).is_none();
                if !movable {
                    continue;
                }
                match lc.take_over(&row.id, &n.id, Intent::Serve).await {
                    Ok(crate::lifecycle::Takeover::Taken) => {
                        moved += 1;
                        tracing::info!(sandbox = %row.id, from = %n.id, "moved a paused sandbox off a draining node");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(sandbox = %row.id, from = %n.id, error = %e, "could not move a paused sandbox off a draining node")
                    }
                }
            }
        }
        Ok(())
    }

    /// Marks lost the running sandboxes of every node whose lease has run
    /// out (their epochs rise, so nothing such a node writes counts).
    async fn mark_lost(&self) {
        let now = now_ms();
        for n in self
            .view()
            .iter()
            .filter(|n| n.id != self.me.id && !n.live_at(now))
        {
            let reason = format!(
                "it was running on node {}, whose lease ran out at {}",
                n.id,
                sandstone_api::timefmt::rfc3339_ms(n.lease_expires_at)
            );
            match self.store.mark_lost(&n.id, &reason).await {
                Ok(0) => {}
                Ok(k) => {
                    tracing::warn!(node = %n.id, sandboxes = k, "marked the running sandboxes of a dead node lost")
                }
                Err(e) => {
                    tracing::warn!(node = %n.id, error = %e, "cannot mark a dead node's sandboxes lost")
                }
            }
        }
    }

    async fn renew(&self, lc: &Lifecycle) -> sandstone_db::Result<()> {
        let mut templates: Vec<String> = match lc.storage.templates() {
            Ok(all) => all.into_iter().map(|t| t.id).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list this node's templates");
                Vec::new()
            }
        };
        templates.sort();
        let record = NodeRecord {
            id: self.me.id.clone(),
            url: self.me.advertise_url.clone(),
            capacity: self.me.capacity,
            running: lc.resident_count() as i64,
            templates,
            draining: false,
            lease_expires_at: now_ms() + self.me.lease_ttl.as_millis() as i64,
            started_at: self.started_at,
        };
        self.store.announce_node(&record).await
    }

    async fn refresh(&self) -> sandstone_db::Result<()> {
        let nodes = self.store.list_nodes().await?;
        *self.view.write().expect("lock poisoned: a holder panicked") = Arc::new(nodes);
        Ok(())
    }

    fn view(&self) -> Arc<Vec<NodeRecord>> {
        self.view
            .read()
            .expect("lock poisoned: a holder panicked")
            .clone()
    }

    /// Every node as last seen, with whether it is live.
    pub async fn nodes(&self) -> sandstone_db::Result<Vec<NodeRecord>> {
        self.refresh().await?;
        Ok(self.view().as_ref().clone())
    }

    /// With an object store, every TTL: publishes this node's templates the
    /// store lacks, and fetches those other live nodes announce and this
    /// one lacks (its next announcement shows them to placement).
    /// Runs a round of the object store's collector every `every` (its
    /// grace period) while this node is the first live one by id, so one
    /// node collects at a time (two at once would be safe, only wasteful).
    pub fn spawn_collector(self: &Arc<Self>, lc: Arc<Lifecycle>, every: std::time::Duration) {
        if !lc.has_object_store() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = now_ms();
                let first = me
                    .view()
                    .iter()
                    .filter(|n| n.id == me.me.id || n.live_at(now))
                    .map(|n| n.id.clone())
                    .min();
                if first.as_deref() == Some(me.me.id.as_str()) && lc.lease.holds() {
                    lc.collect_garbage().await;
                }
            }
        });
    }

    pub fn spawn_template_sync(self: &Arc<Self>, lc: Arc<Lifecycle>) {
        if !lc.has_object_store() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.me.lease_ttl);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // A template built after the start is published too (one
                // listing per template per round when there is nothing new).
                if let Err(e) = lc.publish_templates().await {
                    tracing::warn!(error = %e, "could not publish this node's templates");
                }
                let now = now_ms();
                let wanted: std::collections::BTreeSet<String> = me
                    .view()
                    .iter()
                    .filter(|n| n.id != me.me.id && n.live_at(now))
                    .flat_map(|n| n.templates.iter().cloned())
                    .collect();
                for t in wanted
                    .iter()
                    .filter_map(|id| sandstone_volumes::BuiltTemplate::from_id(id))
                {
                    if let Err(e) = lc.fetch_template(t).await {
                        tracing::warn!(template = t.id(), error = %e, "could not fetch a template");
                    }
                }
            }
        });
    }

    /// Renews the lease every third of its TTL until the daemon stops. A
    /// failed renewal is logged and retried at the next tick. On a shared
    /// database, a watcher freezes this node's sandboxes as soon as its
    /// hold lapses (checked ten times per TTL).
    pub fn spawn_announcer(self: &Arc<Self>, lc: Arc<Lifecycle>) {
        if lc.lease.is_shared() {
            let lc = lc.clone();
            let every = (self.me.lease_ttl / 10).max(Duration::from_millis(50));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    lc.fence_check().await;
                }
            });
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.me.lease_ttl / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = me.announce(&lc).await {
                    tracing::warn!(error = %e, "could not renew this node's lease");
                }
            }
        });
    }

    /// Where a call for sandbox `id` is served. A sandbox this node runs
    /// needs no query (the hot path: exec, files, contexts); any other id
    /// costs one indexed lookup of its node.
    pub async fn route(&self, lc: &Lifecycle, id: &str) -> sandstone_db::Result<Route> {
        if lc.runs(id) {
            return Ok(Route::Local);
        }
        let owner = match self.store.sandbox_node(id).await {
            Ok(Some(owner)) if owner != self.me.id => owner,
            // Ours, from before nodes, or no such sandbox (the route says).
            Ok(_) | Err(sandstone_db::Error::NotFound) => return Ok(Route::Local),
            Err(e) => return Err(e),
        };
        self.route_to(owner).await
    }

    /// Where node `owner` (not this one) is reached, if it is live.
    pub async fn route_to(&self, owner: String) -> sandstone_db::Result<Route> {
        if owner == self.me.id {
            return Ok(Route::Local);
        }
        let mut node = self.find(&owner).filter(|n| n.live_at(now_ms()));
        if node.is_none() {
            // Unknown or dead as of the last round: it may have joined or
            // come back since. The rare path pays for a fresh look.
            self.refresh().await?;
            node = self.find(&owner);
        }
        Ok(match node {
            Some(n) if n.live_at(now_ms()) => Route::Remote {
                node: n.id,
                url: n.url,
            },
            _ => Route::OwnerDown { node: owner },
        })
    }

    /// Whether another node shares the database (live or not) as of the
    /// last round: if none does, a create is placed here without reading
    /// its body. (One whose lease ran out still counts: its volumes may
    /// have to be taken over for the create.)
    pub fn has_peers(&self) -> bool {
        self.view().iter().any(|n| n.id != self.me.id)
    }

    fn find(&self, id: &str) -> Option<NodeRecord> {
        self.view().iter().find(|n| n.id == id).cloned()
    }

    /// The node a new sandbox of `template` goes to: the live node, not
    /// draining, that has the template, with the fewest running sandboxes
    /// per unit of capacity (ties by id, so concurrent callers agree). This
    /// node counts with its own running sandboxes as of now. `None`: here
    /// (a cluster of one, or no node has the template: the create says so).
    /// `default` (or none) resolves on every node, so any node will do.
    pub fn place(&self, lc: &Lifecycle, template: Option<&str>) -> Option<NodeRecord> {
        // Nodes announce templates by id; a sandbox names its version.
        let template = template
            .map(sandstone_volumes::template_base)
            .filter(|t| !t.is_empty() && *t != "default");
        let view = self.view();
        let now = now_ms();
        let candidates = view.iter().filter_map(|n| {
            let has_template = template.is_none_or(|t| n.templates.iter().any(|x| x == t));
            if n.id == self.me.id {
                let mut me = n.clone();
                me.running = lc.resident_count() as i64;
                return (has_template && !n.draining).then_some(me);
            }
            (n.live_at(now) && !n.draining && has_template).then(|| n.clone())
        });
        let best = candidates.min_by(|a, b| {
            a.load()
                .partial_cmp(&b.load())
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| a.id.cmp(&b.id))
        })?;
        (best.id != self.me.id).then_some(best)
    }

    /// Sets or clears `draining` on node `id`.
    pub async fn set_draining(&self, id: &str, draining: bool) -> sandstone_db::Result<()> {
        self.store.set_draining(id, draining).await?;
        self.refresh().await
    }
}

/// The default `--capacity`: one running sandbox per 256 MiB of memory.
pub fn default_capacity() -> i64 {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .unwrap_or(4 << 20);
    (mem / (256 << 10)).max(1)
}
