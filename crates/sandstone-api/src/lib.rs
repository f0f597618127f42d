//! Wire types of Sandstone's public REST API, following Sandbox0's API so its
//! SDKs work unchanged, the agent [`toolset`] every end that runs or offers
//! its tools shares, and the small helpers both ends of the API share
//! (bearer parsing, timestamps, [`Secret`]). No I/O beyond reading random
//! bytes.

pub mod auth;
pub mod hmac;
pub mod logs;
pub mod metrics;
pub mod observability;
mod secret;
pub mod services;
pub mod sessions;
pub mod timefmt;
pub mod toolset;
pub mod volumes;
pub mod webhooks;

pub use secret::Secret;

/// `bytes` random bytes from the kernel, as hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // One `getrandom` call (every context id takes one: opening
    // /dev/urandom each time was a file open per exec), which fails only
    // on a kernel older than 3.17 or a seccomp filter that forbids it.
    getrandom::fill(&mut buf).expect("the kernel's getrandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `{success: true, data}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Kubernetes-style quantity, e.g. `512Mi`, `2Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Cores, e.g. `0.5`, `2`, `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Sandstone extension: disk cap for the rootfs layer and /workspace
    /// together, e.g. `10Gi` (enforced on the btrfs pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_ttl: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// Sandbox0's `SandboxNetworkPolicy` (`mode`, `egress.trafficRules`);
    /// absent means `block-all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<serde_json::Value>,
    /// Sandstone extension: `false` gives the sandbox only loopback even
    /// when the daemon networks sandboxes (the default); absent follows
    /// the template (`"network_enabled"` in its `template.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_enabled: Option<bool>,
    /// Sandstone extension: labels for the caller's bookkeeping (say, the
    /// agent session a sandbox serves), listed with the sandbox and
    /// filterable (`GET /sandboxes?metadata.<key>=<value>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Sandstone extension: an absolute path where the sandbox sees a
    /// read-only directory that only the API fills
    /// (`PUT /sandboxes/{id}/uploads/{name}`): files handed to the sandbox
    /// that nothing in it, root included, can change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploads_dir: Option<String>,
    /// Sandbox0's webhook: where the daemon POSTs this sandbox's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookConfig>,
    /// Sandbox0's app services: servers in the sandbox the daemon routes
    /// to (see [`services`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<services::AppService>,
    /// The sandbox volumes bound into it: set from the claim's `mounts`
    /// (a claim's `config.mounts` is refused), kept for every start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<volumes::VolumeBind>,
}

