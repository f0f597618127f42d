//! The `ssh_proxy` projection: SSH (git over SSH, mostly) to a host a
//! credential rule names, with a private key the sandbox never holds. The
//! proxy terminates the sandbox's SSH connection as that host, presenting a
//! host certificate for the name signed by the installation's SSH CA (which
//! every sandbox trusts through `/etc/ssh/ssh_known_hosts`, the way it
//! trusts the TLS CA), accepts the sandbox's placeholder key, and
//! re-originates SSH to the real host: its host key must be one the
//! binding pins (`knownHosts`), and the proxy logs in with the
//! `static_ssh_private_key` source. Each session channel (exec, shell,
//! subsystem) is relayed to an upstream channel, requests and replies in
//! order, data both ways, and the exit status back.

use crate::counted::Counted;
use crate::credentials::{ProjectionError, SourceValues};
use crate::login::Outcome;
use crate::socks5::Dial;
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::known_hosts::{HostPatterns, KnownHosts, Marker};
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::{Certificate, LineEnding, PrivateKey, PublicKey};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::server::{Auth, Msg as ServerMsg, Session};
use russh::{Channel, ChannelMsg, client, server};
use sandstone_api::CredentialSourceKind;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where sandboxes find the SSH CA: OpenSSH's system-wide known_hosts.
pub const SANDBOX_KNOWN_HOSTS: &str = "/etc/ssh/ssh_known_hosts";
/// A host certificate is made again after this long (it is valid for a
/// day, from five minutes ago, for clocks a little behind).
const CERT_REUSE: Duration = Duration::from_secs(3600);
/// An idle relayed connection is closed after this long.
const IDLE: Duration = Duration::from_secs(3600);

/// Why the SSH identity could not be loaded or made, or a certificate
/// signed. Never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum SshIdentityError {
    #[error("{what}: {error}")]
    Io {
        what: &'static str,
        error: std::io::Error,
    },
    #[error("{what}: {error}")]
    Key {
        what: &'static str,
        error: russh::keys::ssh_key::Error,
    },
    #[error("no randomness for a key")]
    Random,
}

/// The proxy's SSH host key and the installation's SSH CA, which signs a
/// host certificate for each name the proxy answers as.
pub struct SshIdentity {
    host: PrivateKey,
    ca: PrivateKey,
    /// `@cert-authority * <ca>`: bound into every sandbox at
    /// `/etc/ssh/ssh_known_hosts`.
    pub known_hosts: PathBuf,
    certs: Mutex<HashMap<String, (Instant, Certificate)>>,
}

fn random_ed25519() -> Result<PrivateKey, SshIdentityError> {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| SshIdentityError::Random)?;
    let pair = Ed25519Keypair::from_seed(&seed);
    PrivateKey::new(KeypairData::Ed25519(pair), "sandstone").map_err(|error| {
        SshIdentityError::Key {
            what: "a new key",
            error,
        }
    })
}

/// The OpenSSH private key at `path` (0600), made first if missing.
pub fn load_or_create_key(path: &Path, what: &'static str) -> Result<PrivateKey, SshIdentityError> {
    match std::fs::read_to_string(path) {
        Ok(pem) => {
            PrivateKey::from_openssh(pem).map_err(|error| SshIdentityError::Key { what, error })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = random_ed25519()?;
            let pem = key
                .to_openssh(LineEnding::LF)
                .map_err(|error| SshIdentityError::Key { what, error })?;
            crate::ca::write(path, pem.as_bytes(), 0o600)
                .map_err(|error| SshIdentityError::Io { what, error })?;
            Ok(key)
        }
        Err(error) => Err(SshIdentityError::Io { what, error }),
    }
}

