//! `glob`: paths matching a pattern, newest first.
//!
//! Patterns have doublestar semantics: `**` is zero or more directories,
//! `*` and `?` stay within one name, `[abc]`/`[!a]` are classes and
//! `{a,b}` alternatives. A pattern is compiled to a list of per-name
//! regexes and matched while walking, so directories no alternative can
//! match below are never entered.

use super::paths::{Policy, canonicalize, py_repr};
use super::walk::{Visit, walk};
use super::{Input, Outcome, text};
use regex::Regex;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

const RESULT_LIMIT: usize = 200;
/// Entries examined per call, so a huge tree cannot stall init.
const WALK_MAX_ENTRIES: usize = 50_000;
/// Alternatives a pattern's braces may expand to.
const MAX_ALTERNATIVES: usize = 256;

pub fn glob(policy: &Policy, input: &Input) -> Outcome {
    let pattern = input.string("pattern")?;
    let path = input.opt_string("path")?.filter(|p| !p.is_empty());
    let matcher = Matcher::compile(pattern)?;
    let root = match path {
        Some(p) => policy.resolve("glob", p)?,
        None => policy.workdir().to_path_buf(),
    };
    let mut found = find(&root, &matcher);
    // A symlink among the matches must not lead out of the search root.
    found.retain(|p| canonicalize(p).is_ok_and(|c| c.starts_with(&root)));
    if found.is_empty() {
        return Ok(vec![text("no matches")]);
    }
    let mut dated: Vec<(SystemTime, PathBuf)> = found.into_iter().map(|p| (mtime(&p), p)).collect();
    dated.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let lines: Vec<String> = dated
        .iter()
        .take(RESULT_LIMIT)
        .map(|(_, p)| p.display().to_string())
        .collect();
    Ok(vec![text(lines.join("\n"))])
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Every entry under `root` the pattern matches, in walk order.
fn find(root: &Path, matcher: &Matcher) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut budget = WALK_MAX_ENTRIES;
    walk(root, matcher.start(), |path, _, states| {
        if budget == 0 {
            return Visit::Stop;
        }
        budget -= 1;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let next = matcher.step(states, &name);
        if matcher.accepts(&next) {
            found.push(path.to_path_buf());
        }
        if next.iter().any(|s| matcher.can_continue(s)) {
            Visit::Descend(next)
        } else {
            Visit::Skip
        }
    });
    found
}

/// One path name of a pattern.
enum Segment {
    /// `**`: any number of names.
    Any,
    Name(Regex),
}

/// Where matching stands: (alternative, index of its next segment).
type State = (usize, usize);

struct Matcher {
    alternatives: Vec<Vec<Segment>>,
}

impl Matcher {
    fn compile(pattern: &str) -> Result<Matcher, String> {
        if pattern.starts_with('/') {
            return Err(
                "glob: absolute pattern not permitted; pass a relative pattern (and optionally path)"
                    .into(),
            );
        }
        let mut expanded = Vec::new();
        expand_braces(pattern, &mut expanded)?;
        let mut alternatives = Vec::with_capacity(expanded.len());
        for alt in &expanded {
            // An alternative may be absolute or climb even if the pattern as
            // written does not (`{/etc,x}`, `{..,x}/y`).
            if alt.starts_with('/') {
                return Err("glob: absolute pattern not permitted; pass a relative pattern (and optionally path)".into());
            }
            let names: Vec<&str> = alt
                .split('/')
                .filter(|n| !n.is_empty() && *n != ".")
                .collect();
            if names.contains(&"..") {
                return Err("glob: '..' is not permitted in the pattern".into());
            }
            if names.is_empty() {
                return Err(format!("glob: Unacceptable pattern: {}", py_repr(pattern)));
            }
            alternatives.push(names.into_iter().map(segment).collect::<Result<_, _>>()?);
        }
        Ok(Matcher { alternatives })
    }

    fn segments(&self, (alt, _): State) -> &[Segment] {
        &self.alternatives[alt]
    }

    /// `s` plus the states reachable without consuming a name (a `**` may
    /// match no directory at all).
    fn close(&self, s: State, out: &mut Vec<State>) {
        let mut s = s;
        loop {
            if !out.contains(&s) {
                out.push(s);
            }
            match self.segments(s).get(s.1) {
                Some(Segment::Any) => s = (s.0, s.1 + 1),
                _ => return,
            }
        }
    }

    fn start(&self) -> Vec<State> {
        let mut out = Vec::new();
        for alt in 0..self.alternatives.len() {
            self.close((alt, 0), &mut out);
        }
        out
    }

    /// The states after consuming one name.
    fn step(&self, states: &[State], name: &str) -> Vec<State> {
        let mut out = Vec::new();
        for &s in states {
            match self.segments(s).get(s.1) {
                Some(Segment::Any) => self.close(s, &mut out),
                Some(Segment::Name(re)) if re.is_match(name) => {
                    self.close((s.0, s.1 + 1), &mut out)
                }
                _ => {}
            }
        }
        out
    }

