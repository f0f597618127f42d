//! Templates built from a Sandstonefile (`POST /api/v1/templates/build`,
//! `sandstone template build`). Each step that makes files (`RUN`, `COPY`)
//! runs in a sandbox of the step before, under the build's network policy
//! (the package registries, and what `ALLOW` names), and its result is
//! captured as a build-cache template (O(1) on the btrfs pool) named by the
//! step's key: what it ran on, the step, the settings it ran with and what
//! it copied. A step whose key is cached is not run again. The last step's
//! result, with the file's `ENV`/`WORKDIR`/`USER`, becomes the template (a
//! new version when it was built before).

use super::images::{Creating, Stage};
use super::{Error, Lifecycle, Result, random_hex};

use sandstone_api::{BuildEvent, BuildStream, SandboxConfig};
use sandstone_build::{Instruction, Kind};
use sandstone_init::proto::{ProcKind, Request, Response, Stream};
use sandstone_volumes::TemplateKind;
use sandstone_volumes::{BUILD_CACHE_PREFIX, FileTemplate, Template};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use tokio::sync::mpsc::Sender;

/// What to build.
pub struct BuildSpec {
    /// The template's id.
    pub name: String,
    /// The parsed Sandstonefile (`FROM` first).
    pub steps: Vec<Instruction>,
    /// The build context: where `COPY` takes its sources from.
    pub context: PathBuf,
}

/// The package registries a build may reach without an `ALLOW`.
const REGISTRIES: [&str; 5] = ["python", "node", "rust", "go", "debian"];

/// A file a `COPY` writes is sent to init in pieces of this size.
const COPY_CHUNK: usize = 1 << 20;

/// What the steps so far set for the ones after.
#[derive(Debug, Default)]
struct Settings {
    env: BTreeMap<String, String>,
    workdir: Option<String>,
    user: Option<String>,
    allow: Vec<String>,
}

impl Settings {
    /// Part of a step's cache key: a step run with other settings may make
    /// other files.
    fn key(&self) -> String {
        format!(
            "env={:?} workdir={:?} user={:?} allow={:?}",
            self.env, self.workdir, self.user, self.allow
        )
    }

    /// `template` with these settings over its own.
    fn over(&self, mut template: Template) -> Template {
        template
            .env
            .extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if self.workdir.is_some() {
            template.working_dir = self.workdir.clone();
        }
        if self.user.is_some() {
            template.user = self.user.clone();
        }
        template
    }

    /// The build's network policy: block all but the package registries
    /// and the `ALLOW`ed hosts.
    fn policy(&self) -> serde_json::Value {
        let mut rules: Vec<serde_json::Value> = REGISTRIES
            .iter()
            .map(|p| serde_json::json!({"name": p, "action": "allow", "preset": p}))
            .collect();
        if !self.allow.is_empty() {
            rules.push(
                serde_json::json!({"name": "allowed", "action": "allow", "domains": self.allow}),
            );
        }
        serde_json::json!({"mode": "block-all", "egress": {"trafficRules": rules}})
    }
}

/// A failed step, naming its line.
fn step_error(step: &Instruction, what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("line {} ({step}): {what}", step.line))
}

impl Lifecycle {
    /// Builds `spec`, sending its progress to `events`; a failure sends
    /// `failed` and leaves no template (the steps that succeeded stay
    /// cached for the next try).
    pub async fn build_template(&self, spec: BuildSpec, events: &Sender<BuildEvent>) {
        let _building = self.builds.read().await;
        let last = match self.build(&spec, events).await {
            Ok(done) => done,
            Err((e, line)) => BuildEvent::Failed {
                message: e.to_string(),
                line,
            },
        };
        let _ = events.send(last).await;
    }

    /// Whether `name` may be built: a user's id, and free or built before
    /// (a rebuild makes its next version).
    pub fn check_build_name(&self, name: &str) -> Result<()> {
        sandstone_volumes::check_id(name)
            .map_err(|e| Error::Invalid(format!("invalid query parameter `name`: {e}")))?;
        match self.storage.template(name) {
            Ok(t) if t.id == name && t.kind != TemplateKind::Built => Err(Error::Conflict(
                format!("template {name} exists and was not built from a Sandstonefile"),
            )),
            _ => Ok(()),
        }
    }

