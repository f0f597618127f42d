//! The SSH gateway (`sandstone serve --ssh-listen ADDR`): `ssh
//! <sandbox-id>@host` opens a shell (with a PTY when the client asks for
//! one), runs a command, or serves SFTP in that sandbox.
//!
//! A login is a public key registered through `/users/me/ssh-keys`: it
//! acts as the API key that registered it, so it reaches that key's
//! team's sandboxes, and only while the key may run commands there
//! (active, unexpired, a role that may write). Every refusal leaves a
//! `sandstone::audit` record naming the sandbox, the key's fingerprint and
//! why; the client learns only that its key was refused. A session whose
//! API key is revoked meanwhile is ended, as the API's streams are.
//!
//! Each session channel becomes one context in the sandbox, started when
//! the client asks for its shell, command or subsystem (a paused sandbox
//! with `auto_resume` is resumed first), and killed when the channel
//! closes. SFTP is `sandstone-init sftp-server` in the sandbox, so files
//! are written as the sandbox's own processes write them. The host key
//! (ed25519, made once) is kept in the data directory: clients that
//! pinned it keep trusting the gateway across restarts.

use crate::initclient::InitError;
use crate::keys::Keys;
use crate::lifecycle::{Lifecycle, Runtime, random_hex};
use russh::keys::{HashAlg, PublicKey};
use russh::server::{self, Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, MethodKind, MethodSet, Sig};
use sandstone_api::auth::Action;
use sandstone_db::ssh_keys::SshKeyStore;
use sandstone_db::{ApiKeyRow, SandboxStatus};
use sandstone_init::proto::{ProcKind, PtySize, Request, Response as Init, Stream};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The host key's file in the data directory.
pub const HOST_KEY_FILE: &str = "ssh/gateway_ed25519_key";
/// A connection that says nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(3600);
/// Client messages (each up to a 32 KiB packet) queued for init.
const INPUT_QUEUE: usize = 64;
/// How long a connection may take to log in.
const LOGIN_GRACE: Duration = Duration::from_secs(60);
/// Output of a context waits this long for the attach that follows its
/// start.
const HOLD_MS: u64 = 60_000;
/// What a shell is when the client asks for none in particular: a login
/// bash where the template has one.
const LOGIN_SHELL: &str =
    "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";

pub struct Gateway {
    lifecycle: Arc<Lifecycle>,
    keys: Arc<Keys>,
    ssh_keys: Arc<dyn SshKeyStore>,
    config: Arc<server::Config>,
}

impl Gateway {
    /// Loads the host key from `data_dir` (making it the first time).
    pub fn new(
        data_dir: &Path,
        lifecycle: Arc<Lifecycle>,
        keys: Arc<Keys>,
        ssh_keys: Arc<dyn SshKeyStore>,
    ) -> anyhow::Result<Arc<Gateway>> {
        let path = data_dir.join(HOST_KEY_FILE);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let host =
            sandstone_egress::ssh_proxy::load_or_create_key(&path, "the SSH gateway's host key")?;
        let config = server::Config {
            keys: vec![host],
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            // OpenSSH opens with a `none` attempt to learn the methods:
            // refusing it tells nothing, so it is not held back the second
            // a refused key is.
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: Some(IDLE),
            ..Default::default()
        };
        Ok(Arc::new(Gateway {
            lifecycle,
            keys,
            ssh_keys,
            config: Arc::new(config),
        }))
    }

