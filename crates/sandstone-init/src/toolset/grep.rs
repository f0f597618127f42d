//! `grep`: lines matching a regular expression (ripgrep's engine), as
//! `path:line:text`, sorted by path then line.

use super::paths::{Policy, fs_error};
use super::walk::{Visit, walk};
use super::{Input, Outcome, text};
use regex::Regex;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::time::Duration;

const OUTPUT_LIMIT: usize = 100 * 1024;
/// Longer lines are skipped, as the reference does (they are rarely what
/// the model is after and would flood the output).
const MAX_LINE_LENGTH: usize = 2000;
/// A file with a NUL byte this early is binary and skipped.
const BINARY_SNIFF: usize = 8 * 1024;
const MAX_FILES: usize = 50_000;
const SKIPPED_DIRS: [&str; 2] = [".git", "node_modules"];
/// CPU time one search may use (init serves other requests meanwhile).
const CPU_BUDGET: Duration = Duration::from_secs(30);
/// How often (in lines) the CPU budget is checked within a file.
const CHECK_EVERY: u64 = 4096;

pub fn grep(policy: &Policy, input: &Input) -> Outcome {
    let pattern = input.string("pattern")?;
    let path = input.opt_string("path")?.filter(|p| !p.is_empty());
    let search = match path {
        Some(p) => policy.resolve("grep", p)?,
        None => policy.workdir().to_path_buf(),
    };
    let re = Regex::new(pattern).map_err(|e| format!("grep: invalid regex: {e}"))?;
    let named = path.map_or_else(|| search.display().to_string(), str::to_string);
    let meta = std::fs::metadata(&search).map_err(|e| fs_error("grep", &named, &e))?;
    let mut hits = Hits::new(re);
    if meta.is_file() {
        hits.scan(&search);
    } else {
        search_tree(&search, &mut hits);
    }
    hits.finish()
}

fn search_tree(root: &Path, hits: &mut Hits) {
    let mut files = 0;
    walk(root, (), |path, file_type, _| {
        if file_type.is_dir() {
            let skipped = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| SKIPPED_DIRS.contains(&n));
            return if skipped {
                Visit::Skip
            } else {
                Visit::Descend(())
            };
        }
        // Symlinks could lead out of the permitted roots; FIFOs and devices
        // could block a read forever.
        if !file_type.is_file() {
            return Visit::Skip;
        }
        files += 1;
        if files > MAX_FILES || !hits.scan(path) {
            return Visit::Stop;
        }
        Visit::Skip
    });
}

/// The matches found so far, within the output and CPU budgets.
struct Hits {
    re: Regex,
    lines: Vec<String>,
    /// Output bytes still allowed.
    budget: usize,
    truncated: bool,
    timed_out: bool,
    cpu_deadline: Duration,
}

impl Hits {
    fn new(re: Regex) -> Hits {
        Hits {
            re,
            lines: Vec::new(),
            budget: OUTPUT_LIMIT,
            truncated: false,
            timed_out: false,
            cpu_deadline: sandstone_sys::process::thread_cpu_time() + CPU_BUDGET,
        }
    }

    /// Searches one file; `false` once a budget is spent.
    fn scan(&mut self, path: &Path) -> bool {
        if sandstone_sys::process::thread_cpu_time() > self.cpu_deadline {
            self.timed_out = true;
            return false;
        }
        let Ok(mut file) = std::fs::File::open(path) else {
            return true;
        };
        let mut head = Vec::with_capacity(BINARY_SNIFF);
        if (&mut file)
            .take(BINARY_SNIFF as u64)
            .read_to_end(&mut head)
            .is_err()
            || head.contains(&0)
        {
            return true;
        }
        let reader = BufReader::with_capacity(64 * 1024, std::io::Cursor::new(head).chain(file));
        let shown = path.display().to_string();
        let _ = for_each_line(reader, MAX_LINE_LENGTH, |n, raw| {
            if n % CHECK_EVERY == 0 && sandstone_sys::process::thread_cpu_time() > self.cpu_deadline
            {
                self.timed_out = true;
                return false;
            }
            let line = String::from_utf8_lossy(raw);
            let line = line.trim_end_matches(['\r', '\n']);
            !self.re.is_match(line) || self.push(format!("{shown}:{n}:{line}"))
        });
        !(self.truncated || self.timed_out)
    }

    /// Adds a result line; `false` (and the truncation marker) once the
    /// output budget is spent.
    fn push(&mut self, line: String) -> bool {
        match self.budget.checked_sub(line.len() + 1) {
            Some(left) => {
                self.budget = left;
                self.lines.push(line);
                true
            }
            None => {
                self.truncated = true;
                self.lines
                    .push(format!("[output truncated at {OUTPUT_LIMIT} bytes]"));
                false
            }
        }
    }

    fn finish(self) -> Outcome {
        if self.timed_out {
            return Err(format!("grep: timed out after {}s", CPU_BUDGET.as_secs()));
        }
        if self.lines.is_empty() {
            return Ok(vec![text("no matches")]);
        }
        Ok(vec![text(self.lines.join("\n"))])
    }
}

