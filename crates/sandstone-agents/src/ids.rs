//! Identifiers, tokens and timestamps in the API's formats.

use sandstone_api::timefmt::{now_us, rfc3339_us};

const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// `prefix` + 24 base58 characters, like the API's (`sesn_011CZk…`).
pub fn new_id(prefix: &str) -> String {
    let mut raw = [0u8; 24];
    random(&mut raw);
    let tail: String = raw
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    format!("{prefix}_01{tail}")
}

/// A bearer token: `prefix` + 256 random bits.
pub fn new_token(prefix: &str) -> String {
    format!("{prefix}{}", sandstone_api::random_hex(32))
}

fn random(buf: &mut [u8]) {
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, buf));
}

/// Now, RFC 3339 with microseconds.
pub fn now() -> String {
    rfc3339_us(now_us())
}