impl SshIdentity {
    /// Loads the host key and CA from `dir` (the TLS CA's directory), making
    /// them the first time, and writes the sandboxes' known_hosts line.
    pub fn load_or_create(dir: &Path) -> Result<SshIdentity, SshIdentityError> {
        let io = |what| move |error| SshIdentityError::Io { what, error };
        std::fs::create_dir_all(dir).map_err(io("the CA directory"))?;
        let host = load_or_create_key(&dir.join("ssh_host_ed25519_key"), "the SSH host key")?;
        let ca = load_or_create_key(&dir.join("ssh_ca_ed25519_key"), "the SSH CA key")?;
        let line = ca
            .public_key()
            .to_openssh()
            .map_err(|error| SshIdentityError::Key {
                what: "the SSH CA key",
                error,
            })?;
        let known_hosts = dir.join("ssh_known_hosts");
        let content = format!("@cert-authority * {line}\n");
        crate::ca::write(&known_hosts, content.as_bytes(), 0o644)
            .map_err(io("the sandboxes' known_hosts"))?;
        Ok(SshIdentity {
            host,
            ca,
            known_hosts,
            certs: Mutex::new(HashMap::new()),
        })
    }

    /// A host certificate of the proxy's key for `name`.
    fn certificate(&self, name: &str) -> Result<Certificate, SshIdentityError> {
        let mut certs = self.certs.lock().expect("lock poisoned");
        if let Some((made, cert)) = certs.get(name)
            && made.elapsed() < CERT_REUSE
        {
            return Ok(cert.clone());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let key = |error| SshIdentityError::Key {
            what: "a host certificate",
            error,
        };
        let mut nonce = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| SshIdentityError::Random)?;
        let mut b = Builder::new(
            nonce,
            self.host.public_key().key_data().clone(),
            now - 300,
            now + 86_400,
        )
        .map_err(key)?;
        b.cert_type(CertType::Host).map_err(key)?;
        b.key_id(format!("sandstone egress: {name}")).map_err(key)?;
        b.valid_principal(name).map_err(key)?;
        let cert = b.sign(&self.ca).map_err(key)?;
        if certs.len() > 1024 {
            certs.clear();
        }
        certs.insert(name.to_string(), (Instant::now(), cert.clone()));
        Ok(cert)
    }

    /// The CA's public key (tests check a sandbox's file against it).
    pub fn ca_public_key(&self) -> &PublicKey {
        self.ca.public_key()
    }
}

/// Host keys a binding pins (`knownHosts`, OpenSSH's format): the upstream
/// must present one whose entry matches its name.
#[derive(Debug, Clone)]
pub struct Pins(Vec<(HostPatterns, PublicKey)>);

impl Pins {
    /// Parses known_hosts lines; `@revoked` and `@cert-authority` entries
    /// are refused (a pin is a key).
    pub fn parse(lines: &[String]) -> Result<Pins, String> {
        let mut out = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            for entry in KnownHosts::new(line) {
                let entry = entry.map_err(|e| format!("entry {i}: {e}"))?;
                if let Some(m) = entry.marker() {
                    let m: &Marker = m;
                    return Err(format!("entry {i}: {} is not supported", m.as_str()));
                }
                out.push((entry.host_patterns().clone(), entry.public_key().clone()));
            }
        }
        match out.is_empty() {
            true => Err("at least one host key".into()),
            false => Ok(Pins(out)),
        }
    }

    /// Whether `key` is pinned for `host:port`.
    fn admits(&self, host: &str, port: u16, key: &PublicKey) -> bool {
        let name = match port {
            22 => host.to_string(),
            _ => format!("[{host}]:{port}"),
        };
        self.0.iter().any(|(patterns, pinned)| {
            pinned.key_data() == key.key_data() && matches(patterns, &name)
        })
    }
}

/// OpenSSH's host matching: a hashed name, or patterns with `*`, `?` and
/// `!` negations (a negated match rules the name out).
fn matches(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
            ring::hmac::verify(&key, name.as_bytes(), hash).is_ok()
        }
        HostPatterns::Patterns(list) => {
            let mut hit = false;
            for p in list {
                match p.strip_prefix('!') {
                    Some(neg) if glob(neg, name) => return false,
                    Some(_) => {}
                    None => hit |= glob(p, name),
                }
            }
            hit
        }
    }
}

