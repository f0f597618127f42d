//! The `username_password` projection on PostgreSQL's wire protocol: the
//! sandbox connects with any user and no password; the proxy answers its
//! startup itself, logs in upstream as the source's user with its
//! password (cleartext, MD5 or SCRAM-SHA-256, over TLS when the server
//! offers it), tells the sandbox the login succeeded, and from then on
//! relays the bytes untouched. The password never crosses into the
//! sandbox; a refused login reaches it as the server's own error.

use crate::counted::Counted;
use crate::login::{LOGIN_TIMEOUT, Login, Outcome, Upstream, relay_after};
use crate::socks5::{Dial, DialError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SecureRandom;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

const PROTOCOL_3: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;
const GSS_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// The largest message read before the login is done.
const MAX_MESSAGE: usize = 64 << 10;
/// PBKDF2 rounds a server may ask for (its default is 4,096): more would
/// let an upstream make the proxy burn CPU.
const MAX_ITERATIONS: u32 = 1_000_000;

/// Why a relayed login failed (logged; the sandbox gets a PostgreSQL
/// error). Never holds the password.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("upstream {0}")]
    Dial(#[from] DialError),
    #[error("not PostgreSQL's protocol 3.0")]
    Protocol,
    #[error("a message of {0} bytes before the login")]
    TooLong(usize),
    #[error("upstream TLS: {0}")]
    Tls(std::io::Error),
    #[error("the server asks for authentication method {0}, which the proxy cannot complete")]
    Method(u32),
    #[error("SCRAM: {0}")]
    Scram(&'static str),
    #[error("the server refused the login")]
    Refused,
}

/// Serves one sandbox connection to the PostgreSQL server `dial` reaches
/// (named `host`, for TLS). `login` is the source's, or
/// why there is none (then the sandbox gets that reason as a login error).
pub(crate) async fn serve(
    mut client: Counted,
    dial: &Dial,
    host: &str,
    tls: Option<Arc<ClientConfig>>,
    login: Result<Login, String>,
) -> Outcome {
    let session = log_in(&mut client, dial, host, tls, login);
    let session = tokio::time::timeout(LOGIN_TIMEOUT, session).await;
    relay_after(&mut client, session).await
}

/// Both sides of the login; the upstream connection once it succeeded.
async fn log_in(
    client: &mut Counted,
    dial: &Dial,
    host: &str,
    tls: Option<Arc<ClientConfig>>,
    login: Result<Login, String>,
) -> Result<Upstream, PgError> {
    // The sandbox's side stays plain (it is this host's own link): SSL and
    // GSS encryption requests are declined, as a server without them does.
    let params = loop {
        let body = read_startup(client).await?;
        let code = u32::from_be_bytes(body[..4].try_into().expect("four bytes read"));
        match code {
            SSL_REQUEST | GSS_REQUEST => client.write_all(b"N").await?,
            PROTOCOL_3 => break parse_params(&body[4..])?,
            CANCEL_REQUEST => {
                // Carries only the key the server gave the session: passed on.
                let mut up = connect(dial, host, None).await?;
                write_startup(&mut up, &body).await?;
                return Ok(up);
            }
            _ => return Err(PgError::Protocol),
        }
    };
    let login = match login {
        Ok(l) => l,
        Err(reason) => {
            send_error(client, &format!("sandstone egress: {reason}")).await?;
            return Err(PgError::Refused);
        }
    };
    let mut up = connect(dial, host, tls).await?;
    // The sandbox's own user gives way to the source's; the rest (the
    // database, options, application name) is the sandbox's.
    let mut startup = PROTOCOL_3.to_be_bytes().to_vec();
    for (k, v) in params.iter().filter(|(k, _)| k != "user") {
        push_cstr(&mut startup, k);
        push_cstr(&mut startup, v);
    }
    push_cstr(&mut startup, "user");
    push_cstr(&mut startup, &login.user);
    startup.push(0);
    write_startup(&mut up, &startup).await?;
    let mut scram: Option<Scram> = None;
    loop {
        let (tag, body) = read_message(&mut up).await?;
        match tag {
            b'R' => {
                let code = body
                    .get(..4)
                    .map(|b| u32::from_be_bytes(b.try_into().expect("four bytes")))
                    .ok_or(PgError::Protocol)?;
                let rest = &body[4..];
                match code {
                    0 => break,
                    3 => {
                        let mut p = Vec::new();
                        push_cstr(&mut p, &login.password);
                        write_message(&mut up, b'p', &p).await?;
                    }
                    5 => {
                        let salt = rest.get(..4).ok_or(PgError::Protocol)?;
                        let mut p = Vec::new();
                        push_cstr(&mut p, &md5_password(&login.user, &login.password, salt));
                        write_message(&mut up, b'p', &p).await?;
                    }
                    10 => {
                        let offered = rest.split(|b| *b == 0).any(|m| m == b"SCRAM-SHA-256");
                        if !offered {
                            return Err(PgError::Method(code));
                        }
                        let s = Scram::new(&login.password)?;
                        let first = s.client_first();
                        let mut p = Vec::new();
                        push_cstr(&mut p, "SCRAM-SHA-256");
                        p.extend_from_slice(&(first.len() as i32).to_be_bytes());
                        p.extend_from_slice(first.as_bytes());
                        write_message(&mut up, b'p', &p).await?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().ok_or(PgError::Protocol)?;
                        let last = s.client_final(rest)?;
                        write_message(&mut up, b'p', last.as_bytes()).await?;
                    }
                    12 => {
                        // The server proves it knew the password too.
                        scram.as_ref().ok_or(PgError::Protocol)?.verify(rest)?;
                    }
                    other => return Err(PgError::Method(other)),
                }
            }
            // The server's own refusal, as it worded it, for the sandbox.
            b'E' => {
                write_message(client, b'E', &body).await?;
                return Err(PgError::Refused);
            }
            b'N' => write_message(client, b'N', &body).await?,
            _ => return Err(PgError::Protocol),
        }
    }
    // The sandbox never asked for a password: its login is "trust".
    write_message(client, b'R', &0u32.to_be_bytes()).await?;
    Ok(up)
}

/// A connection to the server, over TLS when it offers it (and `tls` is
/// given): its certificate must be valid for `host`.
async fn connect(
    dial: &Dial,
    host: &str,
    tls: Option<Arc<ClientConfig>>,
) -> Result<Upstream, PgError> {
    let mut tcp = dial.connect().await?;
    let Some(cfg) = tls else {
        return Ok(BufReader::new(Box::new(tcp)));
    };
    let mut req = 8u32.to_be_bytes().to_vec();
    req.extend_from_slice(&SSL_REQUEST.to_be_bytes());
    tcp.write_all(&req).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Ok(BufReader::new(Box::new(tcp)));
    }
    let name = ServerName::try_from(host.to_string()).map_err(|_| PgError::Protocol)?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(PgError::Tls)?;
    Ok(BufReader::new(Box::new(tls)))
}

async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, PgError> {
    let len = r.read_u32().await? as usize;
    if !(8..=MAX_MESSAGE).contains(&len) {
        return Err(PgError::TooLong(len));
    }
    let mut body = vec![0; len - 4];
    r.read_exact(&mut body).await?;
    Ok(body)
}

async fn write_startup<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> Result<(), PgError> {
    let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    m.extend_from_slice(body);
    w.write_all(&m).await?;
    Ok(w.flush().await?)
}

async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> Result<(u8, Vec<u8>), PgError> {
    let tag = r.read_u8().await?;
    let len = r.read_u32().await? as usize;
    if !(4..=MAX_MESSAGE).contains(&len) {
        return Err(PgError::TooLong(len));
    }
    let mut body = vec![0; len - 4];
    r.read_exact(&mut body).await?;
    Ok((tag, body))
}

async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    tag: u8,
    body: &[u8],
) -> Result<(), PgError> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    w.write_all(&m).await?;
    Ok(w.flush().await?)
}

