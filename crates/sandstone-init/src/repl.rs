//! REPL interpreters. Each runs a small driver that reads code from fd 3,
//! runs it in one persistent interpreter state and reports completion (the
//! exit status) as a line on fd 4, so output never needs in-band markers and
//! the context's stdin stays free for the code's own input.

use crate::procs::Proc;

/// bash: `eval` in the driver's own shell keeps cwd, variables, functions
/// and background jobs between executions. Code arrives NUL-terminated.
const BASH_DRIVER: &str = r#"while IFS= read -r -d '' __sandstone_code <&3; do eval "$__sandstone_code"; printf '%d\n' "$?" >&4; done"#;

/// python: code arrives as 8 hex digits of length then UTF-8 source. A final
/// expression's value is printed, as the interactive interpreter does.
const PYTHON_DRIVER: &str = r#"
import ast, os, sys, traceback
def __sandstone_loop():
    ctl = os.fdopen(3, 'rb', buffering=0)
    st = os.fdopen(4, 'w', buffering=1)
    g = {'__name__': '__main__', '__builtins__': __builtins__}
    def take(n):
        b = b''
        while len(b) < n:
            c = ctl.read(n - len(b))
            if not c:
                raise EOFError
            b += c
        return b
    while True:
        try:
            src = take(int(take(8), 16)).decode()
        except EOFError:
            return
        code = 0
        try:
            tree = ast.parse(src, '<context>', 'exec')
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            exec(compile(tree, '<context>', 'exec'), g)
            if last is not None:
                v = eval(compile(last, '<context>', 'eval'), g)
                if v is not None:
                    print(repr(v))
        except SystemExit:
            raise
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        st.write('%d\n' % code)
__sandstone_loop()
"#;

/// A REPL language no driver exists for.
#[derive(Debug, thiserror::Error)]
#[error("unsupported REPL language: {0} (use bash or python)")]
pub struct UnsupportedLanguage(pub String);

/// The interpreter command for `language`.
pub fn command(language: &str) -> Result<(String, Vec<String>), UnsupportedLanguage> {
    match language {
        "bash" | "shell" | "sh" => Ok((
            "bash".into(),
            vec![
                "--noprofile".into(),
                "--norc".into(),
                "-c".into(),
                BASH_DRIVER.into(),
            ],
        )),
        "python" | "python3" => Ok((
            "python3".into(),
            vec!["-u".into(), "-c".into(), PYTHON_DRIVER.into()],
        )),
        other => Err(UnsupportedLanguage(other.to_string())),
    }
}

/// Frames `code` for the context's driver.
pub fn frame(proc: &Proc, code: &str) -> Vec<u8> {
    match &proc.kind {
        crate::proto::ProcKind::Repl { language } if language.starts_with("py") => {
            let mut v = format!("{:08x}", code.len()).into_bytes();
            v.extend_from_slice(code.as_bytes());
            v
        }
        _ => {
            let mut v = code.as_bytes().to_vec();
            v.push(0);
            v
        }
    }
}