/// `*` and `?` globbing, case-insensitive (host names).
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == b'?' || p[i].eq_ignore_ascii_case(&n[j])) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == b'*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == b'*')
}

/// A private key as a `static_ssh_private_key` source holds it (OpenSSH's
/// format, or PKCS#1/#8 PEM), decrypted with `passphrase` when it is
/// encrypted. The error never holds the key.
pub fn decode_key(pem: &str, passphrase: Option<&str>) -> Result<PrivateKey, String> {
    russh::keys::decode_secret_key(pem, passphrase).map_err(|e| match e {
        russh::keys::Error::KeyIsEncrypted => "it is encrypted and no passphrase was given".into(),
        _ => "not a private key OpenSSH can read, or the passphrase is wrong".into(),
    })
}

/// The key of a `static_ssh_private_key` source.
pub fn key_from_values(values: &SourceValues) -> Result<PrivateKey, ProjectionError> {
    if values.kind != CredentialSourceKind::StaticSshPrivateKey {
        return Err(ProjectionError::SourceKind {
            kind: values.kind,
            wanted: CredentialSourceKind::StaticSshPrivateKey,
        });
    }
    let pem = values
        .values
        .get("privateKeyPem")
        .ok_or_else(|| ProjectionError::MissingValue("privateKeyPem".into()))?;
    let passphrase = values.values.get("passphrase").map(String::as_str);
    decode_key(pem, passphrase).map_err(ProjectionError::Key)
}

/// Where and as whom the proxy logs in upstream.
pub(crate) struct Upstream {
    pub(crate) dial: Dial,
    pub(crate) host: String,
    /// The binding's pins (validated with the policy: an error here is a
    /// policy written before a check).
    pub(crate) pins: Result<Pins, String>,
    /// The binding's `upstreamUsername`, else the sandbox's user.
    pub(crate) user: Option<String>,
    /// The source's key, or why there is none (the sandbox is told, on
    /// stderr).
    pub(crate) key: Result<Arc<PrivateKey>, String>,
}

/// What the audit says of a relayed connection.
#[derive(Default)]
struct Report {
    logged_in: bool,
    error: Option<String>,
}

/// Serves one sandbox SSH connection to `upstream` as its host; returns
/// once it closes.
pub(crate) async fn serve(
    client: Counted,
    identity: Option<&SshIdentity>,
    allowed: Vec<PublicKey>,
    upstream: Upstream,
) -> Outcome {
    let report = Arc::new(Mutex::new(Report::default()));
    let Some(identity) = identity else {
        return Outcome {
            logged_in: false,
            error: Some("this daemon has no SSH identity to answer with".into()),
        };
    };
    let outcome = |report: &Mutex<Report>| {
        let r = report.lock().expect("lock poisoned");
        Outcome {
            logged_in: r.logged_in,
            error: r.error.clone(),
        }
    };
    let cert = match identity.certificate(&upstream.host) {
        Ok(c) => c,
        Err(e) => {
            report.lock().expect("lock poisoned").error = Some(e.to_string());
            return outcome(&report);
        }
    };
    let config = Arc::new(server::Config {
        keys: vec![identity.host.clone()],
        certificates: vec![cert],
        methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::ZERO,
        inactivity_timeout: Some(IDLE),
        nodelay: true,
        ..Default::default()
    });
    let handler = SandboxSide {
        allowed,
        user: None,
        upstream: Arc::new(upstream),
        conn: None,
        report: report.clone(),
    };
    match server::run_stream(config, client, handler).await {
        Ok(session) => {
            if let Err(e) = session.await {
                let mut r = report.lock().expect("lock poisoned");
                r.error.get_or_insert_with(|| e.to_string());
            }
        }
        Err(e) => report.lock().expect("lock poisoned").error = Some(e.to_string()),
    }
    outcome(&report)
}