    async fn build(
        &self,
        spec: &BuildSpec,
        events: &Sender<BuildEvent>,
    ) -> std::result::Result<BuildEvent, (Error, Option<usize>)> {
        let started = std::time::Instant::now();
        let name = spec.name.as_str();
        let whole = |e: Error| (e, None);
        self.check_build_name(name).map_err(whole)?;
        let Some((first, rest)) = spec.steps.split_first() else {
            return Err(whole(Error::Invalid("an empty Sandstonefile".into())));
        };
        let Kind::From(from) = &first.kind else {
            return Err(whole(step_error(
                first,
                "the first instruction must be FROM",
            )));
        };
        let _listed = self
            .list_creating(
                name,
                Creating {
                    image: from.clone(),
                    stage: Stage::Building,
                    started_at: sandstone_api::timefmt::now_ms(),
                },
            )
            .map_err(whole)?;
        let total = spec.steps.len();
        let step_event = |index: usize, step: &Instruction, cached: bool| BuildEvent::Step {
            index,
            total,
            line: step.line,
            instruction: step.to_string(),
            cached,
        };
        let _ = events.send(step_event(1, first, false)).await;
        let base = self
            .build_base(from)
            .await
            .map_err(|e| (e, Some(first.line)))?;
        let mut parent = base.pinned();
        let mut settings = Settings::default();
        let (mut run, mut cached) = (0, 0);
        for (i, step) in rest.iter().enumerate() {
            let index = i + 2;
            match &step.kind {
                Kind::Env(vars) => settings.env.extend(vars.iter().cloned()),
                Kind::Workdir(dir) => settings.workdir = Some(dir.clone()),
                Kind::User(user) => settings.user = Some(user.clone()),
                Kind::Allow(hosts) => settings.allow.extend(hosts.iter().cloned()),
                Kind::From(_) => {
                    return Err((step_error(step, "only one FROM"), Some(step.line)));
                }
                Kind::Run(_) | Kind::Copy { .. } => {}
            }
            if !step.kind.makes_a_layer() {
                let _ = events.send(step_event(index, step, false)).await;
                continue;
            }
            let at = |e: Error| (e, Some(step.line));
            let copied = match &step.kind {
                Kind::Copy { sources, .. } => Some(
                    copy_sources(&spec.context, sources).map_err(|e| at(step_error(step, e)))?,
                ),
                _ => None,
            };
            let digest = copied.as_ref().map(|c| c.digest.as_str());
            let key = sandstone_build::step_key(&parent, step, &settings.key(), digest);
            let id = format!("{BUILD_CACHE_PREFIX}{}", &key[..32]);
            let hit = self.storage.template(&id).is_ok();
            let _ = events.send(step_event(index, step, hit)).await;
            if hit {
                cached += 1;
            } else {
                self.run_step(&parent, &settings, step, copied.as_ref(), &id, events)
                    .await
                    .map_err(at)?;
                run += 1;
            }
            parent = id;
        }
        let doc = FileTemplate {
            parent,
            from: from.clone(),
            version: 0,
            env: settings
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            working_dir: settings.workdir,
            user: settings.user,
        };
        let storage = self.storage.clone();
        let id = name.to_string();
        let version = tokio::task::spawn_blocking(move || storage.place_built_template(&id, doc))
            .await
            .map_err(|e| whole(super::internal(e)))?
            .map_err(|e| {
                whole(match e {
                    sandstone_volumes::Error::TemplateExists(_) => Error::Conflict(e.to_string()),
                    other => super::internal(other),
                })
            })?;
        // Warm members hold the version before; the one before that may
        // be unused now.
        self.drain_warm_template(name);
        self.prune_template_versions(name).await.map_err(whole)?;
        tracing::info!(template = name, version, run, cached, "built");
        Ok(BuildEvent::Done {
            template_id: name.to_string(),
            version,
            steps_run: run,
            steps_cached: cached,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// The template `FROM` names: a template, or an image (pulled once
    /// into the build cache, under a key of its reference).
    async fn build_base(&self, from: &str) -> Result<Template> {
        if let Ok(t) = self.storage.template(from) {
            return Ok(t);
        }
        // A bare word is a template's name, never a guess at Docker Hub.
        if !from.contains(['/', ':', '@']) {
            return Err(Error::Invalid(format!(
                "FROM {from}: no such template (name an image with its registry, like \
                 docker.io/library/{from}:latest)"
            )));
        }
        let reference: sandstone_registry::Reference = from.parse().map_err(|e| {
            Error::Invalid(format!(
                "FROM {from}: no such template, and not an image reference ({e})"
            ))
        })?;
        let key =
            sandstone_build::step_key("", &from_instruction(from), &reference.to_string(), None);
        let id = format!("{BUILD_CACHE_PREFIX}{}", &key[..32]);
        if let Ok(t) = self.storage.template(&id) {
            return Ok(t);
        }
        let pulled = sandstone_volumes::Pulled {
            reference: from.to_string(),
            ..Default::default()
        };
        self.pull_as(&id, pulled).await
    }

    /// Runs one `RUN` or `COPY` in a sandbox of `parent` and captures the
    /// result as build-cache template `id`. The sandbox goes either way.
    async fn run_step(
        &self,
        parent: &str,
        settings: &Settings,
        step: &Instruction,
        copied: Option<&Copied>,
        id: &str,
        events: &Sender<BuildEvent>,
    ) -> Result<()> {
        let template = settings.over(self.template(parent)?);
        let workdir = template
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".to_string());
        let config = SandboxConfig {
            network: Some(settings.policy()),
            ..Default::default()
        };
        let row = self
            .create_from(template, config, None, false, sandstone_db::DEFAULT_TEAM)
            .await?;
        let ran = async {
            let rt = self
                .runtime(&row.id)
                .ok_or_else(|| Error::Conflict(format!("build sandbox {} stopped", row.id)))?;
            match (&step.kind, copied) {
                (Kind::Run(cmd), _) => run_command(&rt, cmd, step, events).await?,
                (Kind::Copy { dest, .. }, Some(c)) => copy_in(&rt, c, dest, &workdir).await?,
                _ => return Err(super::internal("a step that makes no files")),
            }
            self.capture_as(&row.id, id, None).await.map(drop)
        }
        .await;
        if let Err(e) = self.delete(&row.id).await {
            tracing::warn!(sandbox = %row.id, error = %e, "build sandbox left behind");
        }
        ran
    }
}

/// What [`Lifecycle::prune_templates`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub cache_entries: usize,
    /// Earlier versions kept for users that are gone.
    pub versions: usize,
    pub layers: usize,
}

impl Lifecycle {
    /// Removes the build-cache entries and kept template versions that no
    /// current template, sandbox or snapshot stands on, and the image
    /// layers no template names. Waits for running builds to end.
    pub async fn prune_templates(&self) -> Result<Pruned> {
        let _alone = self.builds.write().await;
        let all = self.storage.all_templates().map_err(super::internal)?;
        let by_pin: HashMap<String, &Template> = all.iter().map(|t| (t.pinned(), t)).collect();
        // What stands: every current template, and what sandboxes and
        // snapshots were made from; then all they stand on.
        let mut pending: Vec<String> = all
            .iter()
            .filter(|t| t.kind != TemplateKind::BuildCache && !t.retained)
            .map(Template::pinned)
            .collect();
        pending.extend(
            self.store
                .list_sandboxes()
                .await?
                .into_iter()
                .map(|r| r.template),
        );
        pending.extend(
            self.store
                .list_snapshots(None)
                .await?
                .into_iter()
                .map(|s| s.template),
        );
        let mut keep = HashSet::new();
        while let Some(id) = pending.pop() {
            if !keep.insert(id.clone()) {
                continue;
            }
            if let Some(parent) = by_pin.get(&id).and_then(|t| t.parent.clone()) {
                pending.push(parent);
            }
        }
        let unused = |t: &&Template| !keep.contains(&t.pinned());
        let doomed: Vec<String> = all
            .iter()
            .filter(|t| t.kind == TemplateKind::BuildCache)
            .filter(unused)
            .map(|t| t.id.clone())
            .collect();
        let kept_versions: Vec<String> = all
            .iter()
            .filter(|t| t.retained)
            .filter(unused)
            .map(Template::pinned)
            .collect();
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || {
            for id in &doomed {
                storage.remove_build_cache_entry(id)?;
            }
            for pinned in &kept_versions {
                storage.remove_kept_version(pinned)?;
            }
            let layers = storage.collect_unused_layers()?;
            Ok::<_, sandstone_volumes::Error>(Pruned {
                cache_entries: doomed.len(),
                versions: kept_versions.len(),
                layers,
            })
        })
        .await
        .map_err(super::internal)?
        .map_err(super::internal)
    }
}

fn from_instruction(from: &str) -> Instruction {
    Instruction {
        line: 1,
        kind: Kind::From(from.to_string()),
    }
}

/// Runs `sh -c cmd` in the step's sandbox, its output sent as it comes;
/// a command that fails fails the step.
async fn run_command(
    rt: &super::Runtime,
    cmd: &str,
    step: &Instruction,
    events: &Sender<BuildEvent>,
) -> Result<()> {
    let spawn = Request::Spawn {
        id: format!("build-{}", random_hex(4)),
        kind: ProcKind::Cmd {
            argv: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
        },
        cwd: None,
        env: rt.env.clone(),
        pty: None,
        attach: true,
        timeout_ms: None,
        hold_ms: None,
        restart: None,
    };
    let mut conn = rt.socket.connect().await.map_err(Error::InitUnreachable)?;
    conn.send(&spawn, &[])
        .await
        .map_err(Error::InitUnreachable)?;
    loop {
        match conn.recv().await.map_err(Error::InitUnreachable)? {
            (Response::Output { stream }, bytes) => {
                let stream = match stream {
                    Stream::Stderr => BuildStream::Stderr,
                    Stream::Stdout | Stream::Pty => BuildStream::Stdout,
                };
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let _ = events.send(BuildEvent::Output { stream, text }).await;
            }
            (Response::Error { message, .. }, _) => return Err(step_error(step, message)),
            (Response::Exit { info, .. }, _) => {
                return match (info.exit_code, info.signal) {
                    (Some(0), _) => Ok(()),
                    (Some(code), _) => Err(step_error(step, format!("exited with code {code}"))),
                    (None, Some(sig)) => Err(step_error(step, format!("killed by signal {sig}"))),
                    (None, None) => Err(step_error(step, "ended without an exit code")),
                };
            }
            _ => continue,
        }
    }
}

/// One file or directory a `COPY` takes.
struct Entry {
    /// Its path in the context.
    from: PathBuf,
    /// Its path relative to the destination.
    to: PathBuf,
    mode: u32,
    dir: bool,
}

/// What a `COPY` takes from the context.
struct Copied {
    entries: Vec<Entry>,
    /// Whether the destination is a directory the sources go into.
    into_dir: bool,
    /// Of every name, mode and byte: part of the step's key.
    digest: String,
}

/// Walks a `COPY`'s sources in the context: each must stay inside it (no
/// absolute path, no `..`, no symlink).
fn copy_sources(context: &Path, sources: &[String]) -> std::result::Result<Copied, String> {
    use sha2::Digest as _;
    use std::os::unix::fs::PermissionsExt;
    let mut entries = Vec::new();
    let mut dirs = false;
    for src in sources {
        let rel = Path::new(src.trim_end_matches('/'));
        if rel.as_os_str().is_empty()
            || rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!("{src}: a path inside the build context"));
        }
        let path = context.join(rel);
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|_| format!("{src}: not in the build context"))?;
        if meta.is_dir() {
            dirs = true;
            walk(&path, Path::new(""), &mut entries)?;
        } else if meta.is_file() {
            let name = rel.file_name().map(PathBuf::from).unwrap_or_default();
            entries.push(Entry {
                from: path,
                to: name,
                mode: meta.permissions().mode() & 0o7777,
                dir: false,
            });
        } else {
            return Err(format!("{src}: only files and directories are copied"));
        }
    }
    let mut h = sha2::Sha256::new();
    for e in &entries {
        h.update(e.to.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(e.mode.to_le_bytes());
        if !e.dir {
            let data =
                std::fs::read(&e.from).map_err(|err| format!("read {}: {err}", e.to.display()))?;
            h.update((data.len() as u64).to_le_bytes());
            h.update(&data);
        }
    }
    Ok(Copied {
        into_dir: dirs || sources.len() > 1,
        entries,
        digest: hex::encode(h.finalize()),
    })
}

