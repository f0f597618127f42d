//! What a connection is, from its first bytes: a TLS ClientHello (and its
//! SNI), an HTTP/1 request (and its Host), an SSH banner, or opaque bytes.
//! Parsers take untrusted input: every length is checked, nothing panics.

/// How many bytes the sniffer reads at most before calling it opaque.
pub const MAX_SNIFF: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// Not decidable yet: read more (up to [`MAX_SNIFF`]).
    NeedMore,
    Tls {
        sni: Option<String>,
    },
    Http {
        host: Option<String>,
        method: String,
        path: String,
    },
    Ssh,
    Other,
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

pub fn sniff(buf: &[u8]) -> Sniffed {
    if buf.is_empty() {
        return Sniffed::NeedMore;
    }
    if buf[0] == 0x16 {
        return tls(buf);
    }
    if buf.starts_with(b"SSH-") {
        return Sniffed::Ssh;
    }
    if buf.len() < 4 && b"SSH-".starts_with(buf) {
        return Sniffed::NeedMore;
    }
    let word_end = buf.iter().position(|b| *b == b' ');
    let Some(end) = word_end else {
        let could_be = METHODS.iter().any(|m| m.as_bytes().starts_with(buf));
        return if could_be && buf.len() < 8 {
            Sniffed::NeedMore
        } else {
            Sniffed::Other
        };
    };
    if !METHODS.iter().any(|m| m.as_bytes() == &buf[..end]) {
        return Sniffed::Other;
    }
    http(buf)
}

fn http(buf: &[u8]) -> Sniffed {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() < MAX_SNIFF {
            Sniffed::NeedMore
        } else {
            Sniffed::Other
        };
    };
    let Ok(head) = std::str::from_utf8(&buf[..head_end]) else {
        return Sniffed::Other;
    };
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let host = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("host")
            .then(|| strip_port(v.trim()).to_ascii_lowercase())
    });
    Sniffed::Http { host, method, path }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `::1`.
fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        _ => h,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reassembles the handshake bytes of consecutive TLS records.
fn handshake_bytes(buf: &[u8]) -> Result<Vec<u8>, Sniffed> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= buf.len() {
        if buf[at] != 0x16 {
            break;
        }
        let len = u16::from_be_bytes([buf[at + 3], buf[at + 4]]) as usize;
        let end = at + 5 + len;
        if end > buf.len() {
            out.extend_from_slice(&buf[at + 5..]);
            return Ok(out);
        }
        out.extend_from_slice(&buf[at + 5..end]);
        at = end;
    }
    if out.is_empty() && buf.len() < 5 {
        return Err(Sniffed::NeedMore);
    }
    Ok(out)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at + n)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|s| s[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|s| u16::from_be_bytes([s[0], s[1]]) as usize)
    }
}

fn tls(buf: &[u8]) -> Sniffed {
    let hs = match handshake_bytes(buf) {
        Ok(h) => h,
        Err(s) => return s,
    };
    if hs.len() < 4 {
        return if buf.len() < MAX_SNIFF {
            Sniffed::NeedMore
        } else {
            Sniffed::Other
        };
    }
    if hs[0] != 0x01 {
        return Sniffed::Tls { sni: None };
    }
    let len = (hs[1] as usize) << 16 | (hs[2] as usize) << 8 | hs[3] as usize;
    if hs.len() < 4 + len {
        return if buf.len() < MAX_SNIFF {
            Sniffed::NeedMore
        } else {
            Sniffed::Tls { sni: None }
        };
    }
    Sniffed::Tls {
        sni: client_hello_sni(&hs[4..4 + len]),
    }
}

fn client_hello_sni(body: &[u8]) -> Option<String> {
    let mut r = Reader { b: body, at: 0 };
    r.take(2 + 32)?; // version, random
    let sid = r.u8()?;
    r.take(sid)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let comp = r.u8()?;
    r.take(comp)?;
    let ext_len = r.u16()?;
    let exts = r.take(ext_len)?;
    let mut e = Reader { b: exts, at: 0 };
    while e.at < exts.len() {
        let kind = e.u16()?;
        let len = e.u16()?;
        let data = e.take(len)?;
        if kind != 0 {
            continue;
        }
        let mut s = Reader { b: data, at: 0 };
        let list = s.u16()?;
        let list = s.take(list)?;
        let mut n = Reader { b: list, at: 0 };
        while n.at < list.len() {
            let name_type = n.u8()?;
            let nlen = n.u16()?;
            let name = n.take(nlen)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                return Some(name.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello carrying `sni`, as one TLS record.
    fn client_hello(sni: &str) -> Vec<u8> {
        let name = sni.as_bytes();
        let mut sni_ext = Vec::new();
        sni_ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sni_ext.push(0);
        sni_ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni_ext.extend_from_slice(name);
        let mut exts = vec![0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]; // ec_point_formats first
        exts.extend_from_slice(&[0x00, 0x00]);
        exts.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
        exts.extend_from_slice(&sni_ext);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![0x01, 0, 0, 0];
        hs[1..4].copy_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn tls_sni_whole_and_in_pieces() {
        let hello = client_hello("API.Example.com");
        assert_eq!(
            sniff(&hello),
            Sniffed::Tls {
                sni: Some("api.example.com".into())
            }
        );
        for cut in [1, 3, 5, 20, hello.len() - 1] {
            assert_eq!(sniff(&hello[..cut]), Sniffed::NeedMore, "cut at {cut}");
        }
        // The same hello split over two records.
        let hs = &hello[5..];
        let (a, b) = hs.split_at(30);
        let mut two = vec![0x16, 3, 1];
        two.extend_from_slice(&(a.len() as u16).to_be_bytes());
        two.extend_from_slice(a);
        two.extend_from_slice(&[0x16, 3, 1]);
        two.extend_from_slice(&(b.len() as u16).to_be_bytes());
        two.extend_from_slice(b);
        assert_eq!(
            sniff(&two),
            Sniffed::Tls {
                sni: Some("api.example.com".into())
            }
        );
    }

    #[test]
    fn http_host_and_others() {
        let req = b"GET /x HTTP/1.1\r\nUser-Agent: t\r\nhost: Git.Test:8443\r\n\r\n";
        assert_eq!(
            sniff(req),
            Sniffed::Http {
                host: Some("git.test".into()),
                method: "GET".into(),
                path: "/x".into()
            }
        );
        assert_eq!(sniff(b"GET / HTTP/1.1\r\nHost: a"), Sniffed::NeedMore);
        assert_eq!(sniff(b"GE"), Sniffed::NeedMore);
        assert_eq!(sniff(b"SSH-2.0-OpenSSH_9.2\r\n"), Sniffed::Ssh);
        assert_eq!(sniff(b"\x00\x01binary"), Sniffed::Other);
        assert_eq!(sniff(b"HELLO world"), Sniffed::Other);
        assert_eq!(strip_port("[::1]:80"), "::1");
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: every prefix and byte flip of a hello.
        let hello = client_hello("a.b");
        let mut x = 0x2545_f491u32;
        for i in 0..hello.len() {
            let _ = sniff(&hello[..i]);
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let mut m = hello.clone();
                m[i] = x as u8;
                let _ = sniff(&m);
            }
        }
    }
}