/// Sandbox0's `WebhookConfig`: the daemon (never the sandbox) POSTs the
/// sandbox's events to `url` as JSON, signed with `secret` when there is
/// one (hex HMAC-SHA256 of the body in `X-Sandbox0-Signature`); with
/// `watch_dir`, changes of the files under it too. Set at claim time only.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Write-only: never serialized, so neither the stored configuration
    /// nor any answer that shows it holds the secret (the daemon keeps it
    /// sealed, apart).
    #[serde(default, skip_serializing)]
    pub secret: Option<Secret>,
    /// An absolute path in the sandbox whose files are watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_dir: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClaimRequest {
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub config: Option<SandboxConfig>,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// Sandbox volumes to bind into the new sandbox.
    #[serde(default)]
    pub mounts: Vec<volumes::ClaimMount>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimResponse {
    pub sandbox_id: String,
    pub status: String,
    pub template: String,
    pub runtime_id: String,
    pub pod_name: String,
    pub cluster_id: Option<String>,
    /// Where each of the claim's `mounts` stands (all `mounted` once the
    /// claim answers: Sandstone binds them before the sandbox starts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootstrap_mounts: Vec<volumes::MountStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    pub template_id: String,
    pub team_id: String,
    pub status: String,
    pub paused: bool,
    pub auto_resume: bool,
    pub runtime_id: String,
    pub pod_name: String,
    pub runtime_generation: i64,
    pub config: SandboxConfig,
    pub claimed_at: String,
    pub created_at: String,
    pub updated_at: String,
    pub expires_at: Option<String>,
    pub hard_expires_at: Option<String>,
    /// Sandstone extension: why a `failed` sandbox failed (its init died,
    /// or it was lost with its node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Sandstone extension: the sandbox was running on a node whose lease
    /// ran out. Its status shows `failed` (the statuses Sandbox0's API
    /// lists); `resume` starts it from `last_checkpoint_at`, and what ran
    /// after that is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lost: bool,
    /// Sandstone extension: when its files were last checkpointed to the
    /// object store (`serve --object-store`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint_at: Option<String>,
    /// The sandbox volumes bound into it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<volumes::ClaimMount>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSummary {
    pub id: String,
    pub template_id: String,
    pub status: String,
    pub paused: bool,
    pub runtime_generation: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Sandstone extension: bytes the sandbox's files occupy.
    #[serde(default)]
    pub disk_bytes: u64,
    /// Sandstone extension: the claim's resources (absent: the template's
    /// defaults), so a list shows them without a call per sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Sandstone extension: the claim's `network_enabled` (absent: the
    /// template's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_enabled: Option<bool>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxSummary>,
    pub count: usize,
    pub has_more: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxStatus {
    pub sandbox_id: String,
    pub template_id: String,
    pub runtime_id: String,
    pub status: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSandboxRequest {
    #[serde(default)]
    pub config: Option<SandboxUpdateConfig>,
}

/// What `PUT /sandboxes/{id}` may change while the sandbox runs; a field
/// left out keeps its value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxUpdateConfig {
    #[serde(default)]
    pub ttl: Option<u64>,
    #[serde(default)]
    pub hard_ttl: Option<u64>,
    #[serde(default)]
    pub auto_resume: Option<bool>,
    /// The defaults of processes started from now on; `{}` clears them.
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// The whole policy, as `PUT /sandboxes/{id}/network` sets it.
    #[serde(default)]
    pub network: Option<serde_json::Value>,
    /// Fixed at claim time: refused when set.
    #[serde(default)]
    pub resources: Option<Unsupported>,
    /// Replaces the app services (as `PUT /sandboxes/{id}/services`).
    #[serde(default)]
    pub services: Option<Vec<services::AppService>>,
    /// Sandstone extension: labels merged in (an empty value drops one).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Sandstone extension: sets [`SandboxConfig::uploads_dir`]; mounted
    /// from the sandbox's next start (a resume), so set it while paused.
    #[serde(default)]
    pub uploads_dir: Option<String>,
}

/// An API key as `GET /api-keys` lists it (never its value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// Always `team`: a key acts within its team.
    pub scope: String,
    pub team_id: String,
    pub created_by: String,
    pub roles: Vec<auth::Role>,
    pub is_active: bool,
    /// RFC 3339; the zero time (`0001-01-01T00:00:00Z`) when it never
    /// expires, as Sandbox0 writes it.
    pub expires_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    pub usage_count: u64,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /api-keys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    pub name: String,
    /// `team` (the default); `platform` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// One role; `developer` when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<auth::Role>,
    /// `30d`, `90d`, `180d`, `365d` or `never` (the default); Sandstone
    /// also takes any whole number of days, hours, minutes or seconds
    /// (`12h`), up to ten years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    /// The team the key acts in (a Sandstone extension): the caller's own
    /// by default; another only for the installation's admins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
}

