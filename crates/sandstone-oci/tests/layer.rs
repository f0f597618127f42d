//! Layers built here as an image builder lays them out (tar, gzip, zstd,
//! whiteouts, PAX xattrs), unpacked for real (as root: owners, whiteout
//! devices and `trusted.*` xattrs need it).

// Test code: an unexpected failure is the test failing.
#![allow(clippy::unwrap_used)]

use sandstone_oci::{Compression, Digest, Error, Expected, unpack};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// A tar entry, written with its name as raw bytes (so that a test can
/// make the names a hostile image would).
enum Ent<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Link(&'a str, &'a str),
    Fifo(&'a str),
    Char(&'a str),
    /// A file with a PAX xattr.
    XattrFile(&'a str, &'a str, &'a [u8]),
}

fn header(kind: tar::EntryType, name: &str, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_234_567);
    h.set_size(size);
    h
}

fn layer(entries: &[Ent]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (mut h, data): (tar::Header, &[u8]) = match e {
            Ent::Dir(n, mode) => (header(tar::EntryType::Directory, n, *mode, 0), b""),
            Ent::File(n, data, mode) => (
                header(tar::EntryType::Regular, n, *mode, data.len() as u64),
                data,
            ),
            Ent::Symlink(n, to) | Ent::Link(n, to) => {
                let kind = if matches!(e, Ent::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                let mut h = header(kind, n, 0o777, 0);
                h.as_old_mut().linkname[..to.len()].copy_from_slice(to.as_bytes());
                (h, b"")
            }
            Ent::Fifo(n) => (header(tar::EntryType::Fifo, n, 0o644, 0), b""),
            Ent::Char(n) => (header(tar::EntryType::Char, n, 0o644, 0), b""),
            Ent::XattrFile(n, name, value) => {
                let key = format!("SCHILY.xattr.{name}");
                b.append_pax_extensions([(key.as_str(), *value)]).unwrap();
                (header(tar::EntryType::Regular, n, 0o644, 2), b"hi")
            }
        };
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn compress(tar: &[u8], how: Compression) -> Vec<u8> {
    match how {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(tar).unwrap();
            z.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
    }
}

fn unpack_into(tar: &[u8], how: Compression, dest: &Path) -> sandstone_oci::Result<()> {
    let blob = compress(tar, how);
    let expected = Expected {
        digest: Digest::of(&blob),
        diff_id: Some(Digest::of(tar)),
    };
    unpack(&blob[..], how, &expected, dest).map(drop)
}

#[test]
fn a_layer_becomes_an_overlay_layer() {
    let tar = layer(&[
        Ent::Dir("./a/", 0o750),
        Ent::File("./a/f", b"contents", 0o4755),
        Ent::Symlink("a/abs", "/etc/passwd"),
        Ent::Link("a/hard", "a/f"),
        Ent::Fifo("fifo"),
        Ent::File("deep/er/file", b"parents made", 0o600),
        Ent::File("a/.wh.gone", b"", 0o600),
        Ent::Dir("opaque", 0o755),
        Ent::File("opaque/.wh..wh..opq", b"", 0o600),
        Ent::XattrFile("caps", "user.note", b"kept"),
    ]);
    for how in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let blob = compress(&tar, how);
        let expected = Expected {
            digest: Digest::of(&blob),
            diff_id: Some(Digest::of(&tar)),
        };
        let got = unpack(&blob[..], how, &expected, dir.path()).unwrap();
        assert_eq!((got.entries, got.whiteouts), (8, 2), "{how:?} {got:?}");
        assert_eq!(got.diff_id, Some(Digest::of(&tar)));
        let p = |rel: &str| dir.path().join(rel);
        let meta = |rel: &str| std::fs::symlink_metadata(p(rel)).unwrap();
        assert_eq!(meta("a").mode() & 0o7777, 0o750);
        assert_eq!((meta("a").uid(), meta("a").mtime()), (1000, 1_234_567));
        assert_eq!(std::fs::read(p("a/f")).unwrap(), b"contents");
        assert_eq!(meta("a/f").permissions().mode() & 0o7777, 0o4755);
        assert_eq!(
            std::fs::read_link(p("a/abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(meta("a/hard").ino(), meta("a/f").ino());
        assert!(meta("fifo").file_type().is_fifo());
        assert_eq!(std::fs::read(p("deep/er/file")).unwrap(), b"parents made");
        let gone = meta("a/gone");
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
        assert!(!p("a/.wh.gone").exists() && !p("opaque/.wh..wh..opq").exists());
        let mut buf = [0u8; 8];
        let n = rustix::fs::lgetxattr(p("opaque"), "trusted.overlay.opaque", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"y");
        let n = rustix::fs::lgetxattr(p("caps"), "user.note", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"kept");
    }
}

#[test]
fn hostile_entries_are_refused_and_nothing_lands_outside() {
    let outside = tempfile::tempdir().unwrap();
    let out = outside.path().to_str().unwrap().to_string();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (layer(&[Ent::File("../escape", b"x", 0o644)]), "(..)"),
        (layer(&[Ent::File("a/../../escape", b"x", 0o644)]), "(..)"),
        (
            layer(&[Ent::Symlink("s", &out), Ent::File("s/escape", b"x", 0o644)]),
            "under a symlink",
        ),
        (layer(&[Ent::Link("h", "../../../../etc/passwd")]), "(..)"),
        (layer(&[Ent::Link("h", "missing")]), "hard link to nothing"),
        (layer(&[Ent::Char("dev/evil")]), "device node"),
    ];
    for (tar, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let err = unpack_into(&tar, Compression::Gzip, dir.path()).unwrap_err();
        assert!(
            matches!(err, Error::Unsafe { .. } | Error::Unsupported { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(says), "{err}");
    }
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
}

#[test]
fn a_tampered_blob_or_tar_is_refused() {
    let tar = layer(&[Ent::File("f", b"real", 0o644)]);
    let blob = compress(&tar, Compression::Gzip);
    let dir = tempfile::tempdir().unwrap();
    let wrong_blob = Expected {
        digest: Digest::of(b"another blob"),
        diff_id: None,
    };
    let err = unpack(&blob[..], Compression::Gzip, &wrong_blob, dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { what, .. } if what.contains("blob")),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let wrong_tar = Expected {
        digest: Digest::of(&blob),
        diff_id: Some(Digest::of(b"another tar")),
    };
    let err = unpack(&blob[..], Compression::Gzip, &wrong_tar, dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { what, .. } if what.contains("diff_id")),
        "{err}"
    );

    // Bytes flipped in the blob: the digest says so even when the bytes
    // still decompress.
    let mut flipped = tar.clone();
    let at = flipped.windows(4).position(|w| w == b"real").unwrap();
    flipped[at] = b'f';
    let dir = tempfile::tempdir().unwrap();
    let expected = Expected {
        digest: Digest::of(&tar),
        diff_id: None,
    };
    let err = unpack(&flipped[..], Compression::None, &expected, dir.path()).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert_eq!(
        Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
        Compression::Zstd
    );
    assert!(Compression::from_media_type("text/plain").is_err());
}
