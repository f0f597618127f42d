//! Logins the proxy completes upstream with a `static_username_password`
//! source the sandbox never holds: PostgreSQL's (`postgres.rs`), MySQL's
//! (`mysql.rs`), Redis's `AUTH` (`redis.rs`) and a customer SOCKS5
//! proxy's (`socks5.rs`). Each protocol answers the sandbox's side itself,
//! logs in upstream, and from then on relays the bytes untouched.

use crate::credentials::{ProjectionError, SourceValues};
use sandstone_api::CredentialSourceKind;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// An upstream connection, plain or TLS.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
/// Buffered: a login reads the server's messages piece by piece, and what
/// the buffer holds past the login is relayed from it.
pub(crate) type Upstream = tokio::io::BufReader<Box<dyn Stream>>;

/// A login (both sides, TLS included) takes at most this long.
pub(crate) const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

/// The source's login. Never printed.
pub struct Login {
    pub user: String,
    pub password: String,
}

impl Login {
    /// From a `static_username_password` source's values.
    pub fn from_values(values: &SourceValues) -> Result<Login, ProjectionError> {
        if values.kind != CredentialSourceKind::StaticUsernamePassword {
            return Err(ProjectionError::SourceKind {
                kind: values.kind,
                wanted: CredentialSourceKind::StaticUsernamePassword,
            });
        }
        let value = |k: &str| {
            values
                .values
                .get(k)
                .cloned()
                .ok_or_else(|| ProjectionError::MissingValue(k.to_string()))
        };
        Ok(Login {
            user: value("username")?,
            password: value("password")?,
        })
    }
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Login([redacted])")
    }
}

/// How a sandbox's connection with a login ended: whether the login
/// succeeded, and the error that ended it, if any. The error never holds
/// the password.
pub struct Outcome {
    pub logged_in: bool,
    pub error: Option<String>,
}

/// Ends a sandbox's connection after its login (`session`, bounded by
/// [`LOGIN_TIMEOUT`]): once it gave the upstream connection, relays both
/// ways until either side closes.
pub(crate) async fn relay_after<C, U, E>(
    client: &mut C,
    session: Result<Result<U, E>, tokio::time::error::Elapsed>,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    E: std::fmt::Display,
{
    match session {
        Ok(Ok(mut upstream)) => Outcome {
            logged_in: true,
            error: tokio::io::copy_bidirectional(client, &mut upstream)
                .await
                .err()
                .map(|e| e.to_string()),
        },
        Ok(Err(e)) => Outcome {
            logged_in: false,
            error: Some(e.to_string()),
        },
        Err(_) => Outcome {
            logged_in: false,
            error: Some(format!("the login took longer than {LOGIN_TIMEOUT:?}")),
        },
    }
}
