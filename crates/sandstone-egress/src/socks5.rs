//! How the proxy reaches an allowed destination: directly, or through the
//! policy's customer SOCKS5 proxy (Sandbox0's `egress.proxy`, RFC 1928),
//! logging in to it with a `username_password` binding's source (RFC 1929)
//! the sandbox never holds. The sandbox does not see the SOCKS5 proxy: its
//! connections are allowed, denied, terminated and audited as always, and
//! only the proxy's own dial goes out through it.
//!
//! The destination is named to the SOCKS5 proxy by the address this proxy
//! resolved and the operator's rules allowed (never a name for it to
//! resolve), so those rules hold behind it too.

use crate::login::Login;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A dial (through the SOCKS5 proxy: its handshake too) takes at most this
/// long.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0x00;
const USERNAME_PASSWORD: u8 = 0x02;
const NO_ACCEPTABLE: u8 = 0xff;
const CONNECT: u8 = 0x01;

/// Where one allowed TCP connection goes, and through which SOCKS5 proxy,
/// if any.
#[derive(Clone)]
pub(crate) struct Dial {
    pub(crate) target: SocketAddr,
    pub(crate) via: Option<Arc<Socks5>>,
}

/// A customer SOCKS5 proxy, and the login it may ask for (with the name
/// of its source).
pub(crate) struct Socks5 {
    pub(crate) proxy: SocketAddr,
    pub(crate) login: Option<(String, Login)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{addr} unreachable: {error}")]
    Connect {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{0} did not answer within {DIAL_TIMEOUT:?}")]
    Timeout(SocketAddr),
    #[error("SOCKS5 proxy {proxy}: {why}")]
    Proxy { proxy: SocketAddr, why: Socks5Error },
}

/// What went wrong with the SOCKS5 proxy. Never holds the login.
#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a SOCKS5 server")]
    Protocol,
    #[error("it accepts none of the offered methods")]
    NoMethod,
    #[error(
        "it asks for a username and password, and the policy's egress.proxy names no credentialRef"
    )]
    LoginWanted,
    #[error("the source's username or password is longer than 255 bytes")]
    LoginTooLong,
    #[error("it refused the username and password")]
    LoginRefused,
    #[error("it did not connect: {0}")]
    Refused(&'static str),
}

impl Dial {
    /// A TCP connection to the target, through the SOCKS5 proxy if there
    /// is one.
    pub(crate) async fn connect(&self) -> Result<TcpStream, DialError> {
        let addr = self.via.as_ref().map_or(self.target, |p| p.proxy);
        let connected = async {
            let mut s = TcpStream::connect(addr)
                .await
                .map_err(|error| DialError::Connect { addr, error })?;
            let _ = s.set_nodelay(true);
            if let Some(p) = &self.via {
                p.handshake(&mut s, self.target)
                    .await
                    .map_err(|why| DialError::Proxy { proxy: addr, why })?;
            }
            Ok(s)
        };
        tokio::time::timeout(DIAL_TIMEOUT, connected)
            .await
            .map_err(|_| DialError::Timeout(addr))?
    }

    /// The SOCKS5 proxy the connection goes through, if any.
    pub(crate) fn via(&self) -> Option<SocketAddr> {
        self.via.as_ref().map(|p| p.proxy)
    }

    /// The proxy and the source of its login: connections made another
    /// way are not the same (a pooled one is not reused after either
    /// changes).
    pub(crate) fn identity(&self) -> Option<(SocketAddr, Option<String>)> {
        let p = self.via.as_ref()?;
        Some((p.proxy, p.login.as_ref().map(|(source, _)| source.clone())))
    }
}

impl Socks5 {
    /// Method selection, the login when the proxy asks for it, and a
    /// CONNECT to `target`.
    async fn handshake<S>(&self, s: &mut S, target: SocketAddr) -> Result<(), Socks5Error>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let offer: &[u8] = match self.login {
            Some(_) => &[VERSION, 2, NO_AUTH, USERNAME_PASSWORD],
            None => &[VERSION, 1, NO_AUTH],
        };
        s.write_all(offer).await?;
        let mut chosen = [0u8; 2];
        s.read_exact(&mut chosen).await?;
        if chosen[0] != VERSION {
            return Err(Socks5Error::Protocol);
        }
        match chosen[1] {
            NO_AUTH => {}
            USERNAME_PASSWORD => {
                let (_, login) = self.login.as_ref().ok_or(Socks5Error::LoginWanted)?;
                let (user, password) = (login.user.as_bytes(), login.password.as_bytes());
                let (Ok(ulen), Ok(plen)) = (u8::try_from(user.len()), u8::try_from(password.len()))
                else {
                    return Err(Socks5Error::LoginTooLong);
                };
                let mut m = vec![1, ulen];
                m.extend_from_slice(user);
                m.push(plen);
                m.extend_from_slice(password);
                s.write_all(&m).await?;
                let mut status = [0u8; 2];
                s.read_exact(&mut status).await?;
                if status[1] != 0 {
                    return Err(Socks5Error::LoginRefused);
                }
            }
            NO_ACCEPTABLE => return Err(Socks5Error::NoMethod),
            _ => return Err(Socks5Error::Protocol),
        }
        let mut req = vec![VERSION, CONNECT, 0];
        match target {
            SocketAddr::V4(a) => {
                req.push(1);
                req.extend_from_slice(&a.ip().octets());
            }
            SocketAddr::V6(a) => {
                req.push(4);
                req.extend_from_slice(&a.ip().octets());
            }
        }
        req.extend_from_slice(&target.port().to_be_bytes());
        s.write_all(&req).await?;
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await?;
        if head[0] != VERSION {
            return Err(Socks5Error::Protocol);
        }
        if head[1] != 0 {
            return Err(Socks5Error::Refused(reply_text(head[1])));
        }
        // The address the proxy bound for the connection: not needed.
        let bound = match head[3] {
            1 => 4,
            4 => 16,
            3 => usize::from(s.read_u8().await?),
            _ => return Err(Socks5Error::Protocol),
        };
        let mut skip = vec![0u8; bound + 2];
        s.read_exact(&mut skip).await?;
        Ok(())
    }
}

