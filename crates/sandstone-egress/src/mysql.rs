//! The `username_password` projection on MySQL's (and MariaDB's) protocol.
//! The server speaks first: the proxy connects upstream, reads its greeting
//! and gives the sandbox the same greeting without TLS or compression (this
//! host-local link stays plain). The sandbox answers with any user and
//! password; the proxy logs in upstream as the source's user with its
//! password (`mysql_native_password`, or `caching_sha2_password`: its fast
//! path, and its full one over TLS), over TLS when the server offers it,
//! keeping the sandbox's capabilities, database and connection attributes.
//! The sandbox gets the server's OK, or its error, and from then on the
//! bytes are relayed untouched. The password never crosses into the
//! sandbox.

use crate::counted::Counted;
use crate::login::{LOGIN_TIMEOUT, Login, Outcome, Stream, Upstream, relay_after};
use crate::socks5::{Dial, DialError};
use ring::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY, SHA256, digest};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

const CLIENT_CONNECT_WITH_DB: u32 = 1 << 3;
const CLIENT_COMPRESS: u32 = 1 << 5;
const CLIENT_PROTOCOL_41: u32 = 1 << 9;
const CLIENT_SSL: u32 = 1 << 11;
const CLIENT_SECURE_CONNECTION: u32 = 1 << 15;
const CLIENT_PLUGIN_AUTH: u32 = 1 << 19;
const CLIENT_CONNECT_ATTRS: u32 = 1 << 20;
const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 1 << 21;
const CLIENT_ZSTD_COMPRESSION_ALGORITHM: u32 = 1 << 26;
/// What the sandbox is never offered: this link stays plain and
/// uncompressed (a compressed stream could not be relayed as it is).
const WITHHELD: u32 = CLIENT_SSL | CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION_ALGORITHM;
/// The largest packet read before the login is done.
const MAX_PACKET: usize = 64 << 10;

const NATIVE: &[u8] = b"mysql_native_password";
const CACHING_SHA2: &[u8] = b"caching_sha2_password";
const CLEAR: &[u8] = b"mysql_clear_password";
const SHA256_PASSWORD: &[u8] = b"sha256_password";

/// Why a relayed login failed. Never holds the password.
#[derive(Debug, thiserror::Error)]
pub enum MysqlError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("upstream {0}")]
    Dial(#[from] DialError),
    #[error("not MySQL's protocol 4.1")]
    Protocol,
    #[error("a packet of {0} bytes before the login")]
    TooLong(usize),
    #[error("upstream TLS: {0}")]
    Tls(std::io::Error),
    #[error("the server asks for {0}, which the proxy cannot complete")]
    Method(String),
    #[error("the server refused the login")]
    Refused,
    #[error("no login to give: {0}")]
    NoLogin(String),
}

/// Serves one sandbox connection to the MySQL server `dial` reaches (named
/// `host`, for TLS). `login` is the source's, or why there is none (then
/// the sandbox gets that reason as an access-denied error).
pub(crate) async fn serve(
    mut client: Counted,
    dial: &Dial,
    host: &str,
    tls: Option<Arc<ClientConfig>>,
    login: Result<Login, String>,
) -> Outcome {
    let session = async {
        let up: Box<dyn Stream> = Box::new(dial.connect().await?);
        log_in(&mut client, up, host, tls, login).await
    };
    let session = tokio::time::timeout(LOGIN_TIMEOUT, session).await;
    relay_after(&mut client, session).await
}

/// One packet: its sequence number and payload.
struct Packet {
    seq: u8,
    payload: Vec<u8>,
}