    /// Serves connections on `listener` until the daemon stops.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "SSH gateway: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // `Config::nodelay` applies to russh's own listener only: a
            // reply in two writes would otherwise wait for the client's
            // delayed ACK (40 ms).
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
            }
            let logged_in = Arc::new(AtomicBool::new(false));
            let login = Login {
                gw: self.clone(),
                peer,
                granted: None,
                logged_in: logged_in.clone(),
            };
            let config = self.config.clone();
            // A connection that has not logged in within the grace is
            // dropped: the idle timeout alone would let unauthenticated
            // connections hold descriptors for an hour.
            let grace = async move {
                tokio::time::sleep(LOGIN_GRACE).await;
                if logged_in.load(Ordering::Acquire) {
                    std::future::pending::<()>().await;
                }
            };
            tokio::spawn(async move {
                let session = async {
                    match server::run_stream(config, stream, login).await {
                        Ok(session) => session.await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                };
                tokio::select! {
                    ended = session => if let Err(e) = ended {
                        tracing::debug!(%peer, error = %e, "SSH gateway connection ended");
                    },
                    () = grace => tracing::debug!(%peer, "SSH gateway connection did not log in in time"),
                }
            });
        }
    }

    /// The API key `key` logs in to `sandbox` as, or why it may not.
    async fn authorize(&self, sandbox: &str, key: &PublicKey) -> Result<ApiKeyRow, String> {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let registered = self
            .ssh_keys
            .ssh_key_by_fingerprint(&fingerprint)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the key is not registered")?;
        let owner = self
            .keys
            .by_id(&registered.api_key_id)
            .await
            .map_err(|e| format!("the API key that registered it: {e}"))?;
        if !owner.role.may(Action::Write) {
            return Err(format!(
                "the API key that registered it has role {}, which may not run commands",
                owner.role
            ));
        }
        let row = match self.lifecycle.store.get_sandbox(sandbox).await {
            Ok(row) => row,
            Err(sandstone_db::Error::NotFound) => return Err("no such sandbox".into()),
            Err(e) => return Err(e.to_string()),
        };
        if row.team_id != owner.team_id {
            return Err(format!(
                "the key's team ({}) is not the sandbox's",
                owner.team_id
            ));
        }
        Ok(owner)
    }
}

/// One connection: who logged in, once someone has.
struct Login {
    gw: Arc<Gateway>,
    peer: SocketAddr,
    /// (sandbox, the API key it acts as).
    granted: Option<(String, ApiKeyRow)>,
    /// Set with `granted`, for the accept loop's login grace.
    logged_in: Arc<AtomicBool>,
}

impl server::Handler for Login {
    type Error = russh::Error;

    /// Every key is let on to prove itself: whether one is registered is
    /// not told to a client that does not hold it.
    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fingerprint = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        match self.gw.authorize(user, key.public_key).await {
            Ok(owner) => {
                tracing::info!(target: "sandstone::audit", sandbox = user, key = %fingerprint,
                    api_key = %owner.id, peer = %self.peer, "SSH login");
                self.granted = Some((user.to_string(), owner));
                self.logged_in.store(true, Ordering::Release);
                Ok(Auth::Accept)
            }
            Err(why) => {
                // The user name is the client's: quoted and escaped.
                tracing::warn!(target: "sandstone::audit", sandbox = ?user, key = %fingerprint,
                    peer = %self.peer, reason = %why, "SSH login refused");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((sandbox, owner)) = self.granted.clone() else {
            return Ok(()); // dropping the handle refuses the channel
        };
        reply.accept().await;
        let s = SessionChannel {
            id: channel.id(),
            gw: self.gw.clone(),
            sandbox,
            owner,
            handle: session.handle(),
        };
        tokio::spawn(s.run(channel));
        Ok(())
    }
}

/// What a session channel runs.
enum Start {
    Shell,
    Exec(String),
    Sftp,
}

struct SessionChannel {
    id: ChannelId,
    gw: Arc<Gateway>,
    sandbox: String,
    owner: ApiKeyRow,
    handle: server::Handle,
}

impl SessionChannel {
    async fn run(self, mut ch: Channel<Msg>) {
        let id = self.id;
        let mut pty: Option<PtySize> = None;
        let mut env = BTreeMap::new();
        // The requests before the one that starts something.
        let (start, want_reply) = loop {
            let Some(m) = ch.wait().await else { return };
            match m {
                ChannelMsg::RequestPty {
                    want_reply,
                    term,
                    col_width,
                    row_height,
                    ..
                } => {
                    pty = Some(pty_size(col_width, row_height));
                    env.insert("TERM".to_string(), term);
                    self.reply(want_reply, true).await;
                }
                // A client's locale, as sshd's default AcceptEnv takes; no
                // reply (russh reports every request as wanting one, and
                // OpenSSH asks for none here).
                ChannelMsg::SetEnv {
                    variable_name,
                    variable_value,
                    ..
                } if variable_name == "LANG" || variable_name.starts_with("LC_") => {
                    env.insert(variable_name, variable_value);
                }
                ChannelMsg::RequestShell { want_reply } => break (Start::Shell, want_reply),
                ChannelMsg::Exec {
                    want_reply,
                    command,
                } => {
                    let command = String::from_utf8_lossy(&command).into_owned();
                    break (Start::Exec(command), want_reply);
                }
                ChannelMsg::RequestSubsystem { want_reply, name } if name == "sftp" => {
                    break (Start::Sftp, want_reply);
                }
                // Other subsystems, agent and X11 forwarding: none here.
                ChannelMsg::RequestSubsystem { want_reply, .. }
                | ChannelMsg::AgentForward { want_reply }
                | ChannelMsg::RequestX11 { want_reply, .. } => self.reply(want_reply, false).await,
                ChannelMsg::Close => return,
                _ => {}
            }
        };
        // Accepted either way: a sandbox that cannot run it is told why on
        // stderr, with exit status 255, as ssh reports a failed connection.
        self.reply(want_reply, true).await;
        match self.start(start, pty, env).await {
            Ok((rt, ctx)) => self.relay(ch, rt, ctx).await,
            Err(why) => {
                let text = format!("sandstone: {why}\r\n");
                let _ = self.handle.extended_data(id, 1, text.into_bytes()).await;
                let _ = self.handle.exit_status_request(id, 255).await;
                let _ = self.handle.eof(id).await;
                let _ = self.handle.close(id).await;
            }
        }
    }

