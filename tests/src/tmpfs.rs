//! A tmpfs of a test's own (root only): a real disk that can be made full by shrinking it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A tmpfs mounted at a directory, unmounted when dropped (after the processes using it, which
/// must be dropped first: declare them later, or drop them explicitly).
pub struct Tmpfs(PathBuf);

/// How much of a tmpfs is in use and its page size, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub used: u64,
    pub size: u64,
    pub page: u64,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as mount(8) takes it: `384k`, `64m`) at `at`, made if missing.
    pub fn mount(at: PathBuf, size: &str) -> Result<Tmpfs> {
        std::fs::create_dir_all(&at).with_context(|| format!("mount point {}", at.display()))?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("twill-test")
            .arg(&at)
            .status()
            .context("run mount")?;
        if !ok.success() {
            bail!("mount tmpfs at {}: {ok}", at.display());
        }
        Ok(Tmpfs(at))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Remounts it at `size` (bytes with a suffix as for [`Tmpfs::mount`]). Fails if less than
    /// what is in use.
    pub fn resize(&self, size: &str) -> Result<()> {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .context("run mount")?;
        if !out.status.success() {
            bail!(
                "remount {} at {size}: {}: {}",
                self.0.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Its use, from statvfs(3).
    pub fn usage(&self) -> Result<Usage> {
        let path = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes())
            .context("mount point with a NUL byte")?;
        // SAFETY: statvfs is plain data, all zeros is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a pointer to a statvfs of our own.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("statvfs {}", self.0.display()));
        }
        let page = st.f_frsize as u64;
        Ok(Usage {
            used: (st.f_blocks as u64).saturating_sub(st.f_bfree as u64) * page,
            size: st.f_blocks as u64 * page,
            page,
        })
    }

    /// Shrinks it to what it uses now, in whole pages (never to zero, which tmpfs reads as no
    /// limit), so that the next write needing a page fails with ENOSPC. A write landing between
    /// the look and the remount makes the remount fail (less than in use); it is tried again.
    /// Returns the new size in bytes.
    pub fn fill(&self) -> Result<u64> {
        let mut last = None;
        for _ in 0..20 {
            let u = self.usage()?;
            let size = u.used.max(u.page);
            match self.resize(&size.to_string()) {
                Ok(()) => return Ok(size),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
            .with_context(|| format!("shrink {} to its use", self.0.display()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
