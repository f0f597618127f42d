//! The three kinds of sealed object in the store (chunks, pack indexes and
//! manifests), all sealed the same way:
//!
//! ```text
//! magic (4) | nonce (24) | XChaCha20-Poly1305( codec (1) | body ) | tag (16)
//! ```
//!
//! The nonce is random per object (192 bits: no counter to keep across
//! nodes). The codec byte is inside the ciphertext, so not even "this
//! chunk compressed well" shows. The associated data binds an object to
//! its name: a chunk to its id, a manifest to its key, so that neither can
//! be swapped for another sealed object without detection. A chunk's body
//! is zstd (or the raw bytes when zstd would not shrink them); after
//! opening, the plaintext's keyed hash must equal the id it was asked for.
//! Chunks are stored inside packs (see the crate docs), each still sealed on
//! its own, so one can be fetched with a ranged read and checked alone. A
//! pack index's body is raw records of chunk id (32 bytes), offset and
//! length (4 bytes each, little-endian), bound to its pack's name. A
//! manifest's body is zstd of the JSON `{"manifest": ..., "packs": ...}`:
//! the [`Manifest`] and its pack table (where each chunk lies).

use crate::key::Keys;
use crate::manifest::{ChunkId, Manifest};
use crate::pack::{Location, PackId, PackTable};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Tag, XNonce};

const CHUNK_MAGIC: &[u8; 4] = b"SSC1";
const MANIFEST_MAGIC: &[u8; 4] = b"SSM2";
const PACK_INDEX_MAGIC: &[u8; 4] = b"SSX1";
/// A pack index record: chunk id, offset, length.
const INDEX_RECORD: usize = 32 + 4 + 4;
const HEADER: usize = 4 + 24;
const TAG: usize = 16;
/// zstd's default: about 300 MB/s a core, well past what one core chunks
/// and hashes anyway.
const LEVEL: i32 = 3;

#[derive(Clone, Copy)]
#[repr(u8)]
enum Codec {
    Raw = 0,
    Zstd = 1,
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("not a sealed {0} object (bad header)")]
    NotSealed(&'static str),
    #[error("authentication failed: altered, or sealed with another key")]
    Altered,
    #[error("its contents do not decode: {0}")]
    Undecodable(String),
    #[error("its plaintext does not hash to its id")]
    WrongId,
    #[error("system random source: {0}")]
    Random(#[from] crate::key::KeyError),
}

fn chunk_aad(id: &ChunkId) -> Vec<u8> {
    [b"sandstone chunk v1:".as_slice(), &id.0].concat()
}

fn manifest_aad(key: &str) -> Vec<u8> {
    [b"sandstone manifest v2:".as_slice(), key.as_bytes()].concat()
}

fn pack_index_aad(pack: &PackId) -> Vec<u8> {
    [b"sandstone pack index v1:".as_slice(), &pack.to_bytes()].concat()
}

fn seal(
    keys: &Keys,
    magic: &[u8; 4],
    aad: &[u8],
    codec: Codec,
    body: &[u8],
) -> Result<Vec<u8>, ObjectError> {
    let nonce: [u8; 24] = crate::key::random()?;
    let mut out = Vec::with_capacity(HEADER + 1 + body.len() + TAG);
    out.extend_from_slice(magic);
    out.extend_from_slice(&nonce);
    out.push(codec as u8);
    out.extend_from_slice(body);
    let tag = keys
        .cipher
        .encrypt_in_place_detached(&XNonce::from(nonce), aad, &mut out[HEADER..])
        .map_err(|_| ObjectError::Undecodable("encryption failed".into()))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// The codec and body of a sealed object: the body is `plain[1..]` (the
/// codec byte is left in place rather than moved out of a chunk's worth
/// of bytes).
fn open(
    keys: &Keys,
    magic: &[u8; 4],
    kind: &'static str,
    aad: &[u8],
    object: &[u8],
) -> Result<(u8, Vec<u8>), ObjectError> {
    if object.len() < HEADER + 1 + TAG || &object[..4] != magic {
        return Err(ObjectError::NotSealed(kind));
    }
    let (sealed, tag) = object[HEADER..].split_at(object.len() - HEADER - TAG);
    let (Ok(nonce), Ok(tag)) = (
        <[u8; 24]>::try_from(&object[4..HEADER]),
        <[u8; TAG]>::try_from(tag),
    ) else {
        return Err(ObjectError::NotSealed(kind));
    };
    let mut plain = sealed.to_vec();
    keys.cipher
        .decrypt_in_place_detached(&XNonce::from(nonce), aad, &mut plain, &Tag::from(tag))
        .map_err(|_| ObjectError::Altered)?;
    Ok((plain[0], plain))
}

/// Seals a chunk whose id is `id` (the caller hashed `plain`).
pub(crate) fn seal_chunk(keys: &Keys, id: &ChunkId, plain: &[u8]) -> Result<Vec<u8>, ObjectError> {
    let packed = zstd::bulk::compress(plain, LEVEL)
        .map_err(|e| ObjectError::Undecodable(format!("zstd: {e}")))?;
    if packed.len() < plain.len() {
        seal(keys, CHUNK_MAGIC, &chunk_aad(id), Codec::Zstd, &packed)
    } else {
        seal(keys, CHUNK_MAGIC, &chunk_aad(id), Codec::Raw, plain)
    }
}

/// A chunk's plaintext: `body[start..]`.
pub(crate) struct Plain {
    body: Vec<u8>,
    start: usize,
}

impl std::ops::Deref for Plain {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.body[self.start..]
    }
}

/// The plaintext of the chunk `id`, `len` bytes long, checked against its
/// id.
pub(crate) fn open_chunk(
    keys: &Keys,
    id: &ChunkId,
    len: u32,
    object: &[u8],
) -> Result<Plain, ObjectError> {
    let (codec, body) = open(keys, CHUNK_MAGIC, "chunk", &chunk_aad(id), object)?;
    let plain = match codec {
        c if c == Codec::Raw as u8 => Plain { body, start: 1 },
        c if c == Codec::Zstd as u8 => Plain {
            body: zstd::bulk::decompress(&body[1..], len as usize)
                .map_err(|e| ObjectError::Undecodable(format!("zstd: {e}")))?,
            start: 0,
        },
        c => return Err(ObjectError::Undecodable(format!("unknown codec {c}"))),
    };
    if plain.len() != len as usize || keys.chunk_id(&plain) != *id {
        return Err(ObjectError::WrongId);
    }
    Ok(plain)
}

#[derive(serde::Serialize)]
struct StoredRef<'a> {
    manifest: &'a Manifest,
    packs: &'a PackTable,
}