    async fn reply(&self, want_reply: bool, ok: bool) {
        if !want_reply {
            return;
        }
        let _ = match ok {
            true => self.handle.channel_success(self.id).await,
            false => self.handle.channel_failure(self.id).await,
        };
    }

    /// Starts the context (resuming the sandbox first when it is paused
    /// with `auto_resume`).
    async fn start(
        &self,
        start: Start,
        pty: Option<PtySize>,
        env: BTreeMap<String, String>,
    ) -> Result<(Runtime, String), String> {
        let lc = &self.gw.lifecycle;
        // The gateway reaches its own node's sandboxes: one another node
        // runs is named, not resumed here.
        if lc.runtime(&self.sandbox).is_none() {
            let row = lc.row(&self.sandbox).await.map_err(|e| e.to_string())?;
            if let Some(node) = row.node_id.as_deref().filter(|n| *n != lc.node)
                && row.status == SandboxStatus::Running
            {
                return Err(format!(
                    "sandbox {} runs on node {node}: use that node's SSH gateway",
                    self.sandbox
                ));
            }
        }
        let rt = lc
            .ensure_running(&self.sandbox)
            .await
            .map_err(|e| e.to_string())?;
        let kind = match start {
            Start::Shell => ProcKind::Cmd {
                argv: vec!["sh".into(), "-c".into(), LOGIN_SHELL.into()],
            },
            Start::Exec(command) => ProcKind::Cmd {
                argv: vec!["sh".into(), "-c".into(), command],
            },
            Start::Sftp => ProcKind::Sftp,
        };
        let ctx = format!("ctx-{}", random_hex(6));
        let spawn = Request::Spawn {
            id: ctx.clone(),
            kind,
            cwd: None,
            // The sandbox's env_vars, then the client's terminal and locale.
            env: rt.env.clone().into_iter().chain(env).collect(),
            pty,
            attach: false,
            timeout_ms: None,
            hold_ms: Some(HOLD_MS),
            restart: None,
        };
        match rt.socket.call(&spawn, &[]).await {
            Ok((Init::Proc { .. }, _)) => Ok((rt, ctx)),
            Ok((Init::Error { message, .. }, _)) => Err(message),
            Ok(_) => Err("unexpected answer from the sandbox's init".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Relays the context's output to the channel and the channel's input,
    /// EOF, window changes and signals to the context, until either ends.
    async fn relay(self, mut ch: Channel<Msg>, rt: Runtime, ctx: String) {
        let id = self.id;
        let attached = async {
            let mut conn = rt.socket.connect().await?;
            conn.send(&Request::Attach { id: ctx.clone() }, &[]).await?;
            Ok::<_, std::io::Error>(conn)
        };
        let mut conn = match attached.await {
            Ok(conn) => conn,
            Err(e) => {
                let _ = rt.socket.call(&Request::Remove { id: ctx }, &[]).await;
                let text = format!("sandstone: {e}\r\n");
                let _ = self.handle.extended_data(id, 1, text.into_bytes()).await;
                let _ = self.handle.close(id).await;
                return;
            }
        };
        let revoked = self.gw.keys.clone().revoked(Some(self.owner.clone()));
        tokio::pin!(revoked);
        // What the client sends goes to init from a task of its own, in
        // order, so output is relayed while init takes it (a process that
        // answers its input, as sftp-server does, would otherwise stall
        // the loop). The channel is read only with room in the queue (a
        // permit taken first): while it is full, the client's window holds
        // the rest, and the loop still relays output.
        let (input, mut queued) = tokio::sync::mpsc::channel::<(Request, Vec<u8>)>(INPUT_QUEUE);
        let deliver = {
            let (socket, sandbox, ctx) = (rt.socket.clone(), self.sandbox.clone(), ctx.clone());
            tokio::spawn(async move {
                while let Some((req, payload)) = queued.recv().await {
                    if let Err(e) = socket.call(&req, &payload).await {
                        tracing::debug!(%sandbox, context = %ctx, error = %e, "SSH input not delivered");
                    }
                }
            })
        };
        loop {
            tokio::select! {
                frame = conn.recv() => match frame {
                    Ok((Init::Output { stream }, bytes)) => {
                        let sent = if stream == Stream::Stderr {
                            self.handle.extended_data(id, 1, bytes).await
                        } else {
                            self.handle.data(id, bytes).await
                        };
                        if sent.is_err() {
                            break;
                        }
                    }
                    Ok((Init::Exit { info, .. }, _)) => {
                        let code = info.exit_code.unwrap_or(255);
                        let _ = self.handle.exit_status_request(id, code as u32).await;
                        let _ = self.handle.eof(id).await;
                        let _ = self.handle.close(id).await;
                        return;
                    }
                    Ok((Init::Truncated { .. }, _)) => {}
                    Ok(_) | Err(_) => break,
                },
                // Both cancel-safe: a permit or message not used goes back.
                next = async { Some((input.reserve().await.ok()?, ch.wait().await?)) } => {
                    let Some((room, m)) = next else { break };
                    let req = match m {
                        ChannelMsg::Data { data } => {
                            self.gw.lifecycle.touch(&self.sandbox);
                            Some((Request::Input { id: ctx.clone() }, data.to_vec()))
                        }
                        ChannelMsg::Eof => Some((Request::CloseStdin { id: ctx.clone() }, vec![])),
                        ChannelMsg::WindowChange { col_width, row_height, .. } => {
                            let size = pty_size(col_width, row_height);
                            Some((Request::Resize { id: ctx.clone(), size }, vec![]))
                        }
                        ChannelMsg::Signal { signal } => signal_number(&signal)
                            .map(|signal| (Request::Signal { id: ctx.clone(), signal }, vec![])),
                        ChannelMsg::Close => break,
                        _ => None,
                    };
                    if let Some(req) = req {
                        room.send(req);
                    }
                },
                why = &mut revoked => {
                    let text = format!("\r\nsandstone: session ended: {why}\r\n");
                    let _ = self.handle.extended_data(id, 1, text.into_bytes()).await;
                    break;
                }
            }
        }
        deliver.abort();
        // The client went away (or its key did): so does what it ran, as
        // sshd hangs up on a session's processes.
        if let Err(e) = rt.socket.call(&Request::Remove { id: ctx }, &[]).await
            && !matches!(e, InitError::Unreachable(_))
        {
            tracing::debug!(sandbox = %self.sandbox, error = %e, "SSH session's context not removed");
        }
        let _ = self.handle.close(id).await;
    }
}

fn pty_size(cols: u32, rows: u32) -> PtySize {
    let clamp = |n: u32, default: u16| match u16::try_from(n) {
        Ok(0) | Err(_) => default,
        Ok(n) => n,
    };
    PtySize {
        rows: clamp(rows, 24),
        cols: clamp(cols, 80),
    }
}

fn signal_number(sig: &Sig) -> Option<i32> {
    Some(match sig {
        Sig::ABRT => libc::SIGABRT,
        Sig::ALRM => libc::SIGALRM,
        Sig::FPE => libc::SIGFPE,
        Sig::HUP => libc::SIGHUP,
        Sig::ILL => libc::SIGILL,
        Sig::INT => libc::SIGINT,
        Sig::KILL => libc::SIGKILL,
        Sig::PIPE => libc::SIGPIPE,
        Sig::QUIT => libc::SIGQUIT,
        Sig::SEGV => libc::SIGSEGV,
        Sig::TERM => libc::SIGTERM,
        Sig::USR1 => libc::SIGUSR1,
        Sig::Custom(name) => return crate::routes::contexts::parse_signal(name),
    })
}
