//! `read`: a text file verbatim (optionally a range of its lines), or an
//! image/PDF as a base64 content block.

use super::paths::{Policy, fs_error};
use super::{Input, Outcome, text};
use base64::Engine;
use serde_json::{Value, json};
use std::io::Read;
use std::path::Path;

/// Cap of a whole-file read (and of `edit`, which loads the whole file).
pub const MAX_FILE_BYTES: u64 = 256 * 1024;
/// The API caps an image's base64 form at 5 MiB; this is the raw size
/// that encodes to it.
const MAX_IMAGE_BYTES: u64 = (5 * 1024 * 1024 / 4) * 3;
const MAX_PDF_BYTES: u64 = 20 * 1024 * 1024;
/// Read size when streaming a line range out of a large file.
const CHUNK: usize = 64 * 1024;

pub fn read(policy: &Policy, input: &Input) -> Outcome {
    let p = input.string("file_path")?;
    // An empty list means no range, as in the reference.
    let view_range = input.opt_int_list("view_range")?.filter(|r| !r.is_empty());
    let target = policy.resolve("read", p)?;
    let range = match view_range.as_deref() {
        None => None,
        Some(&[start, end]) => Some(LineRange::new(start, end, MAX_FILE_BYTES as usize)),
        Some(_) => return Err("read: view_range must be [start_line, end_line]".into()),
    };
    // stat before open: the size cap comes before any read, and a FIFO or
    // a device (whose open or read may never return) is refused unopened.
    let meta = std::fs::metadata(&target).map_err(|e| fs_error("read", p, &e))?;
    if !meta.is_file() {
        return Err(format!("read: {p}: not a regular file"));
    }
    if let Some(media_type) = media_type(&target) {
        if range.is_some() {
            return Err("read: view_range is not supported for image/PDF files".into());
        }
        return Ok(vec![binary_block(&target, p, meta.len(), media_type)?]);
    }
    let body = match range {
        Some(lines) => read_range(&target, p, meta.len(), lines)?,
        None if meta.len() > MAX_FILE_BYTES => {
            return Err(format!(
                "read: {p} is {} bytes, exceeds {MAX_FILE_BYTES}-byte limit. Use the view_range parameter to read specific line ranges, e.g. view_range: [1, 500].",
                meta.len()
            ));
        }
        None => {
            let bytes = std::fs::read(&target).map_err(|e| fs_error("read", p, &e))?;
            utf8("read", p, bytes)?
        }
    };
    Ok(vec![text(body)])
}

/// Text as UTF-8, or the error naming why it is refused.
fn utf8(tool: &str, p: &str, bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|_| match tool {
        "edit" => format!("edit: {p}: not valid UTF-8 text (cannot edit binary files)"),
        _ => format!(
            "{tool}: {p}: not valid UTF-8 text (binary files are only supported for image/PDF extensions)"
        ),
    })
}

/// A file's bytes as UTF-8 text, refusing files larger than `edit` may load.
pub fn read_text_for_edit(target: &Path, p: &str) -> Result<String, String> {
    let meta = std::fs::metadata(target).map_err(|e| fs_error("edit", p, &e))?;
    if !meta.is_file() {
        return Err(format!("edit: {p}: not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "edit: {p} is {} bytes, exceeds {MAX_FILE_BYTES}-byte limit. The edit tool loads the whole file and cannot modify a file this large.",
            meta.len()
        ));
    }
    let bytes = std::fs::read(target).map_err(|e| fs_error("edit", p, &e))?;
    utf8("edit", p, bytes)
}

fn media_type(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        _ => return None,
    })
}

fn binary_block(target: &Path, p: &str, size: u64, media_type: &str) -> Result<Value, String> {
    let (kind, limit) = match media_type {
        "application/pdf" => ("document", MAX_PDF_BYTES),
        _ => ("image", MAX_IMAGE_BYTES),
    };
    if size > limit {
        return Err(format!(
            "read: {p} is {size} bytes, exceeds {limit}-byte limit for image/PDF files."
        ));
    }
    let bytes = std::fs::read(target).map_err(|e| fs_error("read", p, &e))?;
    let data = base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(json!({
        "type": kind,
        "source": {"type": "base64", "media_type": media_type, "data": data},
    }))
}

/// Lines `[start, end]` of a file. A file within the whole-read cap must be
/// UTF-8 throughout (as a whole read requires); a larger one is streamed
/// and only the selected lines are kept, under the same cap.
fn read_range(target: &Path, p: &str, size: u64, mut lines: LineRange) -> Result<String, String> {
    let io = |e: std::io::Error| fs_error("read", p, &e);
    if size <= MAX_FILE_BYTES {
        let bytes = std::fs::read(target).map_err(io)?;
        let whole = utf8("read", p, bytes)?;
        lines
            .feed(whole.as_bytes())
            .map_err(|()| lines.over_limit(p))?;
    } else if !lines.is_empty() {
        let mut f = std::fs::File::open(target).map_err(io)?;
        let mut buf = vec![0u8; CHUNK];
        while !lines.is_collected() {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            lines.feed(&buf[..n]).map_err(|()| lines.over_limit(p))?;
        }
    }
    utf8("read", p, lines.collected)
}

