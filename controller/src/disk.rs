//! Disk faults for tests: a handle flipped at run time and a redb storage backend that obeys it.
//!
//! A member opened with a [`DiskFaults`] handle sends every write and fsync of its Raft log (a
//! [`FaultyBackend`] under redb) and of its snapshot file through the handle, which can fail
//! them with EIO or ENOSPC, delay fsync, or tear one write at a chosen byte and then refuse
//! everything, as a machine that lost power mid-write would. Production members get no handle
//! and take the plain paths. The counters say which faults really happened, so a test can prove
//! the fault it meant to inject was injected.

use std::fmt;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// Linux errno values the faults report, so callers see the OS error a real disk would give.
const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// The error a failing write reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFault {
    /// An I/O error (EIO): a bad sector, a dead disk.
    Eio,
    /// No space left on the device (ENOSPC).
    Enospc,
}

impl WriteFault {
    fn errno(self) -> i32 {
        match self {
            WriteFault::Eio => EIO,
            WriteFault::Enospc => ENOSPC,
        }
    }
}

/// How many faults were really injected, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// fsyncs that returned EIO.
    pub failed_syncs: u64,
    /// Writes (or file length changes) that returned EIO or ENOSPC.
    pub failed_writes: u64,
    /// fsyncs held back by a slow-disk delay.
    pub delayed_syncs: u64,
    /// Writes cut short at the armed byte (at most one per arming).
    pub torn_writes: u64,
    /// Operations refused after a tear, the "machine" being down.
    pub refused_after_crash: u64,
}

#[derive(Debug, Default)]
enum Tear {
    #[default]
    Off,
    /// The next writes pass until this many more bytes are written; the one crossing it is cut.
    Armed(u64),
    /// A write was torn: every later write, fsync and length change fails.
    Crashed,
}

#[derive(Default)]
struct Inner {
    fail_sync: AtomicBool,
    /// 0: writes succeed; otherwise the errno they fail with.
    fail_writes: AtomicI32,
    sync_delay_ms: AtomicU64,
    tear: Mutex<Tear>,
    failed_syncs: AtomicU64,
    failed_writes: AtomicU64,
    delayed_syncs: AtomicU64,
    torn_writes: AtomicU64,
    refused_after_crash: AtomicU64,
}

/// A shared switchboard of disk faults; clones control the same faults.
#[derive(Clone, Default)]
pub struct DiskFaults(Arc<Inner>);

impl fmt::Debug for DiskFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskFaults")
            .field("fail_sync", &self.0.fail_sync.load(Ordering::Relaxed))
            .field("fail_writes", &self.0.fail_writes.load(Ordering::Relaxed))
            .field(
                "sync_delay_ms",
                &self.0.sync_delay_ms.load(Ordering::Relaxed),
            )
            .field("counts", &self.counts())
            .finish()
    }
}

/// What a write may do under the current faults.
#[derive(Debug, PartialEq, Eq)]
pub enum WritePlan {
    /// Write everything.
    Whole,
    /// Write only this many leading bytes, then report EIO: the write was torn.
    Torn(usize),
}

fn os_error(errno: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno)
}

impl DiskFaults {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every fsync fail with EIO (or succeed again).
    pub fn fail_fsync(&self, on: bool) {
        self.0.fail_sync.store(on, Ordering::SeqCst);
    }

    /// Makes every write fail with `fault`; `None` lets writes through again.
    pub fn fail_writes(&self, fault: Option<WriteFault>) {
        let errno = fault.map_or(0, WriteFault::errno);
        self.0.fail_writes.store(errno, Ordering::SeqCst);
    }