#[derive(serde::Deserialize)]
struct Stored {
    manifest: Manifest,
    packs: PackTable,
}

pub(crate) fn seal_manifest(
    keys: &Keys,
    manifest: &Manifest,
    packs: &PackTable,
) -> Result<Vec<u8>, ObjectError> {
    let json = serde_json::to_vec(&StoredRef { manifest, packs })
        .map_err(|e| ObjectError::Undecodable(e.to_string()))?;
    let packed = zstd::bulk::compress(&json, LEVEL)
        .map_err(|e| ObjectError::Undecodable(format!("zstd: {e}")))?;
    let aad = manifest_aad(&manifest.id.key());
    seal(keys, MANIFEST_MAGIC, &aad, Codec::Zstd, &packed)
}

/// The manifest stored under `key`, and where its chunks are.
pub(crate) fn open_manifest(
    keys: &Keys,
    key: &str,
    object: &[u8],
) -> Result<(Manifest, PackTable), ObjectError> {
    let (codec, body) = open(keys, MANIFEST_MAGIC, "manifest", &manifest_aad(key), object)?;
    if codec != Codec::Zstd as u8 {
        return Err(ObjectError::Undecodable(format!("unknown codec {codec}")));
    }
    let json = zstd::stream::decode_all(&body[1..])
        .map_err(|e| ObjectError::Undecodable(format!("zstd: {e}")))?;
    let stored: Stored =
        serde_json::from_slice(&json).map_err(|e| ObjectError::Undecodable(e.to_string()))?;
    Ok((stored.manifest, stored.packs))
}

/// Seals the index of `pack`: where each of its chunks lies.
pub(crate) fn seal_pack_index(
    keys: &Keys,
    pack: &PackId,
    chunks: &[(ChunkId, Location)],
) -> Result<Vec<u8>, ObjectError> {
    let mut body = Vec::with_capacity(chunks.len() * INDEX_RECORD);
    for (id, at) in chunks {
        body.extend_from_slice(&id.0);
        body.extend_from_slice(&at.offset.to_le_bytes());
        body.extend_from_slice(&at.len.to_le_bytes());
    }
    seal(
        keys,
        PACK_INDEX_MAGIC,
        &pack_index_aad(pack),
        Codec::Raw,
        &body,
    )
}