/// A team (Sandbox0's `Team`): its keys see only its sandboxes,
/// snapshots and credential sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Team {
    pub id: String,
    /// Unique here (Sandbox0 allows repeats): the CLI names teams by it.
    pub name: String,
    /// The name again: Sandstone has no separate alias.
    pub slug: String,
    pub owner_id: Option<String>,
    pub home_region_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /teams`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateTeamRequest {
    pub name: String,
    /// Accepted for Sandbox0's clients; must equal `name` when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// Accepted for Sandbox0's clients; there is one region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_region_id: Option<String>,
}

/// `POST /users/me/ssh-keys`: a public key in OpenSSH's one-line form
/// (`ssh-ed25519 AAAA… comment`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSshPublicKeyRequest {
    pub name: String,
    pub public_key: String,
}

/// A registered SSH public key (Sandbox0's `SSHPublicKey`): it logs in to
/// the SSH gateway as `<sandbox id>@host` for the sandboxes of the team of
/// the API key that registered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SshPublicKey {
    pub id: String,
    pub name: String,
    /// The key without its comment.
    pub public_key: String,
    pub key_type: String,
    /// `SHA256:…`, as `ssh-keygen -l` shows it.
    pub fingerprint_sha256: String,
    pub comment: String,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /api-keys`' answer: the only time `key` is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedApiKey {
    pub id: String,
    pub name: String,
    pub scope: String,
    pub roles: Vec<auth::Role>,
    pub team_id: String,
    pub key: String,
    pub expires_at: String,
    pub created_at: String,
}

/// `GET /api-keys/current`: `{"api_key": …}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CurrentApiKey {
    pub api_key: CurrentKey,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CurrentKey {
    pub id: String,
    pub team_id: String,
    pub created_by: String,
    pub scope: String,
    pub roles: Vec<auth::Role>,
    pub permissions: Vec<String>,
    pub is_active: bool,
    pub expires_at: String,
}

/// One file of a sandbox's uploads directory
/// (`GET /sandboxes/{id}/uploads`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadInfo {
    pub name: String,
    pub size: u64,
}

/// `POST .../pause`'s optional body (Sandstone's own: Sandbox0's pause
/// takes none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// Keep the processes with their memory (written to disk where the
    /// node has CRIU, else frozen in place); resume continues them, on this
    /// node.
    #[serde(default)]
    pub memory: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PauseResponse {
    pub sandbox_id: String,
    pub paused: bool,
    pub status: String,
    /// Where a pause with memory keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryKept>,
}

/// Where a pause with memory keeps the processes' memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKept {
    /// Written to disk (CRIU): none of the node's memory is held.
    Disk,
    /// Frozen in place, resident: this node has no CRIU.
    Frozen,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeResponse {
    pub sandbox_id: String,
    pub resumed: bool,
    pub status: String,
    pub runtime_generation: i64,
}

/// A file read with `Accept: application/json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileContent {
    pub content: String,
    pub encoding: FileEncoding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileEncoding {
    Base64,
}

