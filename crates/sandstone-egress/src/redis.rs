//! The `username_password` projection on Redis (protocol `redis`): the
//! sandbox connects with no password, or with any placeholder; the proxy
//! logs in upstream as the source's user. A sandbox opening with `AUTH` or
//! `HELLO` has that command sent on with the source's login in place of
//! its own (and gets the server's answer); one opening with anything else
//! has the proxy's own `AUTH` go first, its answer kept from the sandbox
//! unless it is a refusal. From then on the bytes are relayed untouched: a
//! later `AUTH` from the sandbox reaches the server as it wrote it, and
//! fails.

use crate::counted::Counted;
use crate::login::{LOGIN_TIMEOUT, Login, Outcome, relay_after};
use crate::socks5::{Dial, DialError};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The most a login command (or one line of the protocol) may take.
const MAX_LOGIN_COMMAND: usize = 64 << 10;
/// The most arguments a login command may have.
const MAX_ARGS: usize = 16;
/// A command name longer than this is not `AUTH` or `HELLO`.
const MAX_NAME: usize = 16;

/// Why a relayed login failed. Never holds the password.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("upstream {0}")]
    Dial(#[from] DialError),
    #[error("not Redis's protocol")]
    Protocol,
    #[error("a login command over {MAX_LOGIN_COMMAND} bytes")]
    TooLong,
    #[error("the server refused the login")]
    Refused,
    #[error("no login to give: {0}")]
    NoLogin(String),
}

/// Serves one sandbox connection to the Redis server `dial` reaches. `login` is the source's, or why there is none (then the
/// sandbox's first command gets that reason as an error).
pub(crate) async fn serve(client: Counted, dial: &Dial, login: Result<Login, String>) -> Outcome {
    // Buffered: the sandbox may send more than its first command at once,
    // and what follows it is relayed from this buffer.
    let mut client = BufReader::new(client);
    let session = log_in(&mut client, dial, login);
    let session = tokio::time::timeout(LOGIN_TIMEOUT, session).await;
    relay_after(&mut client, session).await
}

/// The sandbox's first command as far as it was read: its name (upper
/// case), its arguments when it is a login command, and the bytes read.
struct First {
    name: Vec<u8>,
    args: Vec<Vec<u8>>,
    raw: Vec<u8>,
}

async fn log_in(
    client: &mut BufReader<Counted>,
    dial: &Dial,
    login: Result<Login, String>,
) -> Result<BufReader<TcpStream>, RedisError> {
    let first = read_first(client).await?;
    let login = match login {
        Ok(l) => l,
        Err(why) => {
            let line = format!(
                "-ERR sandstone egress: {}\r\n",
                why.replace(['\r', '\n'], " ")
            );
            client.write_all(line.as_bytes()).await?;
            return Err(RedisError::NoLogin(why));
        }
    };
    let mut up = BufReader::new(dial.connect().await?);
    match first.name.as_slice() {
        b"AUTH" => up.write_all(&encode(&auth(&login))).await?,
        b"HELLO" => up.write_all(&encode(&hello(&first.args, &login))).await?,
        _ => {
            up.write_all(&encode(&auth(&login))).await?;
            let answer = read_line(&mut up).await?;
            if answer.first() == Some(&b'-') {
                client.write_all(&answer).await?;
                return Err(RedisError::Refused);
            }
            up.write_all(&first.raw).await?;
            return Ok(up);
        }
    }
    // The first line of the answer to the sandbox's own login says how it
    // went (`+OK`, a `HELLO` map's header, or an error); the sandbox gets
    // all of it.
    let answer = read_line(&mut up).await?;
    client.write_all(&answer).await?;
    match answer.first() {
        Some(b'-') => Err(RedisError::Refused),
        _ => Ok(up),
    }
}

/// `AUTH [user] password`: the one-argument form for the `default` user,
/// which servers before Redis 6 understand too.
fn auth(login: &Login) -> Vec<&[u8]> {
    match login.user.as_str() {
        "default" => vec![b"AUTH", login.password.as_bytes()],
        user => vec![b"AUTH", user.as_bytes(), login.password.as_bytes()],
    }
}

/// The sandbox's `HELLO [protover] [AUTH u p] [SETNAME n]` with the
/// source's login in place of any of its own.
fn hello<'a>(args: &'a [Vec<u8>], login: &'a Login) -> Vec<&'a [u8]> {
    // AUTH needs a protocol version: 2 is the one a new connection speaks.
    let (version, rest): (&[u8], &[Vec<u8>]) = match args.split_first() {
        Some((v, rest)) if !v.is_empty() && v.iter().all(u8::is_ascii_digit) => (v, rest),
        _ => (b"2", args),
    };
    // HELLO's AUTH always names the user.
    let (user, password) = (login.user.as_bytes(), login.password.as_bytes());
    let mut out: Vec<&[u8]> = vec![b"HELLO", version, b"AUTH", user, password];
    let mut options = rest.iter();
    while let Some(o) = options.next() {
        if o.eq_ignore_ascii_case(b"AUTH") {
            // The sandbox's own username and password go nowhere.
            options.nth(1);
        } else {
            out.push(o);
        }
    }
    out
}

