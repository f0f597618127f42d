//! The directory walk of `glob` and `grep`: depth first in name order (so
//! results come out sorted by path), never through a symlink, and without
//! recursion (a deep tree cannot exhaust the thread's stack).

use std::fs::FileType;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// What to do with an entry the walk reached.
pub enum Visit<S> {
    Skip,
    /// Enter the entry if it is a directory, with this state for its
    /// children.
    Descend(S),
    Stop,
}

/// Calls `visit` with each entry under `root` and the state of its parent
/// directory. Unreadable directories are passed over.
pub fn walk<S>(root: &Path, root_state: S, mut visit: impl FnMut(&Path, FileType, &S) -> Visit<S>) {
    // Entries still to visit, the next one last.
    let mut pending: Vec<(PathBuf, FileType, Rc<S>)> = Vec::new();
    push_children(root, Rc::new(root_state), &mut pending);
    while let Some((path, file_type, parent)) = pending.pop() {
        match visit(&path, file_type, &parent) {
            Visit::Stop => return,
            Visit::Skip => {}
            // A symlink's own type is never a directory: links are not entered.
            Visit::Descend(state) if file_type.is_dir() => {
                push_children(&path, Rc::new(state), &mut pending)
            }
            Visit::Descend(_) => {}
        }
    }
}

fn push_children<S>(dir: &Path, state: Rc<S>, pending: &mut Vec<(PathBuf, FileType, Rc<S>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut children: Vec<(std::ffi::OsString, FileType)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name(), e.file_type().ok()?)))
        .collect();
    // Reverse name order on the stack pops in name order.
    children.sort_by(|a, b| b.0.cmp(&a.0));
    pending.extend(
        children
            .into_iter()
            .map(|(name, ft)| (dir.join(name), ft, state.clone())),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_depth_first_in_name_order_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), "").unwrap();
        std::fs::write(root.join("a.txt"), "").unwrap();
        std::fs::write(root.join("c"), "").unwrap();
        std::os::unix::fs::symlink(root, root.join("loop")).unwrap();
        let mut seen = Vec::new();
        walk(root, (), |p, _, _| {
            seen.push(p.strip_prefix(root).unwrap().display().to_string());
            Visit::Descend(())
        });
        assert_eq!(seen, ["a", "a/b", "a/b/f", "a.txt", "c", "loop"]);
    }
}