/// `POST /sandboxes/{id}/refresh`'s optional body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RefreshRequest {
    /// Seconds the sandbox may now stay idle before it pauses (default: its
    /// `ttl`).
    #[serde(default)]
    pub duration: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshResponse {
    pub sandbox_id: String,
    pub expires_at: Option<String>,
    pub hard_expires_at: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub description: String,
    pub created_at: String,
    /// Omitted when unset: the spec's field is not nullable, and the SDK
    /// parses any value present as a date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotList {
    pub snapshots: Vec<Snapshot>,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub snapshot_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreResponse {
    pub sandbox_id: String,
    pub snapshot_id: String,
    pub status: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkConfig {
    #[serde(default)]
    pub ttl: Option<u64>,
    #[serde(default)]
    pub hard_ttl: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    #[serde(default)]
    pub config: Option<ForkConfig>,
    /// Sent by the Sandbox0 SDK (`false` unless asked): a fork that keeps
    /// the source's memory. Files only here, so `true` is refused.
    #[serde(default)]
    pub memory: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForkResponse {
    pub source_sandbox_id: String,
    pub sandbox: Sandbox,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub message: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CmdSpec {
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplSpec {
    #[serde(default)]
    pub alias: Option<String>,
    /// Not supported yet (only the built-in drivers run): refused when set.
    #[serde(default)]
    pub input: Option<Unsupported>,
    #[serde(default)]
    pub repl_config: Option<Unsupported>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateContextRequest {
    /// `cmd` or `repl`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub cmd: Option<CmdSpec>,
    #[serde(default)]
    pub repl: Option<ReplSpec>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    #[serde(default)]
    pub pty_size: Option<PtySize>,
    #[serde(default)]
    pub wait_until_done: bool,
    /// Sandstone extension: kill the command after this many seconds.
    #[serde(default)]
    pub timeout_sec: Option<u64>,
    /// Not supported: refused when set above 0.
    #[serde(default)]
    pub idle_timeout_sec: Option<u64>,
    /// The context's lifetime: it is killed after this many seconds (as
    /// `timeout_sec`, which wins when both are given).
    #[serde(default)]
    pub ttl_sec: Option<u64>,
    /// Sandstone extension: until a first reader attaches (the context's
    /// WebSocket), keep its output whole for up to this many seconds; a
    /// process whose buffer fills waits meanwhile. Default 10; a client
    /// that starts a context and attaches at once (`sandstone exec`) asks
    /// for more, so no load can make it lose output.
    #[serde(default)]
    pub hold_output_sec: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContextResponse {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    pub running: bool,
    pub paused: bool,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    pub env_vars: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_raw: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Sandstone extension: the signal that ended the process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Sandstone extension: the kernel OOM-killed a process of the sandbox
    /// while this command ran.
    #[serde(default)]
    pub oom_killed: bool,
    /// Sandstone extension: the output passed the 16 MiB a synchronous
    /// run's response may take (counted as rendered JSON); the rest was
    /// dropped.
    #[serde(default)]
    pub output_truncated: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContextList {
    pub contexts: Vec<ContextResponse>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    pub data: String,
    /// Sandstone extension: give up (and restart the interpreter) after this.
    #[serde(default)]
    pub timeout_sec: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecResponse {
    /// Both streams as they came (a REPL's output is not split).
    pub output_raw: String,
    pub exit_code: Option<i32>,
    pub state: String,
    /// Sandstone extension: see [`ContextResponse::output_truncated`].
    #[serde(default)]
    pub output_truncated: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputRequest {
    pub data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignalRequest {
    pub signal: String,
}

/// What a path in a sandbox is, as the files API and init's `stat` name it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// A device, socket or FIFO.
    Other,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileInfo {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: FileKind,
    pub size: u64,
    pub mode: String,
    pub mod_time: String,
    pub is_link: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileList {
    pub entries: Vec<FileInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveRequest {
    pub source: String,
    pub destination: String,
}

/// `/healthz` and `/readyz`: Sandbox0's health data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    /// Unix seconds.
    pub timestamp: u64,
}

/// Sandbox0's `Template`, with Sandstone's `id` and `description` beside
/// `template_id` and `spec.description`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Template {
    pub id: String,
    pub template_id: String,
    pub description: String,
    /// `team` for a template a team made (only its keys see it), `public`
    /// for a shared one.
    pub scope: String,
    pub spec: TemplateSpec,
    /// Present while the template is being made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TemplateStatus>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateStatus {
    pub creation: CreationStatus,
}

/// Sandbox0's `TemplateCreationStatus`: its stages name Sandbox0's
/// pipeline, so a pull reports `reconciling` and says in `message` what
/// it is doing (pulling, unpacking).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreationStatus {
    pub state: CreationState,
    pub stage: CreationStage,
    pub started_at: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CreationState {
    Creating,
    Ready,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CreationStage {
    Capturing,
    Publishing,
    Reconciling,
}

/// `POST /api/v1/templates`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateCreateRequest {
    pub template_id: String,
    pub spec: TemplateSpecRequest,
}

/// `PUT /api/v1/templates/{id}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateUpdateRequest {
    pub spec: TemplateSpecRequest,
}

/// `POST /api/v1/templates/from-sandbox`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateFromSandboxRequest {
    pub template_id: String,
    pub sandbox_id: String,
    /// Sandbox0's changes to the captured spec: not supported yet.
    #[serde(default)]
    pub spec_overrides: Option<Unsupported>,
}

/// `SandboxTemplateSpec` as a request: the fields Sandstone acts on, and
/// the rest parsed and refused by name when set.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateSpecRequest {
    #[serde(default)]
    pub description: Option<String>,
    pub main_container: ContainerRequest,
    /// Over the image's `Env` and `mainContainer.env`.
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    /// The default network policy its sandboxes start with.
    #[serde(default)]
    pub network: Option<serde_json::Value>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub pod: Option<Unsupported>,
    /// How many warm sandboxes to keep for it (instead of the daemon's
    /// `--warm-pool`).
    #[serde(default)]
    pub pool: Option<PoolStrategy>,
    #[serde(default)]
    pub cluster_id: Option<Unsupported>,
    /// Claim-lifetime tmpfs mounts: in the Sandbox0 SDK's model (0.10.4)
    /// though not in the spec, which it sends as an empty list.
    #[serde(default)]
    pub ephemeral_mounts: Vec<Unsupported>,
    /// Where its sandboxes take sandbox volumes (the 2026-07 spec's).
    #[serde(default)]
    pub volume_mounts: Vec<volumes::VolumeMountSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerRequest {
    /// An image reference (`registry/repository:tag` or `@sha256:…`).
    pub image: String,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    pub resources: ResourceQuota,
    #[serde(default)]
    pub image_pull_policy: Option<Unsupported>,
    #[serde(default)]
    pub security_context: Option<Unsupported>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

impl TemplateSpecRequest {
    /// The first field set that Sandstone does not act on yet.
    pub fn unsupported(&self) -> Option<&'static str> {
        let c = &self.main_container;
        [
            ("spec.pod", self.pod.is_some()),
            ("spec.clusterId", self.cluster_id.is_some()),
            ("spec.ephemeralMounts", !self.ephemeral_mounts.is_empty()),
            (
                "spec.mainContainer.imagePullPolicy",
                c.image_pull_policy.is_some(),
            ),
            (
                "spec.mainContainer.securityContext",
                c.security_context.is_some(),
            ),
        ]
        .into_iter()
        .find_map(|(field, set)| set.then_some(field))
    }
}

/// Sandbox0's `SandboxTemplateSpec`: the fields that describe a Sandstone
/// template.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolStrategy>,
    pub main_container: ContainerSpec,
    /// The base environment of the template's processes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// Where its sandboxes take sandbox volumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<volumes::VolumeMountSpec>,
}

/// Sandbox0's `PoolStrategy`: the warm sandboxes kept for a template.
/// Sandstone keeps `minIdle` made ahead (it refills one at a time, so
/// never more than `maxIdle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolStrategy {
    pub min_idle: u32,
    pub max_idle: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    /// The image the template was made from, or the built template's name.
    pub image: String,
    pub resources: ResourceQuota,
}

/// A sandbox's default limits (a claim's `config.resources` overrides).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceQuota {
    pub memory: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateList {
    pub templates: Vec<Template>,
}

/// A field of Sandbox0's API that Sandstone does not act on yet. It parses
/// whatever the spec allows there, so a client that sends the whole model
/// (empty lists, absent objects) works; the daemon refuses a present value
/// with a 400 naming the field, rather than ignore what the caller counts
/// on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported;

impl<'de> Deserialize<'de> for Unsupported {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(Unsupported)
    }
}

/// Never sent in practice: a value of this type is refused, not stored.
impl Serialize for Unsupported {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

/// `static_headers` values: header name → value (write-only).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticHeaders {
    pub values: BTreeMap<String, String>,
}

/// `static_tls_client_certificate` values (write-only): what the proxy
/// presents upstream for mutual TLS, and the CA that verifies the
/// upstream's own certificate when it is not one the host trusts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticTlsClientCertificate {
    pub certificate_pem: String,
    pub private_key_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

/// `static_username_password` values (write-only).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticUsernamePassword {
    pub username: String,
    pub password: String,
}

/// `static_ssh_private_key` values (write-only).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticSshPrivateKey {
    pub private_key_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_headers: Option<StaticHeaders>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "staticTLSClientCertificate"
    )]
    pub static_tls_client_certificate: Option<StaticTlsClientCertificate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_username_password: Option<StaticUsernamePassword>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "staticSSHPrivateKey"
    )]
    pub static_ssh_private_key: Option<StaticSshPrivateKey>,
}