/// The sandbox's side: its key is checked, and each session channel gets
/// an upstream one on the upstream connection (made at the first).
struct SandboxSide {
    /// Placeholder keys the sandbox may use (any, when empty: the sandbox
    /// is known by its address already).
    allowed: Vec<PublicKey>,
    user: Option<String>,
    upstream: Arc<Upstream>,
    conn: Option<Arc<client::Handle<UpstreamSide>>>,
    report: Arc<Mutex<Report>>,
}

impl SandboxSide {
    fn admits(&self, key: &PublicKey) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|k| k.key_data() == key.key_data())
    }

    /// The upstream connection, logged in; why not, for the sandbox.
    async fn connection(&mut self) -> Result<Arc<client::Handle<UpstreamSide>>, String> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let up = &self.upstream;
        let key = up.key.clone()?;
        let pins = up.pins.clone()?;
        let user = up
            .user
            .clone()
            .or_else(|| self.user.clone())
            .unwrap_or_else(|| "git".into());
        let tcp = up
            .dial
            .connect()
            .await
            .map_err(|e| format!("upstream {e}"))?;
        let side = UpstreamSide {
            host: up.host.clone(),
            port: up.dial.target.port(),
            pins,
            refused: Arc::new(Mutex::new(None)),
        };
        let refused = side.refused.clone();
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(IDLE),
            nodelay: true,
            ..Default::default()
        });
        let mut handle = match client::connect_stream(config, tcp, side).await {
            Ok(h) => h,
            Err(e) => {
                let pinned = refused.lock().expect("lock poisoned").take();
                return Err(pinned.unwrap_or_else(|| format!("upstream SSH: {e}")));
            }
        };
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten();
        let auth = handle
            .authenticate_publickey(user.clone(), PrivateKeyWithHashAlg::new(key, hash))
            .await
            .map_err(|e| format!("upstream SSH login: {e}"))?;
        if !auth.success() {
            return Err(format!(
                "{} refused the source's key for user {user:?}",
                up.host
            ));
        }
        self.report.lock().expect("lock poisoned").logged_in = true;
        let conn = Arc::new(handle);
        self.conn = Some(conn.clone());
        Ok(conn)
    }
}

impl server::Handler for SandboxSide {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.admits(offer.public_key) {
            true => Auth::Accept,
            false => Auth::reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if !self.admits(key.public_key) {
            self.report.lock().expect("lock poisoned").error =
                Some("the sandbox's key is not one of the binding's sandboxPublicKeys".into());
            return Ok(Auth::reject());
        }
        self.user = Some(user.to_string());
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<ServerMsg>,
        reply: server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let up = match self.connection().await {
            Ok(conn) => conn
                .channel_open_session()
                .await
                .map_err(|e| format!("upstream SSH channel: {e}")),
            Err(why) => Err(why),
        };
        if let Err(why) = &up {
            let mut r = self.report.lock().expect("lock poisoned");
            r.error.get_or_insert_with(|| why.clone());
        }
        // Opened either way: without an upstream, the sandbox is told why
        // on the channel.
        reply.accept().await;
        tokio::spawn(relay(channel, session.handle(), up));
        Ok(())
    }
}

/// The upstream's side: its host key must be pinned.
struct UpstreamSide {
    host: String,
    port: u16,
    pins: Pins,
    /// Why the host key was refused, for the audit and the sandbox.
    refused: Arc<Mutex<Option<String>>>,
}

impl client::Handler for UpstreamSide {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(c) => PublicKey::from(c.public_key().clone()),
        };
        if self.pins.admits(&self.host, self.port, &key) {
            return Ok(true);
        }
        let shown = key.fingerprint(Default::default());
        *self.refused.lock().expect("lock poisoned") = Some(format!(
            "{}'s host key {shown} is not one the binding's knownHosts pins",
            self.host
        ));
        Ok(false)
    }
}