/// A FATAL `invalid_authorization_specification` error, as a server
/// refusing a login sends.
async fn send_error<W: AsyncWrite + Unpin>(w: &mut W, message: &str) -> Result<(), PgError> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "28000"),
        (b'M', message),
    ] {
        body.push(field);
        push_cstr(&mut body, value);
    }
    body.push(0);
    write_message(w, b'E', &body).await
}

fn push_cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A startup message's parameters (`key\0value\0…\0`).
fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, PgError> {
    let mut fields = body.split(|b| *b == 0);
    let mut out = Vec::new();
    loop {
        let key = fields.next().ok_or(PgError::Protocol)?;
        if key.is_empty() {
            return Ok(out);
        }
        let value = fields.next().ok_or(PgError::Protocol)?;
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| PgError::Protocol);
        out.push((text(key)?, text(value)?));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `md5` + md5(md5(password + user) + salt), in hex.
fn md5_password(user: &str, password: &str, salt: &[u8]) -> String {
    use md5::{Digest, Md5};
    let inner = hex(&Md5::digest(format!("{password}{user}").as_bytes()));
    let mut outer = Md5::new();
    outer.update(inner.as_bytes());
    outer.update(salt);
    format!("md5{}", hex(&outer.finalize()))
}

/// One SCRAM-SHA-256 exchange (RFC 5802, RFC 7677), without channel
/// binding (`n,,`), as libpq does without TLS.
struct Scram {
    password: String,
    nonce: String,
    /// The client-final message without its proof, and the server
    /// signature expected, once the server's first message came.
    expected: Option<[u8; 32]>,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), data);
    tag.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

