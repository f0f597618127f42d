//! Shared by the integration tests: a tree with every kind of entry an
//! overlay upper dir holds, and a description of a tree to compare two.
#![allow(dead_code)] // each test binary uses part of it

use sandstone_checkpoint::{Checkpoints, MasterKey, Options, store};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const KNOWN_LINE: &str = "the quick sandstone fox jumps over the lazy checkpoint";
pub const MIB: u64 = 1 << 20;

/// Deterministic incompressible bytes (xorshift).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: nanos,
    };
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: secs - 1000,
            tv_nsec: 0,
        },
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Builds the test tree at `root` (which must not exist): regular files
/// (one of `big` MiB), an empty setuid file, directories with odd modes
/// and owners, symlinks (one dangling), hard links, a sparse file, an
/// overlay whiteout, an opaque directory, xattrs, a FIFO, a non-UTF-8
/// name, and set times.
pub fn build_tree(root: &Path, big_mib: usize) {
    std::fs::create_dir(root).unwrap();
    let p = |rel: &str| root.join(rel);
    std::fs::create_dir(p("a")).unwrap();
    std::fs::create_dir(p("a/deep")).unwrap();
    std::fs::create_dir(p("sticky")).unwrap();
    std::fs::create_dir(p("opaque")).unwrap();
    std::fs::write(p("a/big"), noise(1, big_mib << 20)).unwrap();
    std::fs::write(p("a/text.txt"), format!("{KNOWN_LINE}\n").repeat(2000)).unwrap();
    std::fs::write(p("empty-setuid"), b"").unwrap();
    std::fs::write(p("opaque/inside"), b"inside an opaque dir\n").unwrap();
    std::fs::write(p("a/deep/small"), b"x").unwrap();
    std::fs::write(root.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1 name\n").unwrap();
    // Hard links: three names of one inode, across directories.
    std::fs::hard_link(p("a/text.txt"), p("hard-link")).unwrap();
    std::fs::hard_link(p("a/text.txt"), p("a/deep/another")).unwrap();
    std::os::unix::fs::symlink("a/text.txt", p("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", p("a/dangling")).unwrap();
    // Sparse: 100 MiB with two 4 KiB islands of data.
    let sparse = std::fs::File::create(p("sparse")).unwrap();
    sparse.set_len(100 * MIB).unwrap();
    sparse.write_all_at(&noise(2, 4096), 10 * MIB).unwrap();
    sparse.write_all_at(&noise(3, 4096), 60 * MIB).unwrap();
    drop(sparse);
    // An overlay whiteout (char 0/0) and a FIFO.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p("a/whiteout"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o000),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    xattr(&p("opaque"), "trusted.overlay.opaque", b"y");
    xattr(&p("a/text.txt"), "user.comment", b"hello");
    xattr(&p("a/big"), "trusted.overlay.origin", &[0, 251, 33, 1, 255]);
    // Owners as stored on disk for a sandbox whose root is 100000.
    for rel in ["a", "a/big", "a/text.txt", "a/deep", "link", "fifo"] {
        std::os::unix::fs::lchown(p(rel), Some(100_000), Some(100_000)).unwrap();
    }
    std::os::unix::fs::lchown(p("sticky"), Some(100_033), Some(100_044)).unwrap();
    chmod(&p("a"), 0o750);
    chmod(&p("sticky"), 0o1777);
    chmod(&p("a/deep"), 0o2711);
    chmod(&p("empty-setuid"), 0o4755);
    chmod(&p("a/text.txt"), 0o640);
    // Times last (children before parents, as their creation moved them).
    for (i, rel) in [
        "a/big",
        "a/text.txt",
        "link",
        "a/dangling",
        "a/whiteout",
        "sparse",
        "a/deep",
        "a",
        "opaque",
        "",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&p(rel), 1_600_000_000 + i as i64 * 1000, 123_456_789);
    }
}

/// What must survive a round trip, per path: type, mode, owner, mtime,
/// size, content digest, link target, device, kept xattrs, and which
/// paths share an inode (as the first such path).
#[derive(Debug, PartialEq, Eq)]
pub struct Described {
    pub kind: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub digest: Option<String>,
    pub target: Option<PathBuf>,
    pub rdev: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub same_inode_as: Vec<u8>,
}

fn xattrs_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap();
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8(name.to_vec()).unwrap();
        if name.starts_with("trusted.") || name.starts_with("user.") {
            let mut value = vec![0u8; 4096];
            let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).unwrap();
            value.truncate(len);
            out.push((name, value));
        }
    }
    out.sort();
    out
}

pub fn describe(root: &Path) -> BTreeMap<Vec<u8>, Described> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    let mut first_of_inode: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let ft = meta.file_type();
        if ft.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        let digest = ft
            .is_file()
            .then(|| hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap())));
        let target = ft.is_symlink().then(|| std::fs::read_link(&path).unwrap());
        let same = first_of_inode
            .entry(meta.ino())
            .or_insert(rel.clone())
            .clone();
        out.insert(
            rel,
            Described {
                kind: meta.mode() & 0o170000,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                size: meta.size(),
                digest,
                target,
                rdev: meta.rdev(),
                xattrs: xattrs_of(&path),
                same_inode_as: same,
            },
        );
    }
    // Inode groups depend on visiting order; name each by its least path.
    let mut groups: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (rel, d) in &out {
        let least = groups.entry(d.same_inode_as.clone()).or_insert(rel.clone());
        if rel < least {
            *least = rel.clone();
        }
    }
    for d in out.values_mut() {
        d.same_inode_as = groups[&d.same_inode_as].clone();
    }
    out
}

/// A node: its own state dir (cache and index) against a shared store.
pub async fn node(
    blobs: std::sync::Arc<dyn store::Blobs>,
    key: &MasterKey,
    state: &Path,
) -> Checkpoints {
    Checkpoints::open(blobs, key, Options::new(state.to_path_buf()))
        .await
        .unwrap()
}

/// Every object file under a directory store.
pub fn objects(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}