/// RFC 1928's reply codes.
fn reply_text(code: u8) -> &'static str {
    match code {
        1 => "general SOCKS server failure",
        2 => "connection not allowed by its ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "an unknown reply code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the handshake against a scripted server: `answers` are what it
    /// sends after each thing it reads (`reads` bytes each); returns what
    /// the client sent, and the outcome.
    async fn against(
        login: Option<(&str, &str)>,
        script: &[(usize, &[u8])],
    ) -> (Vec<u8>, Result<(), Socks5Error>) {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let p = Socks5 {
            proxy: "127.0.0.1:1080".parse().unwrap(),
            login: login.map(|(u, p)| {
                let login = Login {
                    user: u.into(),
                    password: p.into(),
                };
                ("source".to_string(), login)
            }),
        };
        let target: SocketAddr = "10.1.2.3:443".parse().unwrap();
        let script: Vec<(usize, Vec<u8>)> = script.iter().map(|(n, a)| (*n, a.to_vec())).collect();
        let serve = tokio::spawn(async move {
            let mut seen = Vec::new();
            for (n, answer) in script {
                let mut b = vec![0u8; n];
                if server.read_exact(&mut b).await.is_err() {
                    break;
                }
                seen.extend_from_slice(&b);
                server.write_all(&answer).await.unwrap();
            }
            seen
        });
        let r = p.handshake(&mut client, target).await;
        drop(client);
        (serve.await.unwrap(), r)
    }

    const CONNECTED: &[u8] = &[5, 0, 0, 1, 10, 9, 9, 9, 0x1f, 0x90];
    const CONNECT_REQ: &[u8] = &[5, 1, 0, 1, 10, 1, 2, 3, 0x01, 0xbb];

    #[tokio::test]
    async fn a_login_is_sent_only_when_asked_for() {
        let (sent, r) = against(
            Some(("user", "pw")),
            &[(4, &[5, 2]), (9, &[1, 0]), (10, CONNECTED)],
        )
        .await;
        r.unwrap();
        let mut want = vec![5, 2, 0, 2, 1, 4];
        want.extend_from_slice(b"user");
        want.push(2);
        want.extend_from_slice(b"pw");
        want.extend_from_slice(CONNECT_REQ);
        assert_eq!(sent, want);
        // A proxy taking anyone hears no login.
        let (sent, r) = against(Some(("user", "pw")), &[(4, &[5, 0]), (10, CONNECTED)]).await;
        r.unwrap();
        assert_eq!(&sent[4..], CONNECT_REQ);
    }

    #[tokio::test]
    async fn refusals_are_told_apart() {
        let (_, r) = against(Some(("u", "bad")), &[(4, &[5, 2]), (7, &[1, 1])]).await;
        assert!(matches!(r, Err(Socks5Error::LoginRefused)), "{r:?}");
        let (_, r) = against(None, &[(3, &[5, 2])]).await;
        assert!(matches!(r, Err(Socks5Error::LoginWanted)), "{r:?}");
        let (_, r) = against(None, &[(3, &[5, 0xff])]).await;
        assert!(matches!(r, Err(Socks5Error::NoMethod)), "{r:?}");
        let (_, r) = against(None, &[(3, &[5, 0]), (10, &[5, 2, 0, 1, 0, 0, 0, 0, 0, 0])]).await;
        let e = r.unwrap_err().to_string();
        assert_eq!(
            e,
            "it did not connect: connection not allowed by its ruleset"
        );
        let (_, r) = against(None, &[(3, b"HT")]).await;
        assert!(matches!(r, Err(Socks5Error::Protocol)), "{r:?}");
        let long = "x".repeat(256);
        let (_, r) = against(Some(("u", &long)), &[(4, &[5, 2])]).await;
        assert!(matches!(r, Err(Socks5Error::LoginTooLong)), "{r:?}");
    }
}