/// The chunks the index of `pack` lists, and where.
pub(crate) fn open_pack_index(
    keys: &Keys,
    pack: &PackId,
    object: &[u8],
) -> Result<Vec<(ChunkId, Location)>, ObjectError> {
    let (codec, body) = open(
        keys,
        PACK_INDEX_MAGIC,
        "pack index",
        &pack_index_aad(pack),
        object,
    )?;
    let body = &body[1..];
    if codec != Codec::Raw as u8 || body.len() % INDEX_RECORD != 0 {
        return Err(ObjectError::Undecodable(format!(
            "codec {codec}, {} bytes: not a pack index",
            body.len()
        )));
    }
    Ok(body
        .chunks_exact(INDEX_RECORD)
        .map(|r| {
            let (id, rest) = r.split_at(32);
            let (offset, len) = rest.split_at(4);
            let word = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default());
            (
                ChunkId(id.try_into().unwrap_or_default()),
                Location {
                    pack: *pack,
                    offset: word(offset),
                    len: word(len),
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::MasterKey;

    fn keys(b: u8) -> Keys {
        Keys::derive(&MasterKey::from_bytes([b; 32]))
    }

    #[test]
    fn chunks_seal_open_and_detect_tampering() {
        let k = keys(1);
        let text = b"a known plaintext line\n".repeat(100);
        let id = k.chunk_id(&text);
        let sealed = seal_chunk(&k, &id, &text).unwrap();
        assert!(sealed.len() < text.len(), "compressible text shrinks");
        assert!(!sealed.windows(22).any(|w| w == b"a known plaintext line"));
        assert_eq!(
            &*open_chunk(&k, &id, text.len() as u32, &sealed).unwrap(),
            &text[..]
        );
        // Random bytes are stored raw and still round-trip.
        let noise: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let nid = k.chunk_id(&noise);
        let s = seal_chunk(&k, &nid, &noise).unwrap();
        assert_eq!(&*open_chunk(&k, &nid, 5000, &s).unwrap(), &noise[..]);

        let mut bad = sealed.clone();
        bad[HEADER + 3] ^= 1;
        assert!(matches!(
            open_chunk(&k, &id, text.len() as u32, &bad),
            Err(ObjectError::Altered)
        ));
        // Another chunk's sealed bytes under this id: refused.
        assert!(matches!(
            open_chunk(&k, &id, 5000, &s),
            Err(ObjectError::Altered)
        ));
        // Another key: refused.
        assert!(matches!(
            open_chunk(&keys(2), &id, text.len() as u32, &sealed),
            Err(ObjectError::Altered)
        ));
        assert!(matches!(
            open_chunk(&k, &id, 1, b"junk"),
            Err(ObjectError::NotSealed("chunk"))
        ));
    }

    #[test]
    fn pack_indexes_round_trip_bound_to_their_pack() {
        let k = keys(1);
        let (p, q) = (PackId::new().unwrap(), PackId::new().unwrap());
        let chunks = vec![
            (
                ChunkId([1; 32]),
                Location {
                    pack: p,
                    offset: 0,
                    len: 70,
                },
            ),
            (
                ChunkId([2; 32]),
                Location {
                    pack: p,
                    offset: 70,
                    len: 9,
                },
            ),
        ];
        let sealed = seal_pack_index(&k, &p, &chunks).unwrap();
        assert_eq!(open_pack_index(&k, &p, &sealed).unwrap(), chunks);
        // Another pack's index under this name: refused.
        assert!(matches!(
            open_pack_index(&k, &q, &sealed),
            Err(ObjectError::Altered)
        ));
        assert!(matches!(
            open_pack_index(&k, &p, b"junk"),
            Err(ObjectError::NotSealed("pack index"))
        ));
    }

    #[test]
    fn a_chunk_sealed_under_a_wrong_id_is_caught_by_its_hash() {
        // Someone with the key seals other bytes under an id: the AEAD
        // accepts it, the hash does not.
        let k = keys(1);
        let id = k.chunk_id(b"right");
        let s = seal_chunk(&k, &id, b"wrong").unwrap();
        assert!(matches!(
            open_chunk(&k, &id, 5, &s),
            Err(ObjectError::WrongId)
        ));
    }
}