/// Relays one session channel: the sandbox's requests and data upstream,
/// the upstream's replies, data, exit status and close back. With no
/// upstream channel, the sandbox's first request gets why, on stderr, and
/// exit status 255.
async fn relay(
    mut down: Channel<ServerMsg>,
    handle: server::Handle,
    up: Result<Channel<client::Msg>, String>,
) {
    let id = down.id();
    let mut up = match up {
        Ok(up) => up,
        Err(why) => return refuse(&mut down, &handle, &why).await,
    };
    // Requests the sandbox wants a reply to, answered upstream in order.
    let mut pending = 0usize;
    loop {
        tokio::select! {
            m = down.wait() => {
                let Some(m) = m else { break };
                let sent = match m {
                    ChannelMsg::Data { data } => up.data_bytes(data).await,
                    ChannelMsg::ExtendedData { data, ext } => up.extended_data_bytes(ext, data).await,
                    ChannelMsg::Eof => up.eof().await,
                    ChannelMsg::Close => break,
                    ChannelMsg::Exec { want_reply, command } => {
                        pending += usize::from(want_reply);
                        up.exec(want_reply, command).await
                    }
                    ChannelMsg::RequestShell { want_reply } => {
                        pending += usize::from(want_reply);
                        up.request_shell(want_reply).await
                    }
                    ChannelMsg::RequestSubsystem { want_reply, name } => {
                        pending += usize::from(want_reply);
                        up.request_subsystem(want_reply, name).await
                    }
                    // russh reports every request as wanting a reply; OpenSSH
                    // wants none for an environment variable (and a server
                    // refuses most), so none is asked for or given.
                    ChannelMsg::SetEnv { variable_name, variable_value, .. } => {
                        up.set_env(false, variable_name, variable_value).await
                    }
                    ChannelMsg::RequestPty { want_reply, term, col_width, row_height, pix_width, pix_height, terminal_modes } => {
                        pending += usize::from(want_reply);
                        up.request_pty(want_reply, &term, col_width, row_height, pix_width, pix_height, &terminal_modes).await
                    }
                    ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height } => {
                        up.window_change(col_width, row_height, pix_width, pix_height).await
                    }
                    ChannelMsg::Signal { signal } => up.signal(signal).await,
                    // Agent and X11 forwarding would hand the upstream a way
                    // back into the sandbox: refused.
                    ChannelMsg::AgentForward { want_reply: true }
                    | ChannelMsg::RequestX11 { want_reply: true, .. } => {
                        let _ = handle.channel_failure(id).await;
                        Ok(())
                    }
                    _ => Ok(()),
                };
                if sent.is_err() {
                    break;
                }
            }
            m = up.wait() => {
                let Some(m) = m else { break };
                let sent = match m {
                    ChannelMsg::Data { data } => handle.data(id, data).await.map_err(|_| ()),
                    ChannelMsg::ExtendedData { data, ext } => handle.extended_data(id, ext, data).await.map_err(|_| ()),
                    ChannelMsg::Eof => handle.eof(id).await,
                    ChannelMsg::Close => break,
                    ChannelMsg::ExitStatus { exit_status } => handle.exit_status_request(id, exit_status).await,
                    ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag } => {
                        handle.exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag).await
                    }
                    ChannelMsg::Success if pending > 0 => {
                        pending -= 1;
                        handle.channel_success(id).await
                    }
                    ChannelMsg::Failure if pending > 0 => {
                        pending -= 1;
                        handle.channel_failure(id).await
                    }
                    _ => Ok(()),
                };
                if sent.is_err() {
                    break;
                }
            }
        }
    }
    let _ = up.close().await;
    let _ = handle.close(id).await;
}