fn walk(dir: &Path, rel: &Path, out: &mut Vec<Entry>) -> std::result::Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .flatten()
        .collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let meta = e.metadata().map_err(|e| e.to_string())?;
        let to = rel.join(e.file_name());
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            out.push(Entry {
                from: e.path(),
                to: to.clone(),
                mode,
                dir: true,
            });
            walk(&e.path(), &to, out)?;
        } else if meta.is_file() {
            out.push(Entry {
                from: e.path(),
                to,
                mode,
                dir: false,
            });
        } else {
            return Err(format!(
                "{}: only files and directories are copied",
                to.display()
            ));
        }
    }
    Ok(())
}

/// Writes what a `COPY` takes into the sandbox at `dest` (relative to
/// `workdir`), through init, as root.
async fn copy_in(rt: &super::Runtime, copied: &Copied, dest: &str, workdir: &str) -> Result<()> {
    let base = Path::new(workdir).join(dest);
    // As Docker does: into a directory when the destination says so
    // (`dir/`, `.`) or is one already.
    let names_a_dir = dest.ends_with('/') || dest == "." || dest.ends_with("/.");
    let is_dir = || async {
        let stat = Request::Stat {
            path: base.to_string_lossy().into_owned(),
        };
        matches!(
            rt.socket.call(&stat, &[]).await,
            Ok((Response::Stat { info }, _)) if info.kind == sandstone_api::FileKind::Dir
        )
    };
    let (dir, single) = if copied.into_dir || names_a_dir || is_dir().await {
        (base.clone(), None)
    } else {
        let parent = base.parent().unwrap_or(Path::new("/")).to_path_buf();
        (parent, Some(base.clone()))
    };
    ask(
        rt,
        &Request::Mkdir {
            path: dir.to_string_lossy().into_owned(),
            recursive: true,
        },
        &[],
    )
    .await?;
    for e in &copied.entries {
        let target = match &single {
            Some(file) => file.clone(),
            None => dir.join(&e.to),
        };
        let path = target.to_string_lossy().into_owned();
        if e.dir {
            ask(
                rt,
                &Request::Mkdir {
                    path,
                    recursive: true,
                },
                &[],
            )
            .await?;
            continue;
        }
        let data = tokio::fs::read(&e.from)
            .await
            .map_err(|err| super::internal(format!("read {}: {err}", e.from.display())))?;
        let mut pieces = data.chunks(COPY_CHUNK);
        let first = pieces.next().unwrap_or(&[]);
        let write = |append| Request::WriteFile {
            path: path.clone(),
            mode: Some(e.mode),
            append,
        };
        ask(rt, &write(false), first).await?;
        for piece in pieces {
            ask(rt, &write(true), piece).await?;
        }
    }
    Ok(())
}

/// One request to the step sandbox's init; a refusal fails the step.
async fn ask(rt: &super::Runtime, req: &Request, payload: &[u8]) -> Result<()> {
    rt.socket
        .call(req, payload)
        .await
        .map(drop)
        .map_err(|e| Error::Invalid(format!("COPY: {e}")))
}