/// Sandbox0's `CredentialSourceResolverKind`: what a source holds. Fixed
/// when the source is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialSourceKind {
    StaticHeaders,
    StaticTlsClientCertificate,
    StaticUsernamePassword,
    StaticSshPrivateKey,
}

impl CredentialSourceKind {
    pub const ALL: [CredentialSourceKind; 4] = [
        CredentialSourceKind::StaticHeaders,
        CredentialSourceKind::StaticTlsClientCertificate,
        CredentialSourceKind::StaticUsernamePassword,
        CredentialSourceKind::StaticSshPrivateKey,
    ];

    /// The name the API and the database use.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialSourceKind::StaticHeaders => "static_headers",
            CredentialSourceKind::StaticTlsClientCertificate => "static_tls_client_certificate",
            CredentialSourceKind::StaticUsernamePassword => "static_username_password",
            CredentialSourceKind::StaticSshPrivateKey => "static_ssh_private_key",
        }
    }

    /// The kind a stored name stands for.
    pub fn parse(name: &str) -> Option<CredentialSourceKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for CredentialSourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sandbox0's `CredentialSourceWriteRequest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialSourceWrite {
    pub name: String,
    pub resolver_kind: CredentialSourceKind,
    pub spec: CredentialSpec,
}

/// What reading a credential source returns: never its values.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialSourceMeta {
    pub name: String,
    pub resolver_kind: String,
    pub current_version: i64,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /api/v1/sandboxes/{id}/tools/{name}` (Sandstone extension): one
/// call of the agent toolset (`bash`, `read`, `write`, `edit`, `glob`,
/// `grep`) executed inside the sandbox, with the semantics and messages of
/// Anthropic's `agent_toolset_20260401` reference implementation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ToolCallRequest {
    /// The tool's input as the model wrote it (`agent.tool_use.input`).
    #[serde(default)]
    pub input: serde_json::Value,
    /// Relative paths resolve here; file tools stay under it or under an
    /// allowed root. Default `/workspace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Other roots the file tools may touch (skills, memory stores).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_roots: Vec<String>,
    /// Roots where `write` and `edit` are refused (read-only memory stores).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only_roots: Vec<String>,
}

