//! Paths made C strings, and failed system calls named by their step, over
//! `sandstone_sys`'s wrappers.

use crate::{Error, Result};
use std::ffi::CString;
use std::path::Path;

pub(crate) fn cstr(p: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Other(format!("path has NUL: {p:?}")))
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Other(format!("mount argument has NUL: {s:?}")))
}

/// Names the step a failed system call was part of.
pub(crate) trait Step<T> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Step<T> for std::io::Result<T> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::sys(what(), e))
    }
}

pub(crate) fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<()> {
    let src_c = src.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    let fstype_c = fstype.map(cstring).transpose()?;
    let data_c = data.map(cstring).transpose()?;
    sandstone_sys::mount::mount(
        src_c.as_deref(),
        &target_c,
        fstype_c.as_deref(),
        flags,
        data_c.as_deref(),
    )
    .step(|| {
        format!(
            "mount {:?} on {:?} ({})",
            src,
            target,
            fstype.unwrap_or("bind")
        )
    })
}