/// A command as the protocol's array of bulk strings.
fn encode(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for p in parts {
        out.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One `\r\n`-ended line, at most [`MAX_LOGIN_COMMAND`] bytes.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Vec<u8>, RedisError> {
    let mut line = Vec::new();
    (&mut *r)
        .take(MAX_LOGIN_COMMAND as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if !line.ends_with(b"\r\n") {
        return Err(match line.len() >= MAX_LOGIN_COMMAND {
            true => RedisError::TooLong,
            false => RedisError::Protocol,
        });
    }
    Ok(line)
}

/// A decimal count or length after a one-byte marker (`*3\r\n`, `$4\r\n`).
fn header(line: &[u8], marker: u8) -> Result<usize, RedisError> {
    let digits = line
        .strip_prefix(&[marker])
        .and_then(|l| l.strip_suffix(b"\r\n"))
        .ok_or(RedisError::Protocol)?;
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or(RedisError::Protocol)
}

/// Reads the sandbox's first command: whole when it is `AUTH` or `HELLO`
/// (whose arguments are rewritten), else only up to its name (the rest is
/// relayed as it comes).
async fn read_first<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<First, RedisError> {
    let line = read_line(r).await?;
    let mut raw = line.clone();
    if line.first() != Some(&b'*') {
        // An inline command: words on one line.
        let mut words = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .map(<[u8]>::to_vec);
        let name = words.next().unwrap_or_default().to_ascii_uppercase();
        return Ok(First {
            name,
            args: words.collect(),
            raw,
        });
    }
    let count = header(&line, b'*')?;
    let mut name = Vec::new();
    let mut args = Vec::new();
    for i in 0..count {
        let head = read_line(r).await?;
        let len = header(&head, b'$')?;
        raw.extend_from_slice(&head);
        if i == 0 && len > MAX_NAME {
            // Not a login command: its name and the rest follow as they are.
            break;
        }
        if raw.len() + len > MAX_LOGIN_COMMAND || (i > 0 && count > MAX_ARGS + 1) {
            return Err(RedisError::TooLong);
        }
        let mut bulk = vec![0u8; len + 2];
        r.read_exact(&mut bulk).await?;
        if !bulk.ends_with(b"\r\n") {
            return Err(RedisError::Protocol);
        }
        raw.extend_from_slice(&bulk);
        bulk.truncate(len);
        if i == 0 {
            name = bulk.to_ascii_uppercase();
            if !matches!(name.as_slice(), b"AUTH" | b"HELLO") {
                break;
            }
        } else {
            args.push(bulk);
        }
    }
    Ok(First { name, args, raw })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(user: &str) -> Login {
        Login {
            user: user.into(),
            password: "s3cret".into(),
        }
    }

    fn words(parts: Vec<&[u8]>) -> Vec<String> {
        parts
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    #[test]
    fn hello_keeps_the_sandboxs_options_and_carries_the_sources_login() {
        let args =
            |s: &str| -> Vec<Vec<u8>> { s.split(' ').map(|w| w.as_bytes().to_vec()).collect() };
        let app = login("app");
        assert_eq!(
            words(hello(&args("3 AUTH app placeholder SETNAME me"), &app)),
            ["HELLO", "3", "AUTH", "app", "s3cret", "SETNAME", "me"]
        );
        assert_eq!(
            words(hello(&[], &login("default"))),
            ["HELLO", "2", "AUTH", "default", "s3cret"]
        );
        assert_eq!(
            words(hello(&args("setname x auth a b"), &app)),
            ["HELLO", "2", "AUTH", "app", "s3cret", "setname", "x"]
        );
        assert_eq!(words(auth(&login("default"))), ["AUTH", "s3cret"]);
        assert_eq!(words(auth(&app)), ["AUTH", "app", "s3cret"]);
    }

    #[tokio::test]
    async fn the_first_command_is_read_whole_only_when_it_logs_in() {
        let auth = encode(&[b"AUTH", b"x", b"placeholder"]);
        let mut input = auth.clone();
        input.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        let mut r = &input[..];
        let f = read_first(&mut r).await.unwrap();
        assert_eq!((f.name.as_slice(), f.args.len()), (b"AUTH".as_slice(), 2));
        assert_eq!(f.raw, auth);
        assert_eq!(r, b"*1\r\n$4\r\nPING\r\n");
        // Another command is read to its name; a big value is left unread.
        let set = b"*3\r\n$3\r\nset\r\n$1\r\nk\r\n$100000\r\n";
        let mut r = &set[..];
        let f = read_first(&mut r).await.unwrap();
        assert_eq!(f.name, b"SET");
        assert_eq!(f.raw, b"*3\r\n$3\r\nset\r\n");
        // Inline commands too.
        let mut r = &b"auth placeholder\r\n"[..];
        let f = read_first(&mut r).await.unwrap();
        assert_eq!((f.name.as_slice(), f.args.len()), (b"AUTH".as_slice(), 1));
        // Malformed or oversized login commands are refused.
        for bad in [
            &b"*2\r\n$4\r\nAUTH\r\n$x\r\n"[..],
            b"*2\r\n$4\r\nAUTHxx",
            b"*2\r\n$4\r\nAUTH\r\n$99999999\r\n",
        ] {
            let mut r = bad;
            assert!(read_first(&mut r).await.is_err(), "{bad:?}");
        }
    }
}
