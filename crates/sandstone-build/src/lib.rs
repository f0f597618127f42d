//! Sandstonefiles: the small build language of `sandstone template build`
//! (`FROM`, `RUN`, `COPY`, `ENV`, `WORKDIR`, `USER`, and `ALLOW`, which
//! names hosts a build's steps may reach beside the package registries),
//! parsed into [`Instruction`]s, and the cache key of each step.
//!
//! ```text
//! FROM debian                  # a template, or an image reference
//! ENV PIP_NO_CACHE_DIR=1
//! ALLOW files.example.com
//! RUN pip install requests
//! WORKDIR /srv/app
//! COPY app/ .
//! USER app
//! ```
//!
//! Lines ending in `\` continue on the next; `#` starts a comment line.
//! Pure: the daemon runs the steps (`sandstone-server`'s `lifecycle::build`).

use sha2::{Digest, Sha256};

/// A Sandstonefile that cannot be built, naming the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Sandstonefile line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// One instruction, with the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub line: usize,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A template id or an image reference.
    From(String),
    /// A shell command (`/bin/sh -c`).
    Run(String),
    /// Paths in the build context, and where they go in the sandbox
    /// (relative to the working directory).
    Copy {
        sources: Vec<String>,
        dest: String,
    },
    Env(Vec<(String, String)>),
    Workdir(String),
    User(String),
    /// Hosts the `RUN` steps may reach, beyond the package registries.
    Allow(Vec<String>),
}

impl Kind {
    /// Whether the step changes files (runs in a sandbox and is cached)
    /// rather than only the settings later steps run with.
    pub fn makes_a_layer(&self) -> bool {
        matches!(self, Kind::Run(_) | Kind::Copy { .. })
    }
}

impl std::fmt::Display for Instruction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::From(x) => write!(f, "FROM {x}"),
            Kind::Run(c) => write!(f, "RUN {c}"),
            Kind::Copy { sources, dest } => write!(f, "COPY {} {dest}", sources.join(" ")),
            Kind::Env(vars) => {
                let vars: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "ENV {}", vars.join(" "))
            }
            Kind::Workdir(d) => write!(f, "WORKDIR {d}"),
            Kind::User(u) => write!(f, "USER {u}"),
            Kind::Allow(h) => write!(f, "ALLOW {}", h.join(" ")),
        }
    }
}

/// Parses a Sandstonefile: a `FROM` first, then the rest in order.
pub fn parse(text: &str) -> Result<Vec<Instruction>, ParseError> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim();
        if pending.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        let (start, mut line) = pending.take().unwrap_or((n, String::new()));
        match trimmed.strip_suffix('\\') {
            Some(more) => {
                line.push_str(more);
                line.push(' ');
                pending = Some((start, line));
            }
            None => {
                line.push_str(trimmed);
                out.push(instruction(start, &line)?);
            }
        }
    }
    if let Some((start, line)) = pending {
        out.push(instruction(start, &line)?);
    }
    match out.first() {
        Some(Instruction {
            kind: Kind::From(_),
            ..
        }) => {}
        Some(i) => {
            return Err(ParseError {
                line: i.line,
                message: "the first instruction must be FROM".into(),
            });
        }
        None => {
            return Err(ParseError {
                line: 1,
                message: "no instructions: a Sandstonefile starts with FROM".into(),
            });
        }
    }
    if let Some(i) = out.iter().skip(1).find(|i| matches!(i.kind, Kind::From(_))) {
        return Err(ParseError {
            line: i.line,
            message: "only one FROM (multi-stage builds are not supported)".into(),
        });
    }
    Ok(out)
}

fn instruction(line: usize, text: &str) -> Result<Instruction, ParseError> {
    let err = |message: String| ParseError { line, message };
    let (word, rest) = text
        .split_once(char::is_whitespace)
        .map_or((text, ""), |(w, r)| (w, r.trim()));
    let need = |what: &str| {
        if rest.is_empty() {
            Err(err(format!("{} needs {what}", word.to_uppercase())))
        } else {
            Ok(rest.to_string())
        }
    };
    let words = |what: &str| -> Result<Vec<String>, ParseError> {
        Ok(need(what)?.split_whitespace().map(str::to_string).collect())
    };
    let kind = match word.to_ascii_uppercase().as_str() {
        "FROM" => {
            let base = words("a template or an image")?;
            if base.len() != 1 {
                return Err(err("FROM takes one template or image".into()));
            }
            Kind::From(base[0].clone())
        }
        "RUN" => Kind::Run(need("a command")?),
        "COPY" => {
            let mut parts = words("sources and a destination")?;
            if parts.len() < 2 {
                return Err(err("COPY needs sources and a destination".into()));
            }
            if let Some(flag) = parts.iter().find(|p| p.starts_with("--")) {
                return Err(err(format!("COPY {flag} is not supported")));
            }
            let dest = parts.pop().unwrap_or_default();
            Kind::Copy {
                sources: parts,
                dest,
            }
        }
        "ENV" => Kind::Env(env_pairs(&need("KEY=VALUE")?).map_err(err)?),
        "WORKDIR" => {
            let dir = need("a directory")?;
            if !dir.starts_with('/') {
                return Err(err(format!("WORKDIR {dir}: an absolute path")));
            }
            Kind::Workdir(dir)
        }
        "USER" => Kind::User(need("a user")?),
        "ALLOW" => Kind::Allow(words("hosts")?),
        other => {
            return Err(err(format!(
                "unknown instruction {other} (expected FROM, RUN, COPY, ENV, WORKDIR, USER or ALLOW)"
            )));
        }
    };
    Ok(Instruction { line, kind })
}

