//! Whom a sandbox's processes run as: an image's `User` (`name`, `uid`,
//! `name:group`, `uid:gid`), resolved as a container runtime does, in the
//! sandbox's own `/etc/passwd` and `/etc/group`.

use std::path::Path;

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// `name:x:uid:gid:gecos:home:shell` lines of `passwd`-like text.
fn entries(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
}

/// Resolves `spec` against the files under `root` (`/` in the sandbox).
/// A numeric uid need not be in `passwd` (its gid is then the uid's
/// group 0 unless named, as Docker does); a name must be.
pub fn resolve(root: &Path, spec: &str) -> Result<Account, String> {
    let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap_or_default();
    resolve_in(&read("etc/passwd"), &read("etc/group"), spec)
}

/// [`resolve`] given the text of `passwd` and `group`.
pub fn resolve_in(passwd: &str, group_file: &str, spec: &str) -> Result<Account, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let known = entries(passwd)
        .find(|e| e.len() >= 6 && (e[0] == user || (user.parse::<u32>().is_ok() && e[2] == user)));
    let (uid, mut gid, home) = match (known, user.parse::<u32>()) {
        (Some(e), _) => (
            e[2].parse()
                .map_err(|_| format!("the image's user {spec:?}: a bad uid in /etc/passwd"))?,
            e[3].parse()
                .map_err(|_| format!("the image's user {spec:?}: a bad gid in /etc/passwd"))?,
            e[5].to_string(),
        ),
        (None, Ok(uid)) => (uid, 0, "/".to_string()),
        (None, Err(_)) => {
            return Err(format!(
                "the image's user {user:?} is not in the image's /etc/passwd"
            ));
        }
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => entries(group_file)
                .find(|e| e.len() >= 3 && e[0] == g)
                .and_then(|e| e[2].parse().ok())
                .ok_or_else(|| {
                    format!("the image's group {g:?} is not in the image's /etc/group")
                })?,
        };
    }
    Ok(Account { uid, gid, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ids_and_groups_resolve_as_docker_does() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(root.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let r = |s| resolve(root.path(), s);
        assert_eq!(
            r("app").unwrap(),
            Account {
                uid: 1000,
                gid: 1001,
                home: "/home/app".into()
            }
        );
        assert_eq!(r("1000").unwrap().home, "/home/app");
        assert_eq!(r("app:staff").unwrap().gid, 50);
        assert_eq!(
            r("4242:7").unwrap(),
            Account {
                uid: 4242,
                gid: 7,
                home: "/".into()
            }
        );
        assert!(r("nobody-here").unwrap_err().contains("nobody-here"));
        assert!(r("app:nogroup").unwrap_err().contains("nogroup"));
    }
}
