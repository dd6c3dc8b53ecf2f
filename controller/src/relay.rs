//! The state machine's "applied up to revision N" signals, brought from Raft's threads to the
//! runtime that serves watches.
//!
//! The state machine applies on Raft's threads. A watch channel notified there wakes each
//! waiting watcher from a foreign thread, and every such wake queues the task under the
//! runtime's lock and writes to its eventfd: with 1,000 watchers on a member, 1,000 system calls
//! for each apply (about 25,000 a second per member while 64 clients acquired under 3,000
//! simulated agents). Relayed, one task is woken from Raft's thread and wakes the watchers from
//! their own runtime, where a wake is a push onto a local queue.

use tokio::sync::watch;

/// Local copies of the state machine's two signals: every applied revision, and only the
/// revisions that held more than renewals.
pub struct Relay {
    revision: watch::Sender<u64>,
    changed: watch::Sender<u64>,
}

impl Relay {
    /// Starts relaying on the current runtime: call it from the runtime that serves watches.
    /// The relaying tasks end when the state machine's senders are dropped.
    pub fn start(revision: watch::Receiver<u64>, changed: watch::Receiver<u64>) -> Relay {
        let relay = Relay {
            revision: watch::channel(*revision.borrow()).0,
            changed: watch::channel(*changed.borrow()).0,
        };
        tokio::spawn(forward(revision, relay.revision.clone()));
        tokio::spawn(forward(changed, relay.changed.clone()));
        relay
    }

    /// Wakes the watchers of one feed for an event it brought ahead of this member's apply
    /// ([`crate::feed`]): each kind of watcher reads its own feed.
    pub fn poke(&self, changes_only: bool, rev: u64) {
        if changes_only {
            self.changed.send_replace(rev);
        } else {
            self.revision.send_replace(rev);
        }
    }

    /// Woken after every applied entry batch, and for each event the full feed brings.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Woken only after batches that held more than renewals, and for each event the feed of
    /// changes brings.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Several signals that arrive before this task runs are passed on as one, as a watch channel
/// would have done for each watcher; the watchers read the state itself, not the value.
async fn forward(mut from: watch::Receiver<u64>, to: watch::Sender<u64>) {
    loop {
        let rev = *from.borrow_and_update();
        to.send_replace(rev);
        if from.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A signal sent from another thread reaches every subscriber on this runtime, however many
    /// signals came together, and the last value is the one seen.
    #[test]
    fn signals_from_another_thread_reach_every_local_subscriber() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (rev_tx, rev_rx) = watch::channel(0u64);
            let (chg_tx, chg_rx) = watch::channel(0u64);
            let relay = Relay::start(rev_rx, chg_rx);
            let mut subs: Vec<_> = (0..100).map(|_| relay.subscribe_changes()).collect();
            let mut all = relay.subscribe();
            let sender = std::thread::spawn(move || {
                for r in 1..=50 {
                    rev_tx.send_replace(r);
                    if r % 10 == 0 {
                        chg_tx.send_replace(r);
                    }
                }
                (rev_tx, chg_tx)
            });
            for s in subs.iter_mut() {
                tokio::time::timeout(Duration::from_secs(5), s.wait_for(|v| *v == 50))
                    .await
                    .expect("relayed in time")
                    .expect("relay running");
            }
            tokio::time::timeout(Duration::from_secs(5), all.wait_for(|v| *v == 50))
                .await
                .expect("relayed in time")
                .expect("relay running");
            let (rev_tx, chg_tx) = sender.join().expect("sender thread");
            // Once the state machine's senders are gone, so are the relay's tasks: the
            // subscribers' channel stays open (the relay holds it) but is told nothing more.
            drop((rev_tx, chg_tx));
            tokio::task::yield_now().await;
            assert!(!subs[0].has_changed().expect("relay still owns the channel"));
        });
    }
}
