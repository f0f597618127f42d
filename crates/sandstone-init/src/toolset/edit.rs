//! `write` (a whole file) and `edit` (an exact string replacement).

use super::paths::{Policy, fs_error};
use super::read::read_text_for_edit;
use super::{Input, Outcome, text};

pub fn write(policy: &Policy, input: &Input) -> Outcome {
    let p = input.string("file_path")?;
    let content = input.string("content")?;
    let target = policy.resolve("write", p)?;
    policy.check_writable("write", &target, p)?;
    let io = |e: std::io::Error| fs_error("write", p, &e);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(&target, content).map_err(io)?;
    // The reference counts characters, not bytes, despite the wording.
    Ok(vec![text(format!(
        "wrote {} bytes to {p}",
        content.chars().count()
    ))])
}

pub fn edit(policy: &Policy, input: &Input) -> Outcome {
    let p = input.string("file_path")?;
    let old = input.string("old_string")?;
    let new = input.string("new_string")?;
    let replace_all = input.opt_bool("replace_all")?.unwrap_or(false);
    // An empty needle matches between every character: never what was meant.
    if old.is_empty() {
        return Err("edit: old_string must not be empty".into());
    }
    let target = policy.resolve("edit", p)?;
    policy.check_writable("edit", &target, p)?;
    let current = read_text_for_edit(&target, p)?;
    let count = current.matches(old).count();
    if count == 0 {
        return Err(format!("edit: old_string not found in {p}"));
    }
    if count > 1 && !replace_all {
        return Err(format!(
            "edit: old_string appears {count} times in {p} (must be unique)"
        ));
    }
    let (updated, replaced) = if replace_all {
        (current.replace(old, new), count)
    } else {
        (current.replacen(old, new, 1), 1)
    };
    std::fs::write(&target, updated).map_err(|e| fs_error("edit", p, &e))?;
    Ok(vec![text(format!(
        "edited {p} ({replaced} replacement(s))"
    ))])
}

#[cfg(test)]
mod tests {
    use super::super::call;
    use crate::proto::Response;
    use serde_json::{Value, json};
    use std::path::Path;

    fn run(work: &Path, ro: &[String], tool: &str, input: Value) -> (String, bool) {
        match call(tool, &input, work.to_str().unwrap(), &[], ro) {
            Response::ToolResult { content, is_error } => {
                (content[0]["text"].as_str().unwrap().to_string(), is_error)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn write_creates_parents_and_counts_characters() {
        let d = tempfile::tempdir().unwrap();
        let input = json!({"file_path": "deep/er/f.txt", "content": "héllo\n"});
        assert_eq!(
            run(d.path(), &[], "write", input),
            ("wrote 6 bytes to deep/er/f.txt".into(), false)
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("deep/er/f.txt")).unwrap(),
            "héllo\n"
        );
        let input = json!({"file_path": "deep/er/f.txt", "content": ""});
        assert_eq!(
            run(d.path(), &[], "write", input).0,
            "wrote 0 bytes to deep/er/f.txt"
        );
        assert_eq!(std::fs::read(d.path().join("deep/er/f.txt")).unwrap(), b"");
    }

    #[test]
    fn write_errors_are_normalised() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        std::fs::write(d.path().join("file"), "").unwrap();
        let input = json!({"file_path": "dir", "content": "x"});
        assert_eq!(
            run(d.path(), &[], "write", input),
            ("write: dir: is a directory".into(), true)
        );
        let input = json!({"file_path": "file/sub", "content": "x"});
        assert_eq!(
            run(d.path(), &[], "write", input),
            ("write: file/sub: file already exists".into(), true)
        );
    }

    #[test]
    fn write_and_edit_refuse_read_only_roots() {
        let d = tempfile::tempdir().unwrap();
        let ro = d.path().join("mem").display().to_string();
        std::fs::create_dir(&ro).unwrap();
        std::fs::write(d.path().join("mem/n.md"), "a").unwrap();
        let roots = std::slice::from_ref(&ro);
        let input = json!({"file_path": "mem/n.md", "content": "b"});
        assert_eq!(
            run(d.path(), roots, "write", input),
            (
                format!("write: mem/n.md is inside read-only directory {ro}"),
                true
            )
        );
        let input = json!({"file_path": "mem/n.md", "old_string": "a", "new_string": "b"});
        assert_eq!(
            run(d.path(), roots, "edit", input),
            (
                format!("edit: mem/n.md is inside read-only directory {ro}"),
                true
            )
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("mem/n.md")).unwrap(),
            "a"
        );
        // Reading stays allowed.
        let (_, is_error) = run(d.path(), roots, "read", json!({"file_path": "mem/n.md"}));
        assert!(!is_error);
    }

    #[test]
    fn edit_replaces_a_unique_match() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), "let a = 1;\nlet b = 2;\n").unwrap();
        let input = json!({"file_path": "f", "old_string": "b = 2", "new_string": "b = 3"});
        assert_eq!(
            run(d.path(), &[], "edit", input),
            ("edited f (1 replacement(s))".into(), false)
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("f")).unwrap(),
            "let a = 1;\nlet b = 3;\n"
        );
    }

    #[test]
    fn edit_needs_uniqueness_or_replace_all() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), "x x x").unwrap();
        let input = json!({"file_path": "f", "old_string": "x", "new_string": "y"});
        assert_eq!(
            run(d.path(), &[], "edit", input),
            (
                "edit: old_string appears 3 times in f (must be unique)".into(),
                true
            )
        );
        let input =
            json!({"file_path": "f", "old_string": "x", "new_string": "y", "replace_all": true});
        assert_eq!(
            run(d.path(), &[], "edit", input),
            ("edited f (3 replacement(s))".into(), false)
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("f")).unwrap(),
            "y y y"
        );
    }

    #[test]
    fn edit_error_messages() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), "abc").unwrap();
        std::fs::write(d.path().join("bin"), [0xc3, 0x28]).unwrap();
        std::fs::write(d.path().join("big"), "z".repeat(262_145)).unwrap();
        let cases = [
            (json!({"file_path": "f", "old_string": "q", "new_string": ""}), "edit: old_string not found in f".to_string()),
            (json!({"file_path": "f", "old_string": "", "new_string": "x"}), "edit: old_string must not be empty".into()),
            (json!({"file_path": "nope", "old_string": "a", "new_string": "b"}), "edit: nope: no such file or directory".into()),
            (json!({"file_path": "bin", "old_string": "a", "new_string": "b"}), "edit: bin: not valid UTF-8 text (cannot edit binary files)".into()),
            (json!({"file_path": "big", "old_string": "a", "new_string": "b"}), "edit: big is 262145 bytes, exceeds 262144-byte limit. The edit tool loads the whole file and cannot modify a file this large.".into()),
            (json!({"file_path": "../f", "old_string": "a", "new_string": "b"}), "edit: path '../f' is outside the session's working directory".into()),
        ];
        for (input, want) in cases {
            assert_eq!(run(d.path(), &[], "edit", input), (want, true));
        }
    }
}