    /// Holds every fsync back by `delay` before doing it: a slow or overloaded disk.
    pub fn slow_fsync(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.0.sync_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Lets `k` more bytes be written, cuts the write that crosses byte `k` there, and then fails
    /// every write, fsync and length change: power lost in the middle of a write.
    pub fn tear_next_write_at(&self, k: u64) {
        *self.tear() = Tear::Armed(k);
    }

    /// Whether a tear has happened and the "machine" is down.
    pub fn crashed(&self) -> bool {
        matches!(*self.tear(), Tear::Crashed)
    }

    /// Clears every fault (a crash included); the counters are kept.
    pub fn clear(&self) {
        self.fail_fsync(false);
        self.fail_writes(None);
        self.slow_fsync(Duration::ZERO);
        *self.tear() = Tear::Off;
    }

    pub fn counts(&self) -> FaultCounts {
        let c = |a: &AtomicU64| a.load(Ordering::SeqCst);
        FaultCounts {
            failed_syncs: c(&self.0.failed_syncs),
            failed_writes: c(&self.0.failed_writes),
            delayed_syncs: c(&self.0.delayed_syncs),
            torn_writes: c(&self.0.torn_writes),
            refused_after_crash: c(&self.0.refused_after_crash),
        }
    }

    fn tear(&self) -> std::sync::MutexGuard<'_, Tear> {
        self.0.tear.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refuse_if_crashed(&self) -> std::io::Result<()> {
        if self.crashed() {
            self.0.refused_after_crash.fetch_add(1, Ordering::SeqCst);
            return Err(os_error(EIO));
        }
        Ok(())
    }

    /// Decides the fate of a write of `len` bytes.
    pub fn before_write(&self, len: usize) -> std::io::Result<WritePlan> {
        self.refuse_if_crashed()?;
        let errno = self.0.fail_writes.load(Ordering::SeqCst);
        if errno != 0 {
            self.0.failed_writes.fetch_add(1, Ordering::SeqCst);
            return Err(os_error(errno));
        }
        let mut tear = self.tear();
        if let Tear::Armed(left) = *tear {
            let len64 = len as u64;
            if len64 <= left {
                *tear = Tear::Armed(left - len64);
            } else {
                *tear = Tear::Crashed;
                self.0.torn_writes.fetch_add(1, Ordering::SeqCst);
                // left < len, so it fits in usize.
                return Ok(WritePlan::Torn(left as usize));
            }
        }
        Ok(WritePlan::Whole)
    }

    /// Delays and fails an fsync as the faults say; Ok means do the real fsync.
    pub fn before_sync(&self) -> std::io::Result<()> {
        self.refuse_if_crashed()?;
        let ms = self.0.sync_delay_ms.load(Ordering::SeqCst);
        if ms > 0 {
            self.0.delayed_syncs.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(ms));
        }
        if self.0.fail_sync.load(Ordering::SeqCst) {
            self.0.failed_syncs.fetch_add(1, Ordering::SeqCst);
            return Err(os_error(EIO));
        }
        Ok(())
    }

    /// A change of file length or a rename: refused like a write.
    pub fn before_metadata_change(&self) -> std::io::Result<()> {
        self.refuse_if_crashed()?;
        let errno = self.0.fail_writes.load(Ordering::SeqCst);
        if errno != 0 {
            self.0.failed_writes.fetch_add(1, Ordering::SeqCst);
            return Err(os_error(errno));
        }
        Ok(())
    }

    /// Writes `data` to `file` through the faults: whole, torn (then EIO), or not at all.
    pub fn write_all(&self, file: &mut std::fs::File, data: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        match self.before_write(data.len())? {
            WritePlan::Whole => file.write_all(data),
            WritePlan::Torn(k) => {
                file.write_all(&data[..k])?;
                Err(os_error(EIO))
            }
        }
    }
}

/// redb's file backend with [`DiskFaults`] in front of every write, fsync and length change.
#[derive(Debug)]
pub struct FaultyBackend {
    file: FileBackend,
    faults: DiskFaults,
}

impl FaultyBackend {
    pub fn new(file: FileBackend, faults: DiskFaults) -> Self {
        FaultyBackend { file, faults }
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.faults.before_metadata_change()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.faults.before_sync()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        match self.faults.before_write(data.len())? {
            WritePlan::Whole => self.file.write(offset, data),
            WritePlan::Torn(k) => {
                self.file.write(offset, &data[..k])?;
                Err(os_error(EIO))
            }
        }
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.file.close()
    }

    // Locks go to the file untouched, so a faulty member still cannot share its log.
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fault_really_fails_with_the_os_error_it_names() {
        let f = DiskFaults::new();
        assert_eq!(f.before_write(10).expect("no fault yet"), WritePlan::Whole);
        f.fail_fsync(true);
        let e = f.before_sync().expect_err("fsync fails");
        assert_eq!(e.raw_os_error(), Some(EIO));
        f.fail_writes(Some(WriteFault::Enospc));
        let e = f.before_write(1).expect_err("write fails");
        assert_eq!(e.raw_os_error(), Some(ENOSPC));
        assert!(e.to_string().contains("No space left on device"), "{e}");
        f.fail_writes(Some(WriteFault::Eio));
        let e = f.before_metadata_change().expect_err("set_len fails");
        assert_eq!(e.raw_os_error(), Some(EIO));
        let c = f.counts();
        assert_eq!((c.failed_syncs, c.failed_writes), (1, 2));
        f.clear();
        assert!(f.before_sync().is_ok() && f.before_write(5).is_ok());
    }

    #[test]
    fn a_tear_cuts_the_write_crossing_the_byte_then_refuses_everything() {
        let f = DiskFaults::new();
        f.tear_next_write_at(10);
        assert_eq!(f.before_write(6).expect("whole"), WritePlan::Whole);
        assert_eq!(f.before_write(6).expect("torn"), WritePlan::Torn(4));
        assert!(f.crashed());
        assert!(f.before_write(1).is_err());
        assert!(f.before_sync().is_err());
        assert_eq!(f.counts().torn_writes, 1);
        assert_eq!(f.counts().refused_after_crash, 2);
        f.clear();
        assert!(!f.crashed() && f.before_sync().is_ok());
    }

    #[test]
    fn a_slow_fsync_is_held_back_and_counted() {
        let f = DiskFaults::new();
        f.slow_fsync(Duration::from_millis(30));
        let t = std::time::Instant::now();
        f.before_sync().expect("slow but fine");
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert_eq!(f.counts().delayed_syncs, 1);
    }
}