/// Answers the sandbox's first request on a channel with no upstream:
/// accepted, then why on stderr and exit status 255, as ssh reports a
/// failed connection.
async fn refuse(down: &mut Channel<ServerMsg>, handle: &server::Handle, why: &str) {
    let id = down.id();
    while let Some(m) = down.wait().await {
        let want_reply = match m {
            ChannelMsg::Exec { want_reply, .. }
            | ChannelMsg::RequestShell { want_reply }
            | ChannelMsg::RequestSubsystem { want_reply, .. } => want_reply,
            ChannelMsg::Close => break,
            _ => continue,
        };
        if want_reply {
            let _ = handle.channel_success(id).await;
        }
        let text = format!("sandstone egress: {why}\r\n");
        let _ = handle.extended_data(id, 1, text.into_bytes()).await;
        let _ = handle.exit_status_request(id, 255).await;
        let _ = handle.eof(id).await;
        break;
    }
    let _ = handle.close(id).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_match_as_openssh_matches_them() {
        let p = |s: &str| s.parse::<HostPatterns>().unwrap();
        assert!(matches(&p("git.test,other.test"), "git.test"));
        assert!(matches(&p("*.example.com"), "git.EXAMPLE.com"));
        assert!(!matches(&p("*.example.com"), "example.com"));
        assert!(matches(&p("git?.test"), "git1.test"));
        assert!(!matches(&p("*.test,!bad.test"), "bad.test"));
        assert!(matches(&p("[git.test]:2222"), "[git.test]:2222"));
        assert!(!matches(&p("git.test"), "[git.test]:2222"));
        // `ssh-keyscan -H`'s form: HMAC-SHA1 of the name under a salt.
        let salt = b"0123456789abcdefghij";
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
        let tag = ring::hmac::sign(&key, b"git.test");
        let hashed = HostPatterns::HashedName {
            salt: salt.to_vec(),
            hash: tag.as_ref().try_into().unwrap(),
        };
        assert!(matches(&hashed, "git.test"));
        assert!(!matches(&hashed, "other.test"));
    }

    #[test]
    fn pins_admit_only_their_key_for_their_host() {
        let a = random_ed25519().unwrap();
        let b = random_ed25519().unwrap();
        let line = format!("git.test {}", a.public_key().to_openssh().unwrap());
        let pins = Pins::parse(&[line]).unwrap();
        assert!(pins.admits("git.test", 22, a.public_key()));
        assert!(!pins.admits("git.test", 22, b.public_key()));
        assert!(!pins.admits("other.test", 22, a.public_key()));
        assert!(!pins.admits("git.test", 2222, a.public_key()));
        assert!(Pins::parse(&[]).is_err());
        assert!(Pins::parse(&["git.test ssh-ed25519 not-base64".into()]).is_err());
        let ca = format!("@cert-authority * {}", a.public_key().to_openssh().unwrap());
        assert!(Pins::parse(&[ca]).unwrap_err().contains("cert-authority"));
    }

    #[test]
    fn host_certificates_are_signed_for_the_name_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id = SshIdentity::load_or_create(dir.path()).unwrap();
        let cert = id.certificate("git.test").unwrap();
        assert_eq!(cert.cert_type(), CertType::Host);
        assert_eq!(cert.valid_principals(), ["git.test"]);
        assert_eq!(cert.signature_key(), id.ca_public_key().key_data());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            cert.validate_at(now, [&id.ca_public_key().fingerprint(Default::default())])
                .is_ok()
        );
        // The same keys come back from the directory; the file sandboxes
        // get names the CA.
        let again = SshIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(again.ca_public_key(), id.ca_public_key());
        let known = std::fs::read_to_string(&id.known_hosts).unwrap();
        let line = id.ca_public_key().to_openssh().unwrap();
        assert_eq!(known, format!("@cert-authority * {line}\n"));
        let mode = std::fs::metadata(dir.path().join("ssh_ca_ed25519_key")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }
}