    fn accepts(&self, states: &[State]) -> bool {
        states.iter().any(|&s| s.1 == self.segments(s).len())
    }

    fn can_continue(&self, s: &State) -> bool {
        s.1 < self.segments(*s).len()
    }
}

/// Expands the first `{a,b}` group (outermost, with a top-level comma) and
/// recurses; a brace without a partner or comma is literal.
fn expand_braces(pattern: &str, out: &mut Vec<String>) -> Result<(), String> {
    let Some((open, close, commas)) = first_group(pattern) else {
        if out.len() >= MAX_ALTERNATIVES {
            return Err(format!(
                "glob: pattern expands to more than {MAX_ALTERNATIVES} alternatives"
            ));
        }
        out.push(pattern.to_string());
        return Ok(());
    };
    let (prefix, suffix) = (&pattern[..open], &pattern[close + 1..]);
    let mut from = open + 1;
    for to in commas.into_iter().chain([close]) {
        expand_braces(&format!("{prefix}{}{suffix}", &pattern[from..to]), out)?;
        from = to + 1;
    }
    Ok(())
}

/// (open, close, top-level comma offsets) of the first brace group.
fn first_group(pattern: &str) -> Option<(usize, usize, Vec<usize>)> {
    let bytes = pattern.as_bytes();
    for open in (0..bytes.len()).filter(|&i| bytes[i] == b'{') {
        let mut depth = 0;
        let mut commas = Vec::new();
        for (i, &b) in bytes.iter().enumerate().skip(open) {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        if !commas.is_empty() {
                            return Some((open, i, commas));
                        }
                        break;
                    }
                }
                b',' if depth == 1 => commas.push(i),
                _ => {}
            }
        }
    }
    None
}

/// One name of a pattern as a segment.
fn segment(name: &str) -> Result<Segment, String> {
    if name == "**" {
        return Ok(Segment::Any);
    }
    let mut re = String::from("^(?s:");
    let chars: Vec<char> = name.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            '[' => match class(&chars[i..]) {
                Some((class, len)) => {
                    re.push_str(&class);
                    i += len;
                    continue;
                }
                None => re.push_str("\\["),
            },
            c => push_literal(&mut re, c),
        }
        i += 1;
    }
    re.push_str(")$");
    Regex::new(&re)
        .map(Segment::Name)
        .map_err(|e| format!("glob: invalid pattern: {e}"))
}

/// A `[...]` class at the start of `chars` as a regex class and the number
/// of chars it spans; `None` when unterminated (then `[` is literal).
fn class(chars: &[char]) -> Option<(String, usize)> {
    let mut i = 1;
    let mut out = String::from("[");
    if chars.get(i) == Some(&'!') {
        out.push('^');
        i += 1;
    }
    let first = i;
    loop {
        let c = *chars.get(i)?;
        if c == ']' && i > first {
            out.push(']');
            return Some((out, i + 1));
        }
        // `-` keeps its range meaning; everything else is literal (the
        // regex syntax gives `&&`, `--`, `~~` and `[` meanings in a class).
        if c == '-' {
            out.push('-');
        } else {
            push_literal(&mut out, c);
        }
        i += 1;
    }
}

fn push_literal(re: &mut String, c: char) {
    if c.is_ascii_punctuation() {
        re.push('\\');
    }
    re.push(c);
}

#[cfg(test)]
mod tests {
    use super::super::call;
    use crate::proto::Response;
    use serde_json::json;
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    fn glob(work: &Path, input: serde_json::Value) -> (String, bool) {
        match call("glob", &input, work.to_str().unwrap(), &[], &[]) {
            Response::ToolResult { content, is_error } => {
                (content[0]["text"].as_str().unwrap().to_string(), is_error)
            }
            other => panic!("{other:?}"),
        }
    }

    fn names(work: &Path, pattern: &str) -> Vec<String> {
        let (out, is_error) = glob(work, json!({"pattern": pattern}));
        assert!(!is_error, "{out}");
        if out == "no matches" {
            return vec![];
        }
        let mut v: Vec<String> = out
            .lines()
            .map(|l| {
                l.strip_prefix(&format!("{}/", work.display()))
                    .unwrap()
                    .to_string()
            })
            .collect();
        v.sort();
        v
    }

    fn tree() -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let w = std::fs::canonicalize(d.path()).unwrap();
        for f in [
            "a.rs",
            "b.txt",
            "src/lib.rs",
            "src/x/y/z.rs",
            "doc/a.md",
            ".hidden.rs",
        ] {
            let p = w.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        (d, w)
    }