/// `KEY=VALUE ...` (values may be double-quoted), or Docker's older
/// `KEY VALUE`.
fn env_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let valid = |k: &str| {
        !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if !text.contains('=')
        && let Some((k, v)) = text.split_once(char::is_whitespace)
    {
        if !valid(k) {
            return Err(format!("ENV {k:?} is not a variable name"));
        }
        return Ok(vec![(k.to_string(), v.trim().to_string())]);
    }
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (k, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("ENV {rest:?}: expected KEY=VALUE"))?;
        if !valid(k) {
            return Err(format!("ENV {k:?} is not a variable name"));
        }
        let (v, next) = match after.strip_prefix('"') {
            Some(q) => {
                let end = q
                    .find('"')
                    .ok_or_else(|| format!("ENV {k}: an unclosed quote"))?;
                (q[..end].to_string(), &q[end + 1..])
            }
            None => {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                (after[..end].to_string(), &after[end..])
            }
        };
        out.push((k.to_string(), v));
        rest = next.trim_start();
    }
    Ok(out)
}

/// The cache key of a step: what it runs on (`parent`, the key or pinned
/// template before it), the step itself, the settings it runs with, and
/// for a `COPY` the digest of what it copies. Equal keys give equal files.
pub fn step_key(parent: &str, step: &Instruction, settings: &str, content: Option<&str>) -> String {
    let mut h = Sha256::new();
    for part in [parent, &step.to_string(), settings, content.unwrap_or("")] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_parses_into_its_instructions() {
        let steps = parse(
            "# a comment\nFROM debian\n\nENV A=1 B=\"two words\"\nENV OLD style value\n\
             RUN apt-get update && \\\n    apt-get install -y jq\nWORKDIR /srv\nCOPY a b/ dest/\n\
             USER app\nALLOW example.com files.example.com\n",
        )
        .unwrap();
        let kinds: Vec<Kind> = steps.iter().map(|s| s.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                Kind::From("debian".into()),
                Kind::Env(vec![
                    ("A".into(), "1".into()),
                    ("B".into(), "two words".into())
                ]),
                Kind::Env(vec![("OLD".into(), "style value".into())]),
                Kind::Run("apt-get update &&  apt-get install -y jq".into()),
                Kind::Workdir("/srv".into()),
                Kind::Copy {
                    sources: vec!["a".into(), "b/".into()],
                    dest: "dest/".into()
                },
                Kind::User("app".into()),
                Kind::Allow(vec!["example.com".into(), "files.example.com".into()]),
            ]
        );
        assert_eq!(steps[3].line, 6, "a continued line keeps its first line");
    }

    #[test]
    fn bad_files_name_the_line() {
        for (text, line, needle) in [
            ("", 1, "no instructions"),
            ("RUN true", 1, "first instruction must be FROM"),
            ("FROM a\nFROM b", 2, "only one FROM"),
            ("FROM a\nEXPOSE 80", 2, "unknown instruction EXPOSE"),
            ("FROM a\nRUN", 2, "RUN needs a command"),
            ("FROM a\nCOPY onlyone", 2, "COPY needs sources"),
            ("FROM a\nCOPY --chown=x a b", 2, "--chown"),
            ("FROM a\nWORKDIR rel", 2, "absolute"),
            ("FROM a\nENV 1X=2", 2, "not a variable name"),
            ("FROM a\nENV A=\"open", 2, "unclosed quote"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn keys_change_with_the_parent_the_step_the_settings_and_the_content() {
        let run = parse("FROM a\nRUN make").unwrap().remove(1);
        let base = step_key("p", &run, "s", None);
        assert_eq!(base, step_key("p", &run, "s", None));
        assert_ne!(base, step_key("q", &run, "s", None));
        assert_ne!(base, step_key("p", &run, "t", None));
        assert_ne!(base, step_key("p", &run, "s", Some("c")));
        let other = parse("FROM a\nRUN make all").unwrap().remove(1);
        assert_ne!(base, step_key("p", &other, "s", None));
    }
}
