//! A controller cluster of real `twill controller` processes on loopback, for benchmarks and
//! tests that kill members with signals.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use twill_client::Client;

pub struct TwillProcs {
    bin: PathBuf,
    dir: PathBuf,
    ports: Vec<u16>,
    extra: Vec<String>,
    children: Vec<Option<Child>>,
    /// Members' stderr goes to `m<i>.log` beside their data directories instead of the test's.
    logs: bool,
}

impl TwillProcs {
    /// Starts members 1..=n with data directories under `dir` and waits for a leader.
    pub async fn start(bin: &Path, n: usize, dir: &Path, extra: &[&str]) -> Result<TwillProcs> {
        Self::start_with(bin, n, dir, extra, false).await
    }

    /// [`TwillProcs::start`], with each member's log in a file when `logs` (see [`Self::log`]).
    pub async fn start_with(
        bin: &Path,
        n: usize,
        dir: &Path,
        extra: &[&str],
        logs: bool,
    ) -> Result<TwillProcs> {
        let mut ports = Vec::new();
        for _ in 0..n {
            ports.push(crate::free_port()?);
        }
        let mut p = TwillProcs {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            ports,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            children: (0..n).map(|_| None).collect(),
            logs,
        };
        for i in 0..n {
            p.spawn(i)?;
        }
        p.wait_leader(Duration::from_secs(30)).await?;
        Ok(p)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("controller")
            .arg("--id")
            .arg((i + 1).to_string())
            .arg("--data-dir")
            .arg(self.dir.join(format!("m{}", i + 1)))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.ports[i]));
        if self.ports.len() > 1 {
            for (j, port) in self.ports.iter().enumerate() {
                cmd.arg("--peer")
                    .arg(format!("{}=https://127.0.0.1:{port}", j + 1));
            }
        }
        // Every member starts with the tests' CA, so the harness's admin credential works.
        if !self.extra.iter().any(|a| a == "--insecure") {
            cmd.arg("--ca").arg(crate::write_ca(&self.dir)?);
        }
        cmd.args(&self.extra)
            .env(
                "TWILL_LOG",
                std::env::var("TWILL_LOG").unwrap_or_else(|_| "warn,openraft=off".into()),
            )
            .stdout(Stdio::null())
            .stderr(if self.logs {
                Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(self.dir.join(format!("m{}.log", i + 1)))?,
                )
            } else {
                Stdio::inherit()
            });
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        self.children[i] = Some(child);
        Ok(())
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect()
    }

    /// Member `i`'s log so far (members started with logs).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("m{}.log", i + 1))).unwrap_or_default()
    }

    /// How member `i` ended, if it has exited on its own.
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let status = self.children[i].as_mut()?.try_wait().ok()??;
        self.children[i] = None;
        Some(status)
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(|c| c.id())
    }

    /// Member `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("m{}", i + 1))
    }

    /// A watch on running member `i`'s snapshot writes, to SIGKILL it in the middle of one.
    pub fn watch_snapshot(&self, i: usize) -> Result<SnapshotWatch> {
        let pid = self
            .pid(i)
            .with_context(|| format!("member {} is not running", i + 1))?;
        SnapshotWatch::new(&self.data_dir(i), pid)
    }

    /// The index of the member every running member names as leader.
    pub async fn wait_leader(&self, within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        let urls = self.urls();
        loop {
            let mut seen = Vec::new();
            for (i, u) in urls.iter().enumerate() {
                if self.children[i].is_some() {
                    seen.push(
                        Client::status_of(u, Some(crate::admin_tls()))
                            .await
                            .ok()
                            .map(|s| (s.leader, s.applied_index)),
                    );
                }
            }
            if let Some(Some((l, applied))) = seen.first().cloned() {
                let idx = l as usize;
                if l != 0
                    && applied > 0
                    && idx <= urls.len()
                    && self.children[idx - 1].is_some()
                    && seen.iter().all(|s| s.map(|x| x.0) == Some(l))
                {
                    return Ok(idx - 1);
                }
            }
            if Instant::now() > deadline {
                bail!("no agreed leader within {within:?}: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for an agreed leader and every running member applied up to its commit point.
    pub async fn wait_caught_up(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let leader = self.wait_leader(within).await?;
        let urls = self.urls();
        let target = Client::status_of(&urls[leader], Some(crate::admin_tls()))
            .await?
            .applied_index;
        for (i, u) in urls.iter().enumerate() {
            if self.children[i].is_none() {
                continue;
            }
            loop {
                if let Ok(s) = Client::status_of(u, Some(crate::admin_tls())).await {
                    if s.applied_index >= target {
                        break;
                    }
                }
                if Instant::now() > deadline {
                    bail!(
                        "member {} did not catch up to {target} within {within:?}",
                        i + 1
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Waits up to `within` for member `i`'s next snapshot write and SIGKILLs it at the moment
    /// `at` names, or, when none begins in time, kills it anyway. Returns whether the kill was
    /// sent during a write, and what its data directory held once it was dead.
    pub async fn kill_mid_snapshot(
        &mut self,
        i: usize,
        within: Duration,
        at: KillAt,
    ) -> Result<(bool, SnapshotFiles)> {
        let w = self.watch_snapshot(i)?;
        let during_write =
            tokio::task::spawn_blocking(move || w.kill_during_write(within, at)).await??;
        // Reaps it, or kills it when no write came.
        self.kill(i);
        Ok((during_write, SnapshotFiles::of(&self.data_dir(i))))
    }

    /// How long member `i`'s next whole snapshot write takes (see
    /// [`SnapshotWatch::time_write`]); `None` if none is done within `within`.
    pub async fn time_snapshot_write(
        &self,
        i: usize,
        within: Duration,
    ) -> Result<Option<Duration>> {
        let w = self.watch_snapshot(i)?;
        tokio::task::spawn_blocking(move || w.time_write(within)).await?
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    /// Replaces member `i`'s binary as an upgrade does: SIGTERM (SIGKILL after 10 s), then
    /// the member starts again from its data directory running `bin`. Every later restart of
    /// any member runs `bin` too.
    pub fn replace(&mut self, i: usize, bin: &Path) -> Result<()> {
        if let Some(mut c) = self.children[i].take() {
            // SAFETY: kill(2) on a child this harness started and still owns.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    bail!("member {} ignored SIGTERM for 10 s", i + 1);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.bin = bin.to_path_buf();
        self.spawn(i)
    }
}

impl Drop for TwillProcs {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// The temporary file a controller writes its snapshot to before renaming it over
/// [`twill_controller::state_machine::SNAPSHOT_FILE`].
fn snapshot_tmp() -> String {
    format!("{}.tmp", twill_controller::state_machine::SNAPSHOT_FILE)
}

/// When, in a snapshot write, [`SnapshotWatch::kill_during_write`] sends SIGKILL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillAt {
    /// As soon as the temporary file is opened: before or while its bytes are written.
    Open,
    /// Once the temporary file has bytes: while the rest is written or it is fsynced.
    FirstBytes,
}

/// Watches a member's data directory with inotify for its snapshot writes (temporary file
/// opened, written, renamed over `snapshot.bin`). Events, not polling: a write lasts a few
/// milliseconds (mostly its fsync), and a kill must land inside it.
pub struct SnapshotWatch {
    fd: std::os::fd::OwnedFd,
    dir: PathBuf,
    pid: u32,
}

impl SnapshotWatch {
    fn new(dir: &Path, pid: u32) -> Result<SnapshotWatch> {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: inotify_init1 takes flags only; a negative return is checked below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("inotify_init1");
        }
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .with_context(|| format!("data dir {} has a NUL", dir.display()))?;
        let mask = libc::IN_OPEN | libc::IN_MODIFY | libc::IN_MOVED_FROM;
        // SAFETY: a valid inotify descriptor and a NUL-terminated path that outlives the call.
        let wd = unsafe {
            libc::inotify_add_watch(std::os::fd::AsRawFd::as_raw_fd(&fd), path.as_ptr(), mask)
        };
        if wd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("inotify_add_watch {}", dir.display()));
        }
        Ok(SnapshotWatch {
            fd,
            dir: dir.to_path_buf(),
            pid,
        })
    }

    /// The masks of the events on the temporary snapshot file that arrive within `wait`
    /// (an empty list when none does).
    fn events(&self, wait: Duration) -> Result<Vec<u32>> {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd, valid for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(Vec::new());
            }
            return Err(e).context("poll inotify");
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads at most buf.len() bytes into buf.
            let got = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            };
            if got < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return Ok(out);
                }
                return Err(e).context("read inotify");
            }
            out.extend(tmp_events(&buf[..got as usize]));
        }
    }

    /// Forgets the events queued so far: only a write that begins from now on counts.
    fn drain(&self) -> Result<()> {
        self.events(Duration::ZERO).map(|_| ())
    }

    /// Waits up to `within` for a snapshot write to begin, then SIGKILLs the member at the
    /// moment `at` names. Returns whether it did; when no write began in time the member is
    /// left running.
    pub fn kill_during_write(&self, within: Duration, at: KillAt) -> Result<bool> {
        self.drain()?;
        let deadline = Instant::now() + within;
        let mut opened = false;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            for mask in self.events(left)? {
                opened |= mask & libc::IN_OPEN != 0;
                if mask & libc::IN_MOVED_FROM != 0 {
                    // That write finished before its first bytes were seen: wait for the next.
                    opened = false;
                }
                let due = match at {
                    KillAt::Open => opened,
                    KillAt::FirstBytes => {
                        opened
                            && mask & libc::IN_MODIFY != 0
                            && std::fs::metadata(self.dir.join(snapshot_tmp()))
                                .is_ok_and(|m| m.len() > 0)
                    }
                };
                if due {
                    // SAFETY: kill(2) on a child of this process that has not been reaped,
                    // so its pid cannot have been reused.
                    if unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) } != 0 {
                        return Err(std::io::Error::last_os_error()).context("SIGKILL");
                    }
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// How long the next whole snapshot write takes, from the temporary file's opening to its
    /// rename, as this thread sees the events (so a little later each, never earlier); `None`
    /// if none begins and ends within `within`.
    pub fn time_write(&self, within: Duration) -> Result<Option<Duration>> {
        self.drain()?;
        let deadline = Instant::now() + within;
        let mut opened: Option<Instant> = None;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let events = self.events(left)?;
            let read_at = Instant::now();
            for mask in events {
                if mask & libc::IN_MOVED_FROM != 0 {
                    match opened {
                        Some(t) if t < read_at => return Ok(Some(read_at - t)),
                        // Opened and renamed within one read: this thread woke too late to
                        // time it; wait for the next write.
                        _ => opened = None,
                    }
                } else if mask & libc::IN_OPEN != 0 && opened.is_none() {
                    opened = Some(read_at);
                }
            }
        }
        Ok(None)
    }
}

/// The masks of the events in an inotify read that name the temporary snapshot file. Each event
/// is a 16-byte header (wd, mask, cookie, name length) and the NUL-padded name.
fn tmp_events(mut buf: &[u8]) -> Vec<u32> {
    let want = snapshot_tmp();
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let mask = word(4);
        let len = word(12) as usize;
        let Some(name) = buf.get(16..16 + len) else {
            break;
        };
        let name = name.split(|b| *b == 0).next().unwrap_or_default();
        if name == want.as_bytes() {
            out.push(mask);
        }
        buf = &buf[16 + len..];
    }
    out
}

/// What a member's data directory held of its snapshot after it died.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFiles {
    /// The temporary file's length, if it is there: a write whose rename never happened.
    pub tmp_len: Option<u64>,
    /// The whole length the temporary file's header announces, if the header was written.
    pub tmp_announced: Option<u64>,
    /// The snapshot's length, if there is one.
    pub snapshot_len: Option<u64>,
}

