//! The writing half of a session's connection, in a task of its own. A peer that stops reading
//! shuts its TCP window and our writes wait; only this task waits, so the session goes on
//! reading, answering and running its hold timer. The send hold timer (RFC 9687) lives here,
//! where progress is seen: a write that gets no byte through for that long ends the connection.

use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a closing connection's last bytes (a NOTIFICATION) may take. A peer that reads
/// nothing would otherwise keep the connection, and its socket buffers, for a whole send hold
/// time after the session ended.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// One queued piece is written (the kernel has all of it).
    Wrote,
    /// The connection failed under a write.
    Failed,
    /// The peer took nothing for the send hold time.
    Stalled,
}

pub(super) struct Writer {
    /// Unbounded, because the session bounds it: it queues one batch of UPDATEs at a time and
    /// otherwise only its own few messages (OPEN, KEEPALIVE, NOTIFICATION).
    queue: Option<mpsc::UnboundedSender<(Vec<u8>, Duration)>>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    /// Pieces queued and not yet written.
    in_flight: usize,
    task: Option<JoinHandle<()>>,
}

impl Writer {
    pub(super) fn spawn(half: impl AsyncWrite + Unpin + Send + 'static) -> Writer {
        let (queue, pieces) = mpsc::unbounded_channel();
        let (done, outcomes) = mpsc::unbounded_channel();
        Writer {
            queue: Some(queue),
            outcomes,
            in_flight: 0,
            task: Some(tokio::spawn(write(half, pieces, done))),
        }
    }

    /// Queues `bytes`, to be written with no pause longer than `send_hold`; `false` once the
    /// writer has given up (the connection failed or stalled).
    pub(super) fn send(&mut self, bytes: Vec<u8>, send_hold: Duration) -> bool {
        let queued = self
            .queue
            .as_ref()
            .is_some_and(|q| q.send((bytes, send_hold)).is_ok());
        if queued {
            self.in_flight += 1;
        }
        queued
    }

    /// Everything queued has been written: room for the next batch.
    pub(super) fn idle(&self) -> bool {
        self.in_flight == 0
    }

    /// What became of the next queued piece. Cancel-safe, so it can sit in a `select!`.
    pub(super) async fn outcome(&mut self) -> Outcome {
        // A task that is gone cannot write any more: that is a failed connection.
        let o = self.outcomes.recv().await.unwrap_or(Outcome::Failed);
        if o == Outcome::Wrote {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        o
    }

    /// Lets what is queued (a last NOTIFICATION) go out, then closes the writing half; a peer
    /// that takes nothing gets [`CLOSE_GRACE`] before the connection is dropped under it.
    pub(super) fn close(mut self) {
        // Without its sender the task ends once it has written what is queued.
        self.queue = None;
        let Some(mut task) = self.task.take() else {
            return;
        };
        tokio::spawn(async move {
            if tokio::time::timeout(CLOSE_GRACE, &mut task).await.is_err() {
                task.abort();
            }
        });
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // A session dropped half-way (its task aborted) takes its connection with it.
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

async fn write(
    mut half: impl AsyncWrite + Unpin,
    mut pieces: mpsc::UnboundedReceiver<(Vec<u8>, Duration)>,
    done: mpsc::UnboundedSender<Outcome>,
) {
    while let Some((bytes, send_hold)) = pieces.recv().await {
        let mut at = 0;
        while at < bytes.len() {
            // The send hold timer starts again with every byte the peer takes (RFC 9687): a
            // slow peer that keeps reading is never cut off, however long the table takes.
            match tokio::time::timeout(send_hold, half.write(&bytes[at..])).await {
                Ok(Ok(n)) if n > 0 => at += n,
                Ok(_) => {
                    let _ = done.send(Outcome::Failed);
                    return;
                }
                Err(_) => {
                    let _ = done.send(Outcome::Stalled);
                    return;
                }
            }
        }
        let _ = done.send(Outcome::Wrote);
    }
    let _ = half.shutdown().await;
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    const HOLD: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_takes_nothing_stalls_the_writer_after_the_send_hold_time() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut w = Writer::spawn(ours);
        assert!(w.send(vec![1; 32], HOLD));
        assert_eq!(w.outcome().await, Outcome::Wrote);
        assert!(w.idle());
        let start = tokio::time::Instant::now();
        assert!(w.send(vec![2; 1000], HOLD));
        assert!(!w.idle());
        assert_eq!(w.outcome().await, Outcome::Stalled);
        assert!(start.elapsed() >= HOLD);
        assert!(
            !w.send(vec![3], HOLD),
            "a stalled writer takes nothing more"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
        let (ours, mut theirs) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 16];
            while got.len() < 4000 {
                // 250 reads a quarter of the send hold time apart: the whole takes far longer
                // than the send hold time, each pause far less.
                tokio::time::sleep(HOLD / 4).await;
                let n = theirs.read(&mut chunk).await.expect("read");
                got.extend_from_slice(&chunk[..n]);
            }
            got
        });
        let mut w = Writer::spawn(ours);
        let start = tokio::time::Instant::now();
        assert!(w.send(vec![7; 4000], HOLD));
        assert_eq!(w.outcome().await, Outcome::Wrote);
        assert!(start.elapsed() > 10 * HOLD);
        assert_eq!(reader.await.expect("reader"), vec![7; 4000]);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_sends_what_is_queued_then_ends_the_stream() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut w = Writer::spawn(ours);
        assert!(w.send(b"last words".to_vec(), HOLD));
        w.close();
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"last words");
    }

    #[tokio::test(start_paused = true)]
    async fn closing_on_a_peer_that_takes_nothing_drops_the_stream_soon() {
        let (ours, mut theirs) = tokio::io::duplex(8);
        let mut w = Writer::spawn(ours);
        assert!(w.send(vec![1; 100], HOLD));
        w.close();
        tokio::time::sleep(CLOSE_GRACE * 2).await;
        // What got through, then the end: the writing half is gone well before the send hold
        // time.
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, vec![1; 8]);
    }
}
