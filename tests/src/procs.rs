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