/// The outcome of one tool call, ready to become `user.tool_result`
/// content: `text`, `image` or `document` blocks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ToolCallResult {
    pub content: Vec<serde_json::Value>,
    pub is_error: bool,
}

/// One line of `POST /api/v1/templates/build`'s answer, a stream of JSON
/// lines (`application/x-ndjson`) that ends with `done` or `failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildEvent {
    /// Step `index` of `total` (1-based, `FROM` first) begins; `cached`
    /// when its result was found in the build cache.
    Step {
        index: usize,
        total: usize,
        line: usize,
        instruction: String,
        cached: bool,
    },
    /// Output of the running step's command.
    Output { stream: BuildStream, text: String },
    /// The template is ready.
    Done {
        template_id: String,
        version: u32,
        /// Steps that made files: run now, and taken from the cache.
        steps_run: usize,
        steps_cached: usize,
        duration_ms: u64,
    },
    /// The build stopped; nothing was made of it.
    Failed {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        line: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStream {
    Stdout,
    Stderr,
}

/// `POST /api/v1/registry/credentials`'s optional body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryCredentialsRequest {
    /// `repository[:tag]` to push, without a registry.
    #[serde(default)]
    pub target_image: Option<String>,
}

/// Sandbox0's `RegistryCredentials`: where to push, and a short-lived
/// login for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryCredentials {
    pub provider: String,
    pub push_registry: String,
    pub pull_registry: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_image: Option<String>,
    pub username: String,
    pub password: String,
    pub expires_at: String,
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_hex_is_hex_of_the_length_asked_and_never_repeats() {
        let a = super::random_hex(16);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
        // 128 random bits: equal twice, or all zero, only if nothing random came.
        assert_ne!(a, super::random_hex(16));
        assert_ne!(a, "0".repeat(32));
    }
}
