//! Thin wrappers over raw syscalls that name the step on failure.

use crate::{Error, Result};
use std::ffi::CString;
use std::path::Path;

pub(crate) fn cstr(p: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Other(format!("path has NUL: {p:?}")))
}

/// Returns `Ok(ret)` or the errno wrapped with `step`.
pub(crate) fn check(ret: libc::c_long, step: impl FnOnce() -> String) -> Result<libc::c_long> {
    if ret < 0 {
        Err(Error::sys(step(), std::io::Error::last_os_error()))
    } else {
        Ok(ret)
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
    let fstype_c = fstype.map(|s| CString::new(s).unwrap());
    let data_c = data.map(|s| CString::new(s).unwrap());
    let ret = unsafe {
        libc::mount(
            src_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            target_c.as_ptr(),
            fstype_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            flags,
            data_c
                .as_ref()
                .map_or(std::ptr::null(), |c| c.as_ptr() as *const libc::c_void),
        )
    };
    check(ret as libc::c_long, || {
        format!(
            "mount {:?} on {:?} ({})",
            src,
            target,
            fstype.unwrap_or("bind")
        )
    })?;
    Ok(())
}

pub(crate) fn prctl(option: libc::c_int, arg: libc::c_ulong, step: &str) -> Result<()> {
    let ret = unsafe { libc::prctl(option, arg, 0, 0, 0) };
    check(ret as libc::c_long, || step.to_string())?;
    Ok(())
}