impl SnapshotFiles {
    /// Reads member data directory `dir`.
    pub fn of(dir: &Path) -> SnapshotFiles {
        let tmp = std::fs::read(dir.join(snapshot_tmp())).ok();
        // Magic (8 bytes), CRC (4), body length (8), body.
        let tmp_announced = tmp.as_ref().and_then(|b| {
            let len: [u8; 8] = b.get(12..20)?.try_into().ok()?;
            Some(u64::from_le_bytes(len).saturating_add(20))
        });
        SnapshotFiles {
            tmp_len: tmp.map(|b| b.len() as u64),
            tmp_announced,
            snapshot_len: std::fs::metadata(
                dir.join(twill_controller::state_machine::SNAPSHOT_FILE),
            )
            .ok()
            .map(|m| m.len()),
        }
    }

    /// The kill came before the rename that would have ended the write.
    pub fn mid_write(&self) -> bool {
        self.tmp_len.is_some()
    }
}

impl std::fmt::Display for SnapshotFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.tmp_len, self.tmp_announced) {
            (None, _) => f.write_str("no temporary file (its rename had happened)")?,
            (Some(n), Some(full)) => write!(f, "temporary file left with {n} of {full} bytes")?,
            (Some(n), None) => write!(f, "temporary file left with {n} bytes (header unwritten)")?,
        }
        match self.snapshot_len {
            Some(n) => write!(f, ", previous snapshot {n} bytes"),
            None => f.write_str(", no previous snapshot"),
        }
    }
}