impl Scram {
    fn new(password: &str) -> Result<Scram, PgError> {
        let mut raw = [0u8; 18];
        ring::rand::SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| PgError::Scram("no randomness for a nonce"))?;
        Ok(Scram {
            password: password.to_string(),
            nonce: B64.encode(raw),
            expected: None,
        })
    }

    fn client_first_bare(&self) -> String {
        // The user is the startup message's: SCRAM's is left empty.
        format!("n=,r={}", self.nonce)
    }

    fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare())
    }

    /// The client-final message for the server-first `server`.
    fn client_final(&mut self, server: &[u8]) -> Result<String, PgError> {
        let server = std::str::from_utf8(server).map_err(|_| PgError::Scram("not text"))?;
        let attr = |k: &str| {
            server
                .split(',')
                .find_map(|a| a.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
        };
        let nonce = attr("r").ok_or(PgError::Scram("no nonce"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(PgError::Scram("the server's nonce does not extend ours"));
        }
        let salt = attr("s")
            .and_then(|s| B64.decode(s).ok())
            .ok_or(PgError::Scram("no salt"))?;
        let rounds = attr("i")
            .and_then(|i| i.parse::<u32>().ok())
            .filter(|i| (1..=MAX_ITERATIONS).contains(i))
            .and_then(std::num::NonZeroU32::new)
            .ok_or(PgError::Scram("iteration count missing or out of range"))?;
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            rounds,
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = ring::digest::digest(&ring::digest::SHA256, &client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{},{server},{without_proof}", self.client_first_bare());
        let signature = hmac(stored_key.as_ref(), auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        self.expected = Some(hmac(&hmac(&salted, b"Server Key"), auth.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final message's signature.
    fn verify(&self, server: &[u8]) -> Result<(), PgError> {
        let expected = self.expected.ok_or(PgError::Scram("out of order"))?;
        let got = std::str::from_utf8(server)
            .ok()
            .and_then(|s| s.strip_prefix("v="))
            .and_then(|v| B64.decode(v.trim_end_matches('\0')).ok())
            .ok_or(PgError::Scram("no server signature"))?;
        // Public values (the server proves itself): no secret to time.
        if got == expected {
            Ok(())
        } else {
            Err(PgError::Scram("the server's signature is wrong"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_matches_rfc_7677s_example() {
        // RFC 7677 section 3, with its user "user" and password "pencil".
        let mut s = Scram {
            password: "pencil".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO".into(),
            expected: None,
        };
        // The RFC's client-first-bare names the user; ours leaves it to
        // the startup message, so the example's bare is rebuilt here.
        let server = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let last = s.client_final(server).unwrap();
        assert!(last.starts_with("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p="));
        // A nonce the server did not extend, or too many rounds, is refused.
        let bad = b"r=other,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert!(s.client_final(bad).is_err());
        let costly = b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999";
        assert!(s.client_final(costly).is_err());
        assert!(s.verify(b"v=AAAA").is_err());
    }

    #[test]
    fn scram_proof_and_signature_match_the_rfc_with_its_user() {
        // RFC 7677's full exchange, computing with its client-first-bare.
        let password = "pencil";
        let first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(4096).unwrap(),
            &B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
            password.as_bytes(),
            &mut salted,
        );
        let auth = format!("{first_bare},{server},{without_proof}");
        let client_key = hmac(&salted, b"Client Key");
        let stored = ring::digest::digest(&ring::digest::SHA256, &client_key);
        let sig = hmac(stored.as_ref(), auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(k, s)| k ^ s).collect();
        assert_eq!(
            B64.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let server_sig = hmac(&hmac(&salted, b"Server Key"), auth.as_bytes());
        assert_eq!(
            B64.encode(server_sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn md5_passwords_are_postgres_own() {
        // PostgreSQL's "md5" || md5(md5(password || user) || salt), as
        // Python's hashlib computes it.
        assert_eq!(
            md5_password("app", "secret", &[1, 2, 3, 4]),
            "md5911f527656472583a006e7727877b33e"
        );
        assert!(
            !format!(
                "{:?}",
                Login {
                    user: "app".into(),
                    password: "secret".into()
                }
            )
            .contains("secret")
        );
    }

    #[test]
    fn startup_parameters_are_parsed_whole_or_refused() {
        let params = parse_params(b"user\0sandbox\0database\0db\0\0").unwrap();
        assert_eq!(
            params,
            [
                ("user".into(), "sandbox".into()),
                ("database".into(), "db".into())
            ]
        );
        assert!(parse_params(b"user\0").is_err());
        assert!(parse_params(b"user\0\xff\0\0").is_err());
    }
}