    #[test]
    fn doublestar_matches_zero_or_more_directories() {
        let (_d, w) = tree();
        assert_eq!(
            names(&w, "**/*.rs"),
            [".hidden.rs", "a.rs", "src/lib.rs", "src/x/y/z.rs"]
        );
        assert_eq!(names(&w, "src/**/*.rs"), ["src/lib.rs", "src/x/y/z.rs"]);
        assert_eq!(
            names(&w, "src/**"),
            ["src", "src/lib.rs", "src/x", "src/x/y", "src/x/y/z.rs"]
        );
        assert_eq!(names(&w, "*.rs"), [".hidden.rs", "a.rs"]);
        assert_eq!(names(&w, "./src/*"), ["src/lib.rs", "src/x"]);
    }

    #[test]
    fn wildcards_classes_and_alternatives() {
        let (_d, w) = tree();
        assert_eq!(names(&w, "?.rs"), ["a.rs"]);
        assert_eq!(names(&w, "[ab].*"), ["a.rs", "b.txt"]);
        assert_eq!(names(&w, "[!a].*"), ["b.txt"]);
        assert_eq!(names(&w, "{src,doc}/*.{rs,md}"), ["doc/a.md", "src/lib.rs"]);
        assert_eq!(names(&w, "*/x"), ["src/x"]);
        assert_eq!(names(&w, "nothing*"), Vec::<String>::new());
        assert_eq!(glob(&w, json!({"pattern": "*.zip"})).0, "no matches");
    }

    #[test]
    fn results_are_absolute_and_newest_first() {
        let (_d, w) = tree();
        let now = SystemTime::now();
        for (f, age) in [("a.rs", 30), ("src/lib.rs", 10), ("src/x/y/z.rs", 20)] {
            let t = now - Duration::from_secs(age);
            std::fs::File::options()
                .write(true)
                .open(w.join(f))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        let (out, _) = glob(&w, json!({"pattern": "**/[alz]*.rs"}));
        let want = ["src/lib.rs", "src/x/y/z.rs", "a.rs"].map(|f| w.join(f).display().to_string());
        assert_eq!(out, want.join("\n"));
    }

    #[test]
    fn at_most_200_results() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..250 {
            std::fs::write(d.path().join(format!("f{i:03}")), "").unwrap();
        }
        let (out, _) = glob(d.path(), json!({"pattern": "f*"}));
        assert_eq!(out.lines().count(), 200);
    }

    #[test]
    fn path_scopes_the_search_and_is_confined() {
        let (_d, w) = tree();
        let (out, _) = glob(&w, json!({"pattern": "*.rs", "path": "src"}));
        assert_eq!(out, w.join("src/lib.rs").display().to_string());
        let (out, is_error) = glob(&w, json!({"pattern": "*", "path": ".."}));
        assert!(is_error);
        assert_eq!(
            out,
            "glob: path '..' is outside the session's working directory"
        );
    }

    #[test]
    fn symlinks_do_not_lead_out() {
        let d = tempfile::tempdir().unwrap();
        let w = std::fs::canonicalize(d.path()).unwrap().join("w");
        std::fs::create_dir_all(w.join("in")).unwrap();
        std::fs::write(d.path().join("secret.rs"), "").unwrap();
        std::fs::create_dir(d.path().join("outdir")).unwrap();
        std::fs::write(d.path().join("outdir/o.rs"), "").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret.rs"), w.join("leak.rs")).unwrap();
        std::os::unix::fs::symlink(d.path().join("outdir"), w.join("outlink")).unwrap();
        std::fs::write(w.join("in/ok.rs"), "").unwrap();
        std::os::unix::fs::symlink(w.join("in/ok.rs"), w.join("alias.rs")).unwrap();
        assert_eq!(names(&w, "**/*.rs"), ["alias.rs", "in/ok.rs"]);
    }

    #[test]
    fn bad_patterns_are_refused() {
        let (_d, w) = tree();
        let cases = [
            (
                "/etc/*",
                "glob: absolute pattern not permitted; pass a relative pattern (and optionally path)",
            ),
            ("../*", "glob: '..' is not permitted in the pattern"),
            ("src/../../x", "glob: '..' is not permitted in the pattern"),
            ("{..,src}/*", "glob: '..' is not permitted in the pattern"),
            ("", "glob: Unacceptable pattern: ''"),
        ];
        for (pattern, want) in cases {
            assert_eq!(
                glob(&w, json!({"pattern": pattern})),
                (want.to_string(), true)
            );
        }
    }

    #[test]
    fn unmatched_brackets_and_braces_are_literal() {
        let (_d, w) = tree();
        std::fs::write(w.join("[x"), "").unwrap();
        std::fs::write(w.join("{y}"), "").unwrap();
        assert_eq!(names(&w, "[x"), ["[x"]);
        assert_eq!(names(&w, "{y}"), ["{y}"]);
    }
}
