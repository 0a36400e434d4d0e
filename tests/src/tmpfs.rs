//! A size-limited tmpfs mounted by a test (root only), for a node's data directory whose disk
//! must fill up without touching the shared disk: the mount holds at most `size` bytes of
//! memory, O_DIRECT works on tmpfs (Linux >= 6.6). Unmounted on drop, also when the test
//! fails (lazily if a process still holds it open).
//!
//! Depends on std, anyhow and libc only, so that net/tests can include it with `#[path]`.

#![allow(dead_code)]

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// A mounted tmpfs.
pub struct Tmpfs {
    pub path: PathBuf,
    pub size_mib: u64,
    mounted: bool,
}

fn cstring(p: &Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("a path with a NUL byte")
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` MiB at `path` (created); `Ok(Err(reason))` when this
    /// process may not (not root, or mounting refused, e.g. in an unprivileged container).
    pub fn mount(path: &Path, size_mib: u64) -> anyhow::Result<Result<Tmpfs, String>> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(Err("not root (a tmpfs mount needs root)".into()));
        }
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let target = cstring(path)?;
        let opts = CString::new(format!("size={size_mib}m,mode=0700"))?;
        // SAFETY: NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            return Ok(Err(format!("mounting a tmpfs refused: {e}")));
        }
        Ok(Ok(Tmpfs {
            path: path.to_path_buf(),
            size_mib,
            mounted: true,
        }))
    }

    /// Writes a ballast file until the filesystem is full (ENOSPC); returns its size. Bounded by
    /// the mount's size.
    pub fn fill(&self, name: &str) -> anyhow::Result<u64> {
        let path = self.path.join(name);
        let mut f = std::fs::File::create(&path).context("creating the ballast file")?;
        let chunk = vec![0xa5u8; 64 << 10];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e).context("writing the ballast file"),
            }
        }
        // Partial pages: the last bytes a smaller write still fits.
        let mut small = [0xa5u8; 512];
        while let Ok(n @ 1..) = f.write(&small[..]) {
            written += n as u64;
            small[0] = small[0].wrapping_add(1);
        }
        Ok(written)
    }

    /// Removes the ballast file (space returns at once on tmpfs).
    pub fn drain(&self, name: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.path.join(name)).context("removing the ballast file")
    }

    /// Unmounts now (lazily if busy).
    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        self.mounted = false;
        let Ok(target) = cstring(&self.path) else {
            return;
        };
        // SAFETY: a NUL-terminated path that outlives the calls.
        unsafe {
            if libc::umount2(target.as_ptr(), 0) != 0 {
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        self.unmount();
    }
}