/// Collects lines `[start, end]` (1-based, inclusive; `end <= 0` means to
/// the end of the file) from consecutive chunks, keeping at most `limit`
/// bytes. Newlines between selected lines are kept; the last selected
/// line's newline is not, unless the range runs to the end of the file.
struct LineRange {
    /// As given, for the messages.
    asked: (i64, i64),
    /// 0-based, half-open.
    start: u64,
    end: u64,
    /// Index of the line the next byte belongs to.
    line: u64,
    limit: usize,
    collected: Vec<u8>,
}

impl LineRange {
    fn new(start: i64, end: i64, limit: usize) -> LineRange {
        LineRange {
            asked: (start, end),
            start: start.saturating_sub(1).max(0) as u64,
            end: if end > 0 { end as u64 } else { u64::MAX },
            line: 0,
            limit,
            collected: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    fn is_collected(&self) -> bool {
        self.line >= self.end
    }

    /// Takes the next chunk; `Err` once the selection passes the limit.
    fn feed(&mut self, chunk: &[u8]) -> Result<(), ()> {
        let mut rest = chunk;
        while !rest.is_empty() && !self.is_collected() {
            let newline = rest.iter().position(|&b| b == b'\n');
            let line_end = newline.unwrap_or(rest.len());
            if self.line >= self.start {
                self.collected.extend_from_slice(&rest[..line_end]);
                if newline.is_some() && self.line + 1 < self.end {
                    self.collected.push(b'\n');
                }
                if self.collected.len() > self.limit {
                    return Err(());
                }
            }
            let Some(nl) = newline else { break };
            self.line += 1;
            rest = &rest[nl + 1..];
        }
        Ok(())
    }

    fn over_limit(&self, p: &str) -> String {
        let limit = self.limit;
        if self.end - self.start == 1 {
            return format!(
                "read: line {} of {p} alone exceeds {limit}-byte limit. The read tool cannot return part of a line, so view_range cannot narrow this further.",
                self.start + 1
            );
        }
        let (s, e) = self.asked;
        format!(
            "read: view_range [{s}, {e}] of {p} exceeds {limit}-byte limit. Narrow the view_range to read a smaller portion."
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::call;
    use super::*;
    use crate::proto::Response;
    use std::os::unix::fs::symlink;

    fn work() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn run(dir: &tempfile::TempDir, input: Value) -> (Vec<Value>, bool) {
        let w = dir.path().to_str().unwrap();
        match call("read", &input, w, &[], &[]) {
            Response::ToolResult { content, is_error } => (content, is_error),
            other => panic!("{other:?}"),
        }
    }

    fn ok_text(dir: &tempfile::TempDir, input: Value) -> String {
        let (content, is_error) = run(dir, input);
        assert!(!is_error, "{content:?}");
        content[0]["text"].as_str().unwrap().to_string()
    }

    fn err_text(dir: &tempfile::TempDir, input: Value) -> String {
        let (content, is_error) = run(dir, input);
        assert!(is_error, "{content:?}");
        content[0]["text"].as_str().unwrap().to_string()
    }

    #[test]
    fn text_is_returned_verbatim() {
        let d = work();
        std::fs::write(d.path().join("a.txt"), "one\r\ntwo\n\tthree\n").unwrap();
        assert_eq!(
            ok_text(&d, json!({"file_path": "a.txt"})),
            "one\r\ntwo\n\tthree\n"
        );
        let abs = d.path().join("a.txt").display().to_string();
        assert_eq!(
            ok_text(&d, json!({"file_path": abs})),
            "one\r\ntwo\n\tthree\n"
        );
    }

    #[test]
    fn empty_files_read_no_output() {
        let d = work();
        std::fs::write(d.path().join("empty"), "").unwrap();
        assert_eq!(ok_text(&d, json!({"file_path": "empty"})), "(no output)");
    }

    #[test]
    fn view_range_selects_lines() {
        let d = work();
        std::fs::write(d.path().join("f"), "a\nb\nc\nd\n").unwrap();
        let cases = [
            (json!([2, 3]), "b\nc"),
            (json!([3, 0]), "c\nd\n"),
            (json!([3, -1]), "c\nd\n"),
            (json!([0, 1]), "a"),
            (json!([9, 12]), "(no output)"),
            (json!([3, 2]), "(no output)"),
            (json!([]), "a\nb\nc\nd\n"),
        ];
        for (range, want) in cases {
            let got = ok_text(&d, json!({"file_path": "f", "view_range": range}));
            assert_eq!(got, want, "{range}");
        }
        assert_eq!(
            err_text(&d, json!({"file_path": "f", "view_range": [1]})),
            "read: view_range must be [start_line, end_line]"
        );
    }

    #[test]
    fn large_files_need_a_view_range_and_stream_it() {
        let d = work();
        let line = "x".repeat(99) + "\n";
        let body = line.repeat(3000); // 300 000 bytes
        std::fs::write(d.path().join("big"), &body).unwrap();
        assert_eq!(
            err_text(&d, json!({"file_path": "big"})),
            "read: big is 300000 bytes, exceeds 262144-byte limit. Use the view_range parameter to read specific line ranges, e.g. view_range: [1, 500]."
        );
        let got = ok_text(&d, json!({"file_path": "big", "view_range": [2999, 0]}));
        assert_eq!(got, line.repeat(2));
        let got = ok_text(&d, json!({"file_path": "big", "view_range": [10, 11]}));
        assert_eq!(got, format!("{}\n{}", "x".repeat(99), "x".repeat(99)));
        assert_eq!(
            err_text(&d, json!({"file_path": "big", "view_range": [1, 0]})),
            "read: view_range [1, 0] of big exceeds 262144-byte limit. Narrow the view_range to read a smaller portion."
        );
    }

    #[test]
    fn a_single_overlong_line_cannot_be_narrowed() {
        let d = work();
        std::fs::write(d.path().join("long"), "y".repeat(300_000)).unwrap();
        assert_eq!(
            err_text(&d, json!({"file_path": "long", "view_range": [1, 1]})),
            "read: line 1 of long alone exceeds 262144-byte limit. The read tool cannot return part of a line, so view_range cannot narrow this further."
        );
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let d = work();
        std::fs::write(d.path().join("bin"), [0xff, 0xfe, 0x00]).unwrap();
        assert_eq!(
            err_text(&d, json!({"file_path": "bin"})),
            "read: bin: not valid UTF-8 text (binary files are only supported for image/PDF extensions)"
        );
    }

    #[test]
    fn io_errors_are_normalised() {
        let d = work();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        assert_eq!(
            err_text(&d, json!({"file_path": "missing"})),
            "read: missing: no such file or directory"
        );
        assert_eq!(
            err_text(&d, json!({"file_path": "dir"})),
            "read: dir: not a regular file"
        );
        let fifo = std::ffi::CString::new(d.path().join("fifo").to_str().unwrap()).unwrap();
        sandstone_sys::fs::mkfifo(&fifo, 0o600).unwrap();
        assert_eq!(
            err_text(&d, json!({"file_path": "fifo"})),
            "read: fifo: not a regular file"
        );
    }

    #[test]
    fn reads_outside_the_workdir_are_refused() {
        let d = work();
        let inner = d.path().join("w");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(d.path().join("secret"), "s").unwrap();
        symlink(d.path().join("secret"), inner.join("link")).unwrap();
        let w = inner.to_str().unwrap();
        let r = call("read", &json!({"file_path": "link"}), w, &[], &[]);
        let Response::ToolResult { content, is_error } = r else {
            panic!()
        };
        assert!(is_error);
        assert_eq!(
            content[0]["text"],
            "read: path 'link' is outside the session's working directory"
        );
    }

    #[test]
    fn images_and_pdfs_are_base64_blocks() {
        let d = work();
        std::fs::write(d.path().join("pic.PNG"), [0x89, b'P', b'N', b'G']).unwrap();
        let (content, is_error) = run(&d, json!({"file_path": "pic.PNG"}));
        assert!(!is_error);
        assert_eq!(
            content,
            vec![
                json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw=="}})
            ]
        );
        std::fs::write(d.path().join("doc.pdf"), b"%PDF").unwrap();
        let (content, _) = run(&d, json!({"file_path": "doc.pdf"}));
        assert_eq!(content[0]["type"], "document");
        assert_eq!(content[0]["source"]["media_type"], "application/pdf");
        assert_eq!(content[0]["source"]["data"], "JVBERg==");
        assert_eq!(
            err_text(&d, json!({"file_path": "doc.pdf", "view_range": [1, 2]})),
            "read: view_range is not supported for image/PDF files"
        );
    }

    #[test]
    fn oversized_images_are_refused() {
        let d = work();
        let f = std::fs::File::create(d.path().join("huge.jpg")).unwrap();
        f.set_len(MAX_IMAGE_BYTES + 1).unwrap();
        assert_eq!(
            err_text(&d, json!({"file_path": "huge.jpg"})),
            "read: huge.jpg is 3932161 bytes, exceeds 3932160-byte limit for image/PDF files."
        );
    }
}