/// Calls `f` with each line (1-based number, bytes without the newline)
/// until it returns `false`. Lines longer than `max` bytes (counting their
/// newline) are skipped without being buffered whole.
fn for_each_line(
    mut r: impl BufRead,
    max: usize,
    mut f: impl FnMut(u64, &[u8]) -> bool,
) -> std::io::Result<()> {
    let mut line = Vec::new();
    let mut overlong = false;
    let mut n = 0u64;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            // A last line without a newline.
            if !line.is_empty() && !overlong {
                f(n + 1, &line);
            }
            return Ok(());
        }
        let (chunk, ends_line) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        let counted = line.len() + chunk.len() + usize::from(ends_line);
        if counted > max {
            overlong = true;
            line.clear();
        } else if !overlong {
            line.extend_from_slice(chunk);
        }
        let used = chunk.len() + usize::from(ends_line);
        r.consume(used);
        if ends_line {
            n += 1;
            if !overlong && !f(n, &line) {
                return Ok(());
            }
            line.clear();
            overlong = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::call;
    use super::*;
    use crate::proto::Response;
    use serde_json::json;

    fn grep(work: &Path, input: serde_json::Value) -> (String, bool) {
        match call("grep", &input, work.to_str().unwrap(), &[], &[]) {
            Response::ToolResult { content, is_error } => {
                (content[0]["text"].as_str().unwrap().to_string(), is_error)
            }
            other => panic!("{other:?}"),
        }
    }

    fn work() -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let w = std::fs::canonicalize(d.path()).unwrap();
        (d, w)
    }

    fn put(w: &Path, f: &str, body: &[u8]) {
        let p = w.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }

    #[test]
    fn matches_are_sorted_by_path_then_line() {
        let (_d, w) = work();
        put(&w, "b.txt", b"needle 1\nhay\nneedle 2\r\n");
        put(&w, "a/z.txt", b"a needle");
        put(&w, "a.txt", b"no\n");
        let (out, is_error) = grep(&w, json!({"pattern": "needle \\d|a need"}));
        assert!(!is_error);
        let p = |f: &str| w.join(f).display().to_string();
        assert_eq!(
            out,
            format!(
                "{}:1:a needle\n{}:1:needle 1\n{}:3:needle 2",
                p("a/z.txt"),
                p("b.txt"),
                p("b.txt")
            )
        );
    }

    #[test]
    fn a_file_path_searches_that_file() {
        let (_d, w) = work();
        put(&w, "one.txt", b"x\ny\n");
        put(&w, "two.txt", b"y\n");
        let (out, _) = grep(&w, json!({"pattern": "y", "path": "one.txt"}));
        assert_eq!(out, format!("{}:2:y", w.join("one.txt").display()));
    }

    #[test]
    fn skips_binaries_vcs_dirs_symlinks_and_long_lines() {
        let (d, w) = work();
        put(&w, "bin", b"match\0match");
        put(&w, ".git/config", b"match");
        put(&w, "node_modules/m/index.js", b"match");
        let long = format!("match{}\nmatch short\n", "x".repeat(2000));
        put(&w, "long.txt", long.as_bytes());
        let outside = d.path().join("..").join("outside-grep-test");
        std::os::unix::fs::symlink(&outside, w.join("link")).unwrap();
        let (out, _) = grep(&w, json!({"pattern": "match"}));
        assert_eq!(
            out,
            format!("{}:2:match short", w.join("long.txt").display())
        );
    }

    #[test]
    fn output_is_cut_at_100_kib() {
        let (_d, w) = work();
        let body = "match this line\n".repeat(10_000);
        put(&w, "many.txt", body.as_bytes());
        let (out, is_error) = grep(&w, json!({"pattern": "match"}));
        assert!(!is_error);
        let marker = "\n[output truncated at 102400 bytes]";
        assert!(out.ends_with(marker), "{}", &out[out.len() - 80..]);
        assert!(out.len() - marker.len() <= 102_400);
        assert!(out.len() - marker.len() > 102_400 - 200);
    }

    #[test]
    fn errors_and_empty_results() {
        let (_d, w) = work();
        put(&w, "f", b"abc");
        assert_eq!(
            grep(&w, json!({"pattern": "zzz"})),
            ("no matches".into(), false)
        );
        let (out, is_error) = grep(&w, json!({"pattern": "("}));
        assert!(is_error);
        assert!(out.starts_with("grep: invalid regex: "), "{out}");
        assert_eq!(
            grep(&w, json!({"pattern": "a", "path": "missing"})),
            ("grep: missing: no such file or directory".into(), true)
        );
        assert_eq!(
            grep(&w, json!({"pattern": "a", "path": "/"})),
            (
                "grep: path '/' is outside the session's working directory".into(),
                true
            )
        );
    }

    #[test]
    fn line_splitting_counts_the_newline_toward_the_limit() {
        let collect = |body: &[u8]| {
            let mut seen = Vec::new();
            for_each_line(std::io::BufReader::with_capacity(3, body), 4, |n, l| {
                seen.push((n, String::from_utf8(l.to_vec()).unwrap()));
                true
            })
            .unwrap();
            seen
        };
        assert_eq!(
            collect(b"abc\nabcd\nab\nabcdefgh\nxyzw"),
            [(1, "abc".into()), (3, "ab".into()), (5, "xyzw".to_string())]
        );
        assert_eq!(collect(b""), []);
        assert_eq!(
            collect(b"\n\nq"),
            [(1, String::new()), (2, String::new()), (3, "q".into())]
        );
    }
}
