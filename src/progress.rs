//! What a long command is doing, told on stderr while it works (stdout keeps the results): a
//! line per step, and counts that update in place on a terminal. Elsewhere (a log file, a CI
//! job) a count gets a line at each quarter of its total, so a 50-node sandbox writes a few
//! dozen lines, not one per ping.

use std::io::{IsTerminal, Write};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Quiet,
    /// Counts rewrite their line with a carriage return.
    Terminal,
    /// Counts print a line at each quarter.
    Lines,
}

pub struct Progress {
    mode: Mode,
    /// The count now going on, if any: its label and the quarters of it already printed.
    count: Option<(String, usize)>,
    /// A count is on the terminal without its newline yet.
    open: bool,
}

/// Which quarter of `total` a count has reached when `done` (0 to 4; a count of nothing is
/// complete).
fn quarter(done: usize, total: usize) -> usize {
    (done.min(total) * 4).checked_div(total).unwrap_or(4)
}

/// Whether a count that has printed `shown` quarters earns a line on reaching `done` of
/// `total`, and the quarters shown after it. A count that goes back (a retry) starts afresh.
fn line_due(shown: usize, done: usize, total: usize) -> (bool, usize) {
    let reached = quarter(done, total);
    let shown = if reached < shown { 0 } else { shown };
    (reached > shown, reached)
}

impl Progress {
    /// Progress on stderr, in place when stderr is a terminal; nothing at all when `quiet`.
    pub fn new(quiet: bool) -> Progress {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Lines
        };
        Progress {
            mode,
            count: None,
            open: false,
        }
    }

    /// Says what starts now, on a line of its own.
    pub fn step(&mut self, what: &str) {
        self.count = None;
        if self.mode != Mode::Quiet {
            self.end_line();
            eprintln!("{what}");
        }
    }

    /// `label: done/total unit`. A count with a new label, or going back (a retry), starts
    /// afresh.
    pub fn count(&mut self, label: &str, done: usize, total: usize, unit: &str) {
        let shown = match &self.count {
            Some((l, shown)) if l == label => *shown,
            _ => 0,
        };
        let (due, shown) = line_due(shown, done, total);
        let text = if unit.is_empty() {
            format!("{label}: {done}/{total}")
        } else {
            format!("{label}: {done}/{total} {unit}")
        };
        match self.mode {
            Mode::Quiet => {}
            Mode::Terminal => {
                // \x1b[K clears what a longer earlier text left on the line.
                eprint!("\r{text}\x1b[K");
                self.open = done < total;
                if !self.open {
                    eprintln!();
                }
                let _ = std::io::stderr().flush();
            }
            Mode::Lines if due => eprintln!("{text}"),
            Mode::Lines => {}
        }
        self.count = Some((label.to_string(), shown));
    }

    /// Ends a count left open on the terminal, so what follows starts on a line of its own.
    fn end_line(&mut self) {
        if self.open {
            eprintln!();
            self.open = false;
        }
    }
}

impl Drop for Progress {
    /// An error that cuts a count short is printed after it, not on its line.
    fn drop(&mut self) {
        self.end_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of `done` that print a line as a count goes from 0 to `total`.
    fn lines(total: usize) -> Vec<usize> {
        let mut shown = 0;
        (0..=total)
            .filter(|&done| {
                let (due, now) = line_due(shown, done, total);
                shown = now;
                due
            })
            .collect()
    }

    #[test]
    fn a_count_prints_at_each_quarter_and_at_most_four_times() {
        assert_eq!(lines(2), [1, 2]);
        assert_eq!(lines(4), [1, 2, 3, 4]);
        assert_eq!(lines(50), [13, 25, 38, 50]);
        assert_eq!(lines(2450), [613, 1225, 1838, 2450]);
        assert_eq!(lines(1), [1]);
        assert_eq!(line_due(0, 0, 0), (true, 4), "nothing to count is done");
        assert_eq!(line_due(0, 7, 5), (true, 4), "past the total is done");
        assert_eq!(line_due(4, 4, 4), (false, 4), "the end is said once");
    }

    #[test]
    fn a_count_that_goes_back_starts_again() {
        assert_eq!(line_due(4, 1, 2), (true, 2));
        assert_eq!(line_due(4, 10, 2450), (false, 0));
        assert_eq!(line_due(0, 613, 2450), (true, 1));
    }

    #[test]
    fn a_step_or_a_new_label_ends_the_count() {
        let mut p = Progress {
            mode: Mode::Quiet,
            count: None,
            open: false,
        };
        p.count("pods", 3, 4, "");
        assert_eq!(p.count, Some(("pods".to_string(), 3)));
        p.count("pairs", 1, 4, "");
        assert_eq!(p.count, Some(("pairs".to_string(), 1)));
        p.step("next");
        assert_eq!(p.count, None);
    }
}
