//! A linearizability checker in the manner of Wing & Gong, with Lowe's memo of visited
//! (operations done, state) pairs: it searches for an order of the operations that respects
//! real time and that the sequential model accepts.
//!
//! An operation whose outcome is unknown (the client timed out) may have taken effect at any
//! time after it was invoked, or never; it has no completion time and need not be placed.

use std::collections::HashSet;
use std::hash::Hash;

/// A sequential specification: from a state, an operation with its observed result leads to
/// the next state, or is impossible (`None`).
pub trait Model: Clone + Eq + Hash {
    type Op;
    fn step(&self, op: &Self::Op) -> Option<Self>;
}

#[derive(Clone, Debug)]
pub struct Entry<O> {
    pub invoke: u64,
    /// `None`: the outcome is unknown.
    pub complete: Option<u64>,
    pub op: O,
}

/// Why no order was found: the longest prefix that could be placed, to show around.
#[derive(Debug)]
pub struct NotLinearizable {
    /// Indices of the entries in the deepest order reached.
    pub deepest: Vec<usize>,
    /// Entries that could not be placed after it.
    pub stuck: Vec<usize>,
}

/// Limits the search: a history this checker cannot decide in `budget` steps is reported as
/// undecided rather than taking forever.
pub enum Verdict {
    Linearizable,
    Not(NotLinearizable),
    Undecided,
}

pub fn check<M: Model>(init: &M, entries: &[Entry<M::Op>], budget: usize) -> Verdict {
    let n = entries.len();
    let words = n.div_ceil(64).max(1);
    let definite: Vec<usize> = (0..n).filter(|i| entries[*i].complete.is_some()).collect();
    let mut seen: HashSet<(Vec<u64>, M)> = HashSet::new();
    let mut steps = 0usize;
    let mut deepest: Vec<usize> = Vec::new();

    // Depth-first with an explicit stack: (state, done set, order so far, next candidate).
    struct Frame<M> {
        state: M,
        done: Vec<u64>,
        next: usize,
    }
    let mut order: Vec<usize> = Vec::new();
    let mut stack = vec![Frame {
        state: init.clone(),
        done: vec![0u64; words],
        next: 0,
    }];
    let is_done = |d: &[u64], i: usize| d[i / 64] & (1 << (i % 64)) != 0;

    while let Some(top) = stack.last_mut() {
        if definite.iter().all(|i| is_done(&top.done, *i)) {
            return Verdict::Linearizable;
        }
        // An operation may go next only if it was invoked before every pending one completed.
        let horizon = definite
            .iter()
            .filter(|i| !is_done(&top.done, **i))
            .filter_map(|i| entries[*i].complete)
            .min()
            .unwrap_or(u64::MAX);
        let mut advanced = false;
        while top.next < n {
            let i = top.next;
            top.next += 1;
            if is_done(&top.done, i) || entries[i].invoke > horizon {
                continue;
            }
            steps += 1;
            if steps > budget {
                return Verdict::Undecided;
            }
            let Some(state) = top.state.step(&entries[i].op) else {
                continue;
            };
            let mut done = top.done.clone();
            done[i / 64] |= 1 << (i % 64);
            if !seen.insert((done.clone(), state.clone())) {
                continue;
            }
            order.push(i);
            if order.len() > deepest.len() {
                deepest = order.clone();
            }
            stack.push(Frame {
                state,
                done,
                next: 0,
            });
            advanced = true;
            break;
        }
        if !advanced {
            stack.pop();
            order.pop();
        }
    }
    let placed: HashSet<usize> = deepest.iter().copied().collect();
    let stuck = definite
        .into_iter()
        .filter(|i| !placed.contains(i))
        .collect();
    Verdict::Not(NotLinearizable { deepest, stuck })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register: write v, or read v.
    #[derive(Clone, PartialEq, Eq, Hash)]
    struct Reg(u8);
    enum Op {
        W(u8),
        R(u8),
    }
    impl Model for Reg {
        type Op = Op;
        fn step(&self, op: &Op) -> Option<Reg> {
            match op {
                Op::W(v) => Some(Reg(*v)),
                Op::R(v) => (self.0 == *v).then(|| self.clone()),
            }
        }
    }
    fn e(invoke: u64, complete: Option<u64>, op: Op) -> Entry<Op> {
        Entry {
            invoke,
            complete,
            op,
        }
    }

    #[test]
    fn concurrent_write_may_be_seen_either_way() {
        let h = [
            e(0, Some(10), Op::W(1)),
            e(1, Some(2), Op::R(0)),
            e(3, Some(4), Op::R(1)),
        ];
        assert!(matches!(check(&Reg(0), &h, 1000), Verdict::Linearizable));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let h = [e(0, Some(1), Op::W(1)), e(2, Some(3), Op::R(0))];
        match check(&Reg(0), &h, 1000) {
            Verdict::Not(n) => assert_eq!(n.stuck, vec![1]),
            _ => panic!("stale read accepted"),
        }
    }

    #[test]
    fn an_unknown_write_may_land_late_or_never() {
        let late = [
            e(0, None, Op::W(1)),
            e(5, Some(6), Op::R(0)),
            e(7, Some(8), Op::R(1)),
        ];
        assert!(matches!(check(&Reg(0), &late, 1000), Verdict::Linearizable));
        let never = [e(0, None, Op::W(1)), e(5, Some(6), Op::R(0))];
        assert!(matches!(
            check(&Reg(0), &never, 1000),
            Verdict::Linearizable
        ));
        // But once seen, it cannot be unseen.
        let flip = [
            e(0, None, Op::W(1)),
            e(5, Some(6), Op::R(1)),
            e(7, Some(8), Op::R(0)),
        ];
        assert!(matches!(check(&Reg(0), &flip, 1000), Verdict::Not(_)));
    }
}