async fn read_packet<R: AsyncRead + Unpin>(r: &mut R) -> Result<Packet, MysqlError> {
    let mut head = [0u8; 4];
    r.read_exact(&mut head).await?;
    let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
    if len > MAX_PACKET {
        return Err(MysqlError::TooLong(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Packet {
        seq: head[3],
        payload,
    })
}

async fn write_packet<W: AsyncWrite + Unpin>(
    w: &mut W,
    seq: u8,
    payload: &[u8],
) -> Result<(), MysqlError> {
    let len = payload.len() as u32;
    let mut m = len.to_le_bytes()[..3].to_vec();
    m.push(seq);
    m.extend_from_slice(payload);
    w.write_all(&m).await?;
    Ok(w.flush().await?)
}

/// An ERR packet (`ER_ACCESS_DENIED_ERROR`, SQLSTATE 28000), as a server
/// refusing a login sends.
fn access_denied(message: &str) -> Vec<u8> {
    let mut p = vec![0xff];
    p.extend_from_slice(&1045u16.to_le_bytes());
    p.extend_from_slice(b"#28000");
    p.extend_from_slice(message.as_bytes());
    p
}

/// The server's greeting (protocol 10), with where its capability flags
/// sit so they can be changed in place.
struct Greeting {
    payload: Vec<u8>,
    caps: u32,
    /// Offsets of the lower and upper two bytes of the capability flags.
    caps_at: (usize, usize),
    salt: Vec<u8>,
    plugin: Vec<u8>,
}

impl Greeting {
    fn parse(payload: Vec<u8>) -> Result<Greeting, MysqlError> {
        let bad = || MysqlError::Protocol;
        if payload.first() != Some(&10) {
            return Err(bad());
        }
        // Version (NUL-ended), connection id, 8 bytes of salt, a filler.
        let version_end = 1 + payload[1..].iter().position(|b| *b == 0).ok_or_else(bad)?;
        let salt1 = version_end + 1 + 4;
        let lower = salt1 + 8 + 1;
        // Then the character set, the status, the upper flags, the salt's
        // length and ten reserved bytes.
        let upper = lower + 2 + 1 + 2;
        let rest = upper + 2 + 1 + 10;
        let get = |at: usize, n: usize| payload.get(at..at + n).ok_or_else(bad);
        let caps = u32::from(u16::from_le_bytes(
            get(lower, 2)?.try_into().map_err(|_| bad())?,
        )) | u32::from(u16::from_le_bytes(
            get(upper, 2)?.try_into().map_err(|_| bad())?,
        )) << 16;
        if caps & CLIENT_PROTOCOL_41 == 0 || caps & CLIENT_SECURE_CONNECTION == 0 {
            return Err(bad());
        }
        let salt_len = usize::from(*payload.get(upper + 2).ok_or_else(bad)?);
        let part2 = salt_len.saturating_sub(8).max(13);
        let mut salt = get(salt1, 8)?.to_vec();
        salt.extend_from_slice(get(rest, part2)?);
        // The second part ends with a NUL that is not salt.
        salt.truncate(20);
        let plugin = match caps & CLIENT_PLUGIN_AUTH {
            0 => NATIVE.to_vec(),
            _ => {
                let name = payload.get(rest + part2..).unwrap_or_default();
                name.split(|b| *b == 0).next().unwrap_or_default().to_vec()
            }
        };
        Ok(Greeting {
            payload,
            caps,
            caps_at: (lower, upper),
            salt,
            plugin,
        })
    }

    /// The same greeting with other capability flags.
    fn with_caps(&self, caps: u32) -> Vec<u8> {
        let mut p = self.payload.clone();
        let (lower, upper) = self.caps_at;
        p[lower..lower + 2].copy_from_slice(&(caps as u16).to_le_bytes());
        p[upper..upper + 2].copy_from_slice(&((caps >> 16) as u16).to_le_bytes());
        p
    }
}

/// What the sandbox's handshake response carries on: its capabilities,
/// the fixed fields, its database and what follows the plugin name
/// (connection attributes and later extensions), as sent.
struct Response {
    caps: u32,
    /// Maximum packet size, character set and the 23 reserved bytes
    /// (MariaDB keeps its extended capabilities in their last four).
    fixed: Vec<u8>,
    database: Option<Vec<u8>>,
    tail: Vec<u8>,
}

/// A length-encoded integer at `at`: its value and the bytes it took.
fn lenenc(p: &[u8], at: usize) -> Option<(usize, usize)> {
    let first = *p.get(at)?;
    let wide = |n: usize| {
        let bytes = p.get(at + 1..at + 1 + n)?;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(bytes);
        usize::try_from(u64::from_le_bytes(v))
            .ok()
            .map(|v| (v, 1 + n))
    };
    match first {
        0..=0xfa => Some((usize::from(first), 1)),
        0xfc => wide(2),
        0xfd => wide(3),
        0xfe => wide(8),
        _ => None,
    }
}

fn push_lenenc(out: &mut Vec<u8>, n: usize) {
    match n {
        0..=0xfa => out.push(n as u8),
        0xfb..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        _ => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
    }
}

impl Response {
    fn parse(p: &[u8]) -> Result<Response, MysqlError> {
        let bad = || MysqlError::Protocol;
        let caps = u32::from_le_bytes(p.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        if caps & CLIENT_PROTOCOL_41 == 0 || p.len() <= 32 {
            // An old client, or a TLS request (it was not offered).
            return Err(bad());
        }
        let fixed = p[4..32].to_vec();
        let nul = |at: usize| -> Result<usize, MysqlError> {
            Ok(at
                + p.get(at..)
                    .ok_or_else(bad)?
                    .iter()
                    .position(|b| *b == 0)
                    .ok_or_else(bad)?)
        };
        // The sandbox's user and password answer are dropped.
        let mut at = nul(32)? + 1;
        at += if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            let (len, took) = lenenc(p, at).ok_or_else(bad)?;
            took + len
        } else {
            1 + usize::from(*p.get(at).ok_or_else(bad)?)
        };
        let mut database = None;
        if caps & CLIENT_CONNECT_WITH_DB != 0 && at < p.len() {
            let end = nul(at)?;
            database = Some(p[at..end].to_vec());
            at = end + 1;
        }
        if caps & CLIENT_PLUGIN_AUTH != 0 && at < p.len() {
            at = nul(at)? + 1;
        }
        let tail = p.get(at..).ok_or_else(bad)?.to_vec();
        if caps & CLIENT_CONNECT_ATTRS != 0 && !tail.is_empty() {
            let (len, took) = lenenc(&tail, 0).ok_or_else(bad)?;
            if took + len > tail.len() {
                return Err(bad());
            }
        }
        Ok(Response {
            caps,
            fixed,
            database,
            tail,
        })
    }

    /// The response upstream: the sandbox's, with the source's user, its
    /// `answer` for `plugin`, and `caps`.
    fn upstream(&self, caps: u32, login: &Login, plugin: &[u8], answer: &[u8]) -> Vec<u8> {
        let mut out = caps.to_le_bytes().to_vec();
        out.extend_from_slice(&self.fixed);
        out.extend_from_slice(login.user.as_bytes());
        out.push(0);
        if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            push_lenenc(&mut out, answer.len());
        } else {
            out.push(answer.len() as u8);
        }
        out.extend_from_slice(answer);
        if let Some(db) = &self.database {
            out.extend_from_slice(db);
            out.push(0);
        }
        if caps & CLIENT_PLUGIN_AUTH != 0 {
            out.extend_from_slice(plugin);
            out.push(0);
        }
        out.extend_from_slice(&self.tail);
        out
    }
}

fn sha(alg: &'static ring::digest::Algorithm, parts: &[&[u8]]) -> Vec<u8> {
    let mut c = Context::new(alg);
    for p in parts {
        c.update(p);
    }
    c.finish().as_ref().to_vec()
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// The answer to a salt for a challenge-response plugin: `None` for a
/// plugin that is not one (it needs the password itself).
fn scramble(plugin: &[u8], password: &str, salt: &[u8]) -> Option<Vec<u8>> {
    let pw = password.as_bytes();
    let salt = &salt[..salt.len().min(20)];
    match plugin {
        _ if pw.is_empty() => Some(Vec::new()),
        // SHA1(pw) ^ SHA1(salt + SHA1(SHA1(pw))): the server keeps SHA1(SHA1(pw)).
        NATIVE => {
            let alg = &SHA1_FOR_LEGACY_USE_ONLY;
            let h1 = sha(alg, &[pw]);
            let h2 = sha(alg, &[&h1]);
            Some(xor(&h1, &sha(alg, &[salt, &h2])))
        }
        // SHA256(pw) ^ SHA256(SHA256(SHA256(pw)) + salt).
        CACHING_SHA2 => {
            let h1 = digest(&SHA256, pw);
            let h2 = digest(&SHA256, h1.as_ref());
            Some(xor(h1.as_ref(), &sha(&SHA256, &[h2.as_ref(), salt])))
        }
        _ => None,
    }
}

/// Both sides of the login over `up`; the upstream connection once it
/// succeeded.
async fn log_in<C>(
    client: &mut C,
    up: Box<dyn Stream>,
    host: &str,
    tls: Option<Arc<ClientConfig>>,
    login: Result<Login, String>,
) -> Result<Upstream, MysqlError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = BufReader::new(up);
    let greeting = read_packet(&mut up).await?;
    if greeting.payload.first() == Some(&0xff) {
        // The server turned the connection away (too many, say).
        write_packet(client, 0, &greeting.payload).await?;
        return Err(MysqlError::Refused);
    }
    let greeting = Greeting::parse(greeting.payload)?;
    write_packet(client, 0, &greeting.with_caps(greeting.caps & !WITHHELD)).await?;
    let answer = read_packet(client).await?;
    let response = Response::parse(&answer.payload)?;
    let login = match login {
        Ok(l) => l,
        Err(why) => {
            let refusal = access_denied(&format!("sandstone egress: {why}"));
            write_packet(client, answer.seq.wrapping_add(1), &refusal).await?;
            return Err(MysqlError::NoLogin(why));
        }
    };
    let mut caps = (response.caps & greeting.caps & !WITHHELD)
        | CLIENT_PROTOCOL_41
        | CLIENT_SECURE_CONNECTION
        | (greeting.caps & CLIENT_PLUGIN_AUTH);
    if response.tail.is_empty() {
        caps &= !CLIENT_CONNECT_ATTRS;
    }
    if response.database.is_none() {
        caps &= !CLIENT_CONNECT_WITH_DB;
    }
    let mut seq = 1u8;
    let mut secure = false;
    if let Some(cfg) = tls.filter(|_| greeting.caps & CLIENT_SSL != 0) {
        caps |= CLIENT_SSL;
        // A TLS request: the response's first 32 bytes, alone.
        let mut request = caps.to_le_bytes().to_vec();
        request.extend_from_slice(&response.fixed);
        write_packet(&mut up, seq, &request).await?;
        seq += 1;
        let name = ServerName::try_from(host.to_string()).map_err(|_| MysqlError::Protocol)?;
        let tcp = up.into_inner();
        let stream = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(MysqlError::Tls)?;
        up = BufReader::new(Box::new(stream));
        secure = true;
    }
    let mut plugin = greeting.plugin.clone();
    // A plugin that wants the password itself gets it over TLS; else an
    // empty answer, and the server says what it wants next.
    let first = scramble(&plugin, &login.password, &greeting.salt)
        .or_else(|| cleartext(&plugin, &login, secure).ok())
        .unwrap_or_default();
    let first = response.upstream(caps, &login, &plugin, &first);
    write_packet(&mut up, seq, &first).await?;
    loop {
        let reply = read_packet(&mut up).await?;
        let next = reply.seq.wrapping_add(1);
        match reply.payload.first() {
            Some(0x00) => {
                write_packet(client, answer.seq.wrapping_add(1), &reply.payload).await?;
                return Ok(up);
            }
            Some(0xff) => {
                write_packet(client, answer.seq.wrapping_add(1), &reply.payload).await?;
                return Err(MysqlError::Refused);
            }
            // Another plugin, with a salt of its own.
            Some(0xfe) => {
                let body = &reply.payload[1..];
                let end = body
                    .iter()
                    .position(|b| *b == 0)
                    .ok_or(MysqlError::Protocol)?;
                plugin = body[..end].to_vec();
                let mut salt = body[end + 1..].to_vec();
                if salt.last() == Some(&0) {
                    salt.pop();
                }
                let data = match scramble(&plugin, &login.password, &salt) {
                    Some(data) => data,
                    None => cleartext(&plugin, &login, secure)?,
                };
                write_packet(&mut up, next, &data).await?;
            }
            // caching_sha2_password: 3, the fast path worked (an OK
            // follows); 4, the password is wanted.
            Some(0x01) if plugin == CACHING_SHA2 => match reply.payload.get(1) {
                Some(3) => {}
                Some(4) => {
                    write_packet(&mut up, next, &cleartext(&plugin, &login, secure)?).await?
                }
                _ => return Err(MysqlError::Protocol),
            },
            _ => return Err(MysqlError::Protocol),
        }
    }
}

/// The password itself (NUL-ended), for a plugin that wants it: only over
/// TLS to the server.
fn cleartext(plugin: &[u8], login: &Login, secure: bool) -> Result<Vec<u8>, MysqlError> {
    let known = [CACHING_SHA2, CLEAR, SHA256_PASSWORD].contains(&plugin);
    if !known || !secure {
        let name = String::from_utf8_lossy(plugin);
        return Err(MysqlError::Method(match known {
            true => format!("{name} with the password in full, which needs TLS to the server"),
            false => format!("the {name} plugin"),
        }));
    }
    let mut p = login.password.as_bytes().to_vec();
    p.push(0);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the server keeps, and checks an answer against: its
    /// `mysql_native_password` check, done the server's way.
    fn native_server_accepts(password: &str, salt: &[u8], answer: &[u8]) -> bool {
        let alg = &SHA1_FOR_LEGACY_USE_ONLY;
        let stored = sha(alg, &[&sha(alg, &[password.as_bytes()])]);
        let h1 = xor(answer, &sha(alg, &[salt, &stored]));
        sha(alg, &[&h1]) == stored
    }

    /// `caching_sha2_password`'s fast-path check, the server's way.
    fn sha2_server_accepts(password: &str, salt: &[u8], answer: &[u8]) -> bool {
        let stored = sha(&SHA256, &[&sha(&SHA256, &[password.as_bytes()])]);
        let h1 = xor(answer, &sha(&SHA256, &[&stored, salt]));
        sha(&SHA256, &[&h1]) == stored
    }

    #[test]
    fn answers_pass_the_servers_own_checks() {
        let salt = b"0123456789abcdefghij";
        let a = scramble(NATIVE, "s3cret", salt).unwrap();
        assert_eq!(a.len(), 20);
        assert!(native_server_accepts("s3cret", salt, &a));
        assert!(!native_server_accepts("other", salt, &a));
        let a = scramble(CACHING_SHA2, "s3cret", salt).unwrap();
        assert_eq!(a.len(), 32);
        assert!(sha2_server_accepts("s3cret", salt, &a));
        assert!(!sha2_server_accepts("s3cret", b"0123456789abcdefghiX", &a));
        assert_eq!(scramble(NATIVE, "", salt), Some(Vec::new()));
        assert_eq!(scramble(CLEAR, "s3cret", salt), None);
    }

    /// A MariaDB 10.11 greeting (native password, TLS and compression
    /// offered).
    fn greeting() -> Vec<u8> {
        let caps: u32 = 0xfffe | (0x81bf << 16);
        let mut g = vec![10];
        g.extend_from_slice(b"5.5.5-10.11.19-MariaDB\0");
        g.extend_from_slice(&7u32.to_le_bytes());
        g.extend_from_slice(b"saltsalt\0");
        g.extend_from_slice(&(caps as u16).to_le_bytes());
        g.extend_from_slice(&[45, 2, 0]);
        g.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        g.push(21);
        g.extend_from_slice(&[0; 6]);
        g.extend_from_slice(&[0x1d, 0, 0, 0]);
        g.extend_from_slice(b"morsaltmorsa\0");
        g.extend_from_slice(b"mysql_native_password\0");
        g
    }

    #[test]
    fn the_greeting_is_read_and_loses_tls_and_compression() {
        let g = Greeting::parse(greeting()).unwrap();
        assert_eq!(g.salt, b"saltsaltmorsaltmorsa");
        assert_eq!(g.plugin, NATIVE);
        assert!(g.caps & CLIENT_SSL != 0 && g.caps & CLIENT_COMPRESS != 0);
        let shown = Greeting::parse(g.with_caps(g.caps & !WITHHELD)).unwrap();
        assert_eq!(shown.caps, g.caps & !WITHHELD);
        assert_eq!(shown.salt, g.salt);
        // MariaDB's extended capabilities (the reserved bytes) are kept.
        assert_eq!(
            shown.payload[shown.payload.len() - 40..],
            g.payload[g.payload.len() - 40..]
        );
        assert!(Greeting::parse(vec![9, 0]).is_err());
        assert!(Greeting::parse(greeting()[..30].to_vec()).is_err());
    }

    type Duplex = tokio::io::DuplexStream;

    /// The proxy logging in as `app` (`s3cret`, no TLS) between a sandbox
    /// and a server, both the test's: its task, and the two other ends.
    fn proxy_between() -> (
        tokio::task::JoinHandle<Result<(), MysqlError>>,
        Duplex,
        Duplex,
    ) {
        let (sandbox, mut proxy_side) = tokio::io::duplex(1 << 16);
        let (up, server) = tokio::io::duplex(1 << 16);
        let login = Login {
            user: "app".into(),
            password: "s3cret".into(),
        };
        let proxy = tokio::spawn(async move {
            log_in(&mut proxy_side, Box::new(up), "db.test", None, Ok(login))
                .await
                .map(|_| ())
        });
        (proxy, sandbox, server)
    }

    #[tokio::test]
    async fn a_login_switching_plugin_is_completed_and_the_sandbox_sees_ok() {
        let (proxy, mut sandbox, mut server) = proxy_between();
        let server = tokio::spawn(async move {
            write_packet(&mut server, 0, &greeting()).await.unwrap();
            let response = read_packet(&mut server).await.unwrap();
            assert_eq!(response.seq, 1);
            let p = &response.payload;
            // The source's user, the sandbox's database and attributes.
            assert!(p.windows(4).any(|w| w == b"app\0"), "{p:?}");
            assert!(p.windows(7).any(|w| w == b"orders\0"), "{p:?}");
            assert!(p.ends_with(b"\x05\x01k\x02vv"), "{p:?}");
            assert!(!p.windows(11).any(|w| w == b"placeholder"));
            let caps = u32::from_le_bytes(p[..4].try_into().unwrap());
            assert_eq!(caps & WITHHELD, 0);
            // Switch to caching_sha2_password with a new salt, then the
            // fast path's success and an OK.
            let salt = b"ABCDEFGHIJKLMNOPQRST";
            let mut switch = vec![0xfe];
            switch.extend_from_slice(b"caching_sha2_password\0");
            switch.extend_from_slice(salt);
            switch.push(0);
            write_packet(&mut server, 2, &switch).await.unwrap();
            let answer = read_packet(&mut server).await.unwrap();
            assert_eq!(answer.seq, 3);
            assert!(sha2_server_accepts("s3cret", salt, &answer.payload));
            write_packet(&mut server, 4, &[0x01, 3]).await.unwrap();
            write_packet(&mut server, 5, &[0, 0, 0, 2, 0, 0, 0])
                .await
                .unwrap();
        });
        let g = read_packet(&mut sandbox).await.unwrap();
        let shown = Greeting::parse(g.payload).unwrap();
        assert_eq!(shown.caps & WITHHELD, 0);
        let caps = (shown.caps & !WITHHELD) | CLIENT_CONNECT_WITH_DB | CLIENT_CONNECT_ATTRS;
        let mut r = caps.to_le_bytes().to_vec();
        r.extend_from_slice(&[0, 0, 0, 1, 45]);
        r.extend_from_slice(&[0; 23]);
        r.extend_from_slice(b"sandbox\0");
        r.push(11);
        r.extend_from_slice(b"placeholder");
        r.extend_from_slice(b"orders\0mysql_native_password\0");
        r.extend_from_slice(b"\x05\x01k\x02vv");
        write_packet(&mut sandbox, 1, &r).await.unwrap();
        let ok = read_packet(&mut sandbox).await.unwrap();
        assert_eq!((ok.seq, ok.payload[0]), (2, 0));
        server.await.unwrap();
        proxy.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_full_path_of_caching_sha2_needs_tls() {
        let (proxy, mut sandbox, mut server) = proxy_between();
        let mut g = greeting();
        let at = g.len() - b"mysql_native_password\0".len();
        g.truncate(at);
        g.extend_from_slice(b"caching_sha2_password\0");
        write_packet(&mut server, 0, &g).await.unwrap();
        let g = read_packet(&mut sandbox).await.unwrap();
        let shown = Greeting::parse(g.payload).unwrap();
        let caps = shown.caps & !WITHHELD & !CLIENT_CONNECT_WITH_DB;
        let mut r = caps.to_le_bytes().to_vec();
        r.extend_from_slice(&[0; 28]);
        r.extend_from_slice(b"sandbox\0\0caching_sha2_password\0");
        write_packet(&mut sandbox, 1, &r).await.unwrap();
        let response = read_packet(&mut server).await.unwrap();
        assert_eq!(response.seq, 1);
        write_packet(&mut server, 2, &[0x01, 4]).await.unwrap();
        let e = proxy.await.unwrap().unwrap_err().to_string();
        assert!(e.contains("needs TLS"), "{e}");
    }
}
