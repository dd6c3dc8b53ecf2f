//! Figures measured over several rounds, twill's beside its peer's from the same round.
//!
//! One round on this machine can be 10–30 % off the next, so a benchmark run once says little.
//! Each round's ratio is taken within the round (both sides saw the same machine state), and
//! what is printed is the median and the extremes of each side and of those ratios.

/// One figure from one round; `peer` is absent when the peer was not run (not installed).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub unit: &'static str,
    pub twill: f64,
    pub peer: Option<f64>,
}

impl Sample {
    pub fn new(name: impl Into<String>, unit: &'static str, twill: f64, peer: Option<f64>) -> Self {
        Sample {
            name: name.into(),
            unit,
            twill,
            peer,
        }
    }
}

/// Median and extremes of a set of values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    /// `None` for no values; NaNs (a ratio against zero) are left out.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// One figure over every round.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub name: String,
    pub unit: &'static str,
    pub twill: Spread,
    /// Over the rounds in which the peer ran.
    pub peer: Option<Spread>,
    /// twill / peer, each round's own.
    pub ratio: Option<Spread>,
}

/// One figure's values, a value per round.
#[derive(Clone, Debug)]
struct Series {
    name: String,
    unit: &'static str,
    twill: Vec<f64>,
    peer: Vec<f64>,
    ratio: Vec<f64>,
}

/// The samples of every round, kept in the order figures were first seen.
#[derive(Clone, Debug, Default)]
pub struct Rounds {
    figures: Vec<Series>,
    rounds: usize,
}

impl Rounds {
    /// Adds one round's figures.
    pub fn add(&mut self, round: Vec<Sample>) {
        self.rounds += 1;
        for s in round {
            let i = match self
                .figures
                .iter()
                .position(|f| f.name == s.name && f.unit == s.unit)
            {
                Some(i) => i,
                None => {
                    self.figures.push(Series {
                        name: s.name.clone(),
                        unit: s.unit,
                        twill: Vec::new(),
                        peer: Vec::new(),
                        ratio: Vec::new(),
                    });
                    self.figures.len() - 1
                }
            };
            let f = &mut self.figures[i];
            f.twill.push(s.twill);
            if let Some(p) = s.peer {
                f.peer.push(p);
                f.ratio.push(s.twill / p);
            }
        }
    }

    pub fn rounds(&self) -> usize {
        self.rounds
    }

    pub fn summaries(&self) -> Vec<Summary> {
        self.figures
            .iter()
            .filter_map(|f| {
                Some(Summary {
                    name: f.name.clone(),
                    unit: f.unit,
                    twill: Spread::of(&f.twill)?,
                    peer: Spread::of(&f.peer),
                    ratio: Spread::of(&f.ratio),
                })
            })
            .collect()
    }

    /// The table printed after the last round.
    pub fn table(&self, peer: &str) -> String {
        let mut out = format!(
            "over {} round(s), median (min - max); the ratio is twill / {peer}, each round's own:\n",
            self.rounds
        );
        for s in self.summaries() {
            let side =
                |x: &Spread| format!("{:.1} ({:.1} - {:.1}) {}", x.median, x.min, x.max, s.unit);
            out.push_str(&format!("  {:<44} twill {}", s.name, side(&s.twill)));
            match (&s.peer, &s.ratio) {
                (Some(p), Some(r)) => out.push_str(&format!(
                    "   {peer} {}   ratio {:.2} ({:.2} - {:.2})\n",
                    side(p),
                    r.median,
                    r.min,
                    r.max
                )),
                _ => out.push_str(&format!("   {peer}: not run\n")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts_and_nothing() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).expect("values");
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 4.0, 4));
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[f64::NAN]), None);
    }

    /// Ratios are taken round by round, not from the two medians: a slow round for both sides
    /// must not show as a swing in the ratio.
    #[test]
    fn ratios_are_each_rounds_own() {
        let mut r = Rounds::default();
        r.add(vec![Sample::new("rate", "/s", 100.0, Some(50.0))]);
        r.add(vec![Sample::new("rate", "/s", 400.0, Some(200.0))]);
        r.add(vec![Sample::new("rate", "/s", 300.0, Some(100.0))]);
        let s = &r.summaries()[0];
        assert_eq!(s.twill.median, 300.0);
        assert_eq!(s.peer.expect("peer ran").median, 100.0);
        let ratio = s.ratio.expect("ratios");
        // Medians alone would say 3.0; the rounds said 2, 2 and 3.
        assert_eq!((ratio.median, ratio.min, ratio.max), (2.0, 2.0, 3.0));
        assert_eq!(r.rounds(), 3);
    }

    #[test]
    fn figures_keep_their_order_and_a_missing_peer_is_said() {
        let mut r = Rounds::default();
        r.add(vec![
            Sample::new("b first", "ms", 1.0, None),
            Sample::new("a second", "ms", 2.0, None),
        ]);
        let names: Vec<String> = r.summaries().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["b first", "a second"]);
        let table = r.table("etcd");
        assert!(table.contains("etcd: not run"), "{table}");
        assert!(table.starts_with("over 1 round(s)"), "{table}");
    }
}
