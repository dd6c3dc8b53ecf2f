//! The Grafana dashboards in `deploy/grafana/` held against what twill serves: the metric names
//! each PromQL query reads (a small lexer, enough of PromQL for dashboards) are looked up in a
//! scrape of the process the dashboard is for, and the JSON is checked for what Grafana needs to
//! lay the panels out and fill their queries in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;

/// Aggregation operators: `sum by (le) (…)` puts a label list between the word and its
/// parenthesis, so these are never metric names, whatever follows them.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Words followed by a parenthesised list of label names (`on (instance) group_left (reason)`).
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Binary operators, modifiers and literals spelled as words.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// The dashboard file `name` from `deploy/grafana/`, parsed.
pub fn load(name: &str) -> Result<Value> {
    let path = dir().join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// Where the dashboards are kept.
pub fn dir() -> PathBuf {
    crate::workspace_root().join("deploy").join("grafana")
}

/// Every panel, the ones inside collapsed rows included (Grafana nests those one level down).
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// The metric names `expr` reads. Label matchers, range and subquery brackets, strings,
/// numbers and durations, function names, keywords, label lists after `by`/`on`/… and Grafana's
/// variables (`$instance`, `${x}`, `$__rate_interval`) are not names; an expression that does
/// not close what it opens is an error, and so is selecting by `__name__`, which hides the name
/// from this check.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let s = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < s.len() {
        i = match s[i] {
            b'"' | b'\'' | b'`' => end_of_string(s, i)?,
            b'{' => {
                let end = closing(s, i)?;
                if expr[i..end].contains("__name__") {
                    return Err(format!(
                        "{expr:?} selects by __name__: name the metric instead"
                    ));
                }
                end
            }
            b'[' => closing(s, i)?,
            b'#' => s[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(s.len(), |p| i + p + 1),
            b'$' if s.get(i + 1) == Some(&b'{') => closing(s, i + 1)?,
            b'$' => end_of_word(s, i + 1),
            // Numbers, and the durations and exponents that start like them (5m, 1e3, 0x1f).
            b'0'..=b'9' | b'.' => end_of_number(s, i),
            b'(' => {
                depth += 1;
                i + 1
            }
            b')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("{expr:?}: ')' without '('"))?;
                i + 1
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let end = end_of_word(s, i);
                let word = &expr[i..end];
                let lower = word.to_ascii_lowercase();
                let next = s[end..].iter().find(|c| !c.is_ascii_whitespace());
                if LABEL_LISTS.contains(&lower.as_str()) {
                    // `group_left` may stand alone; the others take their list.
                    match next {
                        Some(b'(') => closing(s, end + skip_space(&s[end..]))?,
                        _ => end,
                    }
                } else {
                    let function = next == Some(&b'(');
                    if !function
                        && !AGGREGATIONS.contains(&lower.as_str())
                        && !KEYWORDS.contains(&lower.as_str())
                    {
                        names.insert(word.to_string());
                    }
                    end
                }
            }
            _ => i + 1,
        };
    }
    if depth != 0 {
        return Err(format!("{expr:?}: '(' not closed"));
    }
    Ok(names)
}

fn skip_space(s: &[u8]) -> usize {
    s.iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len())
}

/// The index after the name starting at `from` (metric, label, function or variable name).
fn end_of_word(s: &[u8], from: usize) -> usize {
    end_of(s, from, |c| {
        c.is_ascii_alphanumeric() || c == b'_' || c == b':'
    })
}

/// The index after the number or duration starting at `from` (0.5, 1e3, 0x1f, 1h30m).
fn end_of_number(s: &[u8], from: usize) -> usize {
    end_of(s, from, |c| c.is_ascii_alphanumeric() || c == b'.')
}

fn end_of(s: &[u8], from: usize, part: impl Fn(u8) -> bool) -> usize {
    from + s[from..]
        .iter()
        .position(|&c| !part(c))
        .unwrap_or(s.len() - from)
}

/// The index after the string literal starting at `at` (backslash escapes in '…' and "…",
/// none in `…`, as PromQL has them).
fn end_of_string(s: &[u8], at: usize) -> Result<usize, String> {
    let quote = s[at];
    let mut i = at + 1;
    while i < s.len() {
        match s[i] {
            b'\\' if quote != b'`' => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(format!(
        "{:?}: string not closed",
        String::from_utf8_lossy(s)
    ))
}

/// The index after the bracket closing the one at `at` (`{`, `[` or `(`), strings skipped.
fn closing(s: &[u8], at: usize) -> Result<usize, String> {
    let (open, close) = match s[at] {
        b'{' => (b'{', b'}'),
        b'[' => (b'[', b']'),
        _ => (b'(', b')'),
    };
    let mut depth = 0;
    let mut i = at;
    while i < s.len() {
        match s[i] {
            b'"' | b'\'' | b'`' => {
                i = end_of_string(s, i)?;
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(format!(
        "{:?}: '{}' not closed",
        String::from_utf8_lossy(s),
        open as char
    ))
}

/// The metric names a template variable's query reads. Grafana's `label_values(SELECTOR,
/// LABEL)` has a label name after the selector; `label_values(LABEL)` reads no metric;
/// `query_result(EXPR)` wraps PromQL.
pub fn variable_metric_names(query: &str) -> Result<BTreeSet<String>, String> {
    let q = query.trim();
    let inner = |f: &str| q.strip_prefix(f).and_then(|r| r.strip_suffix(')'));
    if let Some(args) = inner("label_values(") {
        return match args.rfind(',') {
            Some(comma) => metric_names(&args[..comma]),
            None => Ok(BTreeSet::new()),
        };
    }
    if let Some(expr) = inner("query_result(") {
        return metric_names(expr);
    }
    Err(format!("{q:?}: a variable query this check does not read"))
}

/// Every metric the dashboard's queries read (panel targets and template variables), each with
/// the places that read it: `panel "Title"` or `variable $name`.
pub fn metrics_used(dashboard: &Value) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in panels(dashboard) {
        let place = format!("panel {:?}", p["title"].as_str().unwrap_or("?"));
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or("");
            for name in metric_names(expr).map_err(|e| format!("{place}: {e}"))? {
                used.entry(name).or_default().insert(place.clone());
            }
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
    {
        let place = format!("variable ${}", v["name"].as_str().unwrap_or("?"));
        let query = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or("");
        for name in variable_metric_names(query).map_err(|e| format!("{place}: {e}"))? {
            used.entry(name).or_default().insert(place.clone());
        }
    }
    Ok(used)
}

/// What a scrape serves: the names of its samples and the type of each family (`# TYPE`).
#[derive(Debug, Default)]
pub struct Exposition {
    samples: BTreeSet<String>,
    types: BTreeMap<String, String>,
}

impl Exposition {
    /// Reads Prometheus or OpenMetrics text (the body of a `/metrics` answer).
    pub fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut w = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (w.next(), w.next()) {
                    e.types.insert(name.to_string(), kind.to_string());
                }
            } else if !line.starts_with('#') {
                let end = line
                    .find(|c: char| c == '{' || c.is_whitespace())
                    .unwrap_or(line.len());
                e.samples.insert(line[..end].to_string());
            }
        }
        e
    }

    /// The type of the family a sample name belongs to: its own `# TYPE`, or that of the name
    /// without the suffix OpenMetrics adds (`x_total` of counter `x`, `x_bucket` of histogram
    /// `x`).
    fn family_type(&self, sample: &str) -> Option<&str> {
        if let Some(t) = self.types.get(sample) {
            return Some(t);
        }
        ["_total", "_bucket", "_sum", "_count", "_created", "_info"]
            .iter()
            .filter_map(|suffix| sample.strip_suffix(suffix))
            .find_map(|base| self.types.get(base))
            .map(String::as_str)
    }

    /// Why `metric` cannot be read from this scrape, or `None` when it can. A `_bucket` series
    /// must belong to a histogram (what `histogram_quantile` needs), a `_sum` or `_count` to a
    /// histogram or summary.
    pub fn refuses(&self, metric: &str) -> Option<String> {
        if !self.samples.contains(metric) {
            return Some("no such series in the scrape".into());
        }
        let kind = self.family_type(metric).unwrap_or("untyped");
        let wants: &[&str] = if metric.ends_with("_bucket") {
            &["histogram"]
        } else if metric.ends_with("_sum") || metric.ends_with("_count") {
            &["histogram", "summary"]
        } else {
            return None;
        };
        // A metric of another type may be named so (a gauge `x_count`): its own TYPE says so.
        if wants.contains(&kind) || self.types.contains_key(metric) {
            None
        } else {
            Some(format!(
                "served, but the family is a {kind}, not a histogram"
            ))
        }
    }
}

/// One line per metric the dashboard reads that `scrape` does not serve, naming where it is
/// read and why it is refused; empty when every query can be answered.
pub fn unserved(dashboard: &Value, scrape: &Exposition) -> Result<Vec<String>, String> {
    Ok(metrics_used(dashboard)?
        .into_iter()
        .filter_map(|(metric, places)| {
            let why = scrape.refuses(&metric)?;
            let places: Vec<_> = places.into_iter().collect();
            Some(format!("{metric} ({}): {why}", places.join(", ")))
        })
        .collect())
}

/// Grafana's layout grid is 24 columns wide.
const GRID_WIDTH: u64 = 24;

/// What keeps Grafana from showing the dashboard as meant, one line each: panels without a
/// title, type, description, unit or place on the grid, ids used twice, panels on top of each
/// other or off the grid, queries without an expression or a unique refId, queries that ignore
/// the `$instance` selection or the `$datasource` variable, and a missing variable.
pub fn layout_problems(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["title", "uid"] {
        if d[key].as_str().is_none_or(str::is_empty) {
            out.push(format!("the dashboard has no {key}"));
        }
    }
    if d["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        out.push("schemaVersion missing or older than 36".into());
    }
    let vars: Vec<&Value> = d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    match var("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        _ => out.push("no $datasource variable of type datasource for prometheus".into()),
    }
    match var("instance") {
        Some(v) if v["type"] == "query" && v["datasource"]["uid"] == "${datasource}" => {}
        _ => out.push("no $instance variable querying $datasource".into()),
    }

    let mut ids = BTreeSet::new();
    for p in panels(d) {
        let title = p["title"].as_str().unwrap_or("");
        let name = format!("panel {} {title:?}", p["id"]);
        match p["id"].as_u64() {
            Some(id) if ids.insert(id) => {}
            Some(_) => out.push(format!("{name}: id used twice")),
            None => out.push(format!("{name}: no numeric id")),
        }
        if title.is_empty() {
            out.push(format!("{name}: no title"));
        }
        let kind = p["type"].as_str().unwrap_or("");
        if kind.is_empty() {
            out.push(format!("{name}: no type"));
        }
        match Grid::of(p) {
            Some(g) if g.w >= 1 && g.h >= 1 && g.x + g.w <= GRID_WIDTH => {}
            _ => out.push(format!("{name}: gridPos missing or off the 24-column grid")),
        }
        if kind == "row" {
            let nested = p["panels"].as_array().map_or(0, Vec::len);
            if p["collapsed"] != true && nested > 0 {
                out.push(format!(
                    "{name}: an open row keeps its panels at the top level, not inside it"
                ));
            }
            continue;
        }
        if p["description"].as_str().is_none_or(str::is_empty) {
            out.push(format!("{name}: no description"));
        }
        if p["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            out.push(format!("{name}: no unit"));
        }
        if p["datasource"]["uid"] != "${datasource}" {
            out.push(format!("{name}: datasource is not $datasource"));
        }
        let targets = p["targets"].as_array().map_or(&[][..], Vec::as_slice);
        if targets.is_empty() {
            out.push(format!("{name}: no queries"));
        }
        let mut refs = BTreeSet::new();
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            if expr.trim().is_empty() {
                out.push(format!("{name}: a query without an expression"));
            } else if !expr.contains("instance=~\"$instance\"") {
                out.push(format!(
                    "{name}: {expr:?} does not follow the $instance selection"
                ));
            }
            if !t["refId"].as_str().is_some_and(|r| refs.insert(r)) {
                out.push(format!("{name}: refId missing or used twice"));
            }
            if t["datasource"]["uid"] != "${datasource}" {
                out.push(format!("{name}: a query's datasource is not $datasource"));
            }
        }
    }
    out.extend(overlaps(d));
    out
}

/// A panel's place on the grid: column, row, width and height, in grid units.
#[derive(Clone, Copy)]
struct Grid {
    x: u64,
    y: u64,
    w: u64,
    h: u64,
}

impl Grid {
    fn of(p: &Value) -> Option<Grid> {
        let g = &p["gridPos"];
        Some(Grid {
            x: g["x"].as_u64()?,
            y: g["y"].as_u64()?,
            w: g["w"].as_u64()?,
            h: g["h"].as_u64()?,
        })
    }

    fn overlaps(self, o: Grid) -> bool {
        self.x < o.x + o.w && o.x < self.x + self.w && self.y < o.y + o.h && o.y < self.y + self.h
    }
}

/// Top-level panels that cover the same grid cells. (Panels inside a collapsed row are placed
/// when it opens, pushing what is below down, so they are not compared.)
fn overlaps(d: &Value) -> Vec<String> {
    let placed: Vec<(&Value, Grid)> = d["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p, Grid::of(p)?)))
        .collect();
    let mut out = Vec::new();
    for (i, (a, ga)) in placed.iter().enumerate() {
        for (b, gb) in &placed[i + 1..] {
            if ga.overlaps(*gb) {
                out.push(format!(
                    "panels {:?} and {:?} overlap",
                    a["title"].as_str().unwrap_or("?"),
                    b["title"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .collect()
    }

    #[test]
    fn metric_names_skip_functions_keywords_labels_and_variables() {
        let cases: &[(&str, &[&str])] = &[
            ("up", &["up"]),
            (r#"twill_agent_ready{instance=~"$instance"}"#, &["twill_agent_ready"]),
            (
                r#"rate(twill_agent_reconciles_total{instance=~"$instance"}[$__rate_interval])"#,
                &["twill_agent_reconciles_total"],
            ),
            (
                r#"histogram_quantile(0.99, sum by (le, instance) (rate(x_seconds_bucket{a="}"}[5m])))"#,
                &["x_seconds_bucket"],
            ),
            (
                "sum(rate(a_total[5m])) by (job) / ignoring (reason) group_left sum without (reason) (b)",
                &["a_total", "b"],
            ),
            ("count(x == 0) or vector(0)", &["x"]),
            ("scalar(max(a)) - a offset 1h", &["a"]),
            ("a and on (instance) group_left (reason) b unless c", &["a", "b", "c"]),
            ("SUM BY (le) (a) > bool 0.5e3", &["a"]),
            ("max_over_time(a[1h:5m]) @ start()", &["a"]),
            ("job:requests:rate5m", &["job:requests:rate5m"]),
            (
                "topk(3, sum by (method, role) (increase(d_total{x='a\\'b'}[${__range}])))",
                &["d_total"],
            ),
            ("a # a comment naming b\n+ c", &["a", "c"]),
            ("vector(1) + Inf - NaN", &[]),
        ];
        for (expr, want) in cases {
            assert_eq!(names(expr), *want, "{expr}");
        }
    }

    #[test]
    fn metric_names_refuse_what_they_cannot_read() {
        for bad in [
            "sum(rate(a[5m])",
            "a{job=\"x\"",
            "rate(a[5m)",
            "a)",
            "{__name__=~\"twill_.*\"}",
            "a{x=\"unclosed}",
        ] {
            assert!(metric_names(bad).is_err(), "{bad} was read");
        }
    }

    #[test]
    fn variable_queries_name_the_selector_not_the_label() {
        let got = |q: &str| -> Vec<String> {
            variable_metric_names(q)
                .expect("readable")
                .into_iter()
                .collect()
        };
        assert_eq!(
            got("label_values(twill_agent_ready, instance)"),
            ["twill_agent_ready"]
        );
        assert_eq!(got(r#"label_values(a{job="x",b="y"}, instance)"#), ["a"]);
        assert!(got("label_values(instance)").is_empty());
        assert_eq!(got("query_result(max(b) by (c))"), ["b"]);
        assert!(variable_metric_names("metrics(twill_.*)").is_err());
    }

    #[test]
    fn exposition_knows_histograms_by_their_family() {
        let e = Exposition::parse(
            "# TYPE w_seconds histogram\nw_seconds_bucket{le=\"0.1\"} 1\nw_seconds_sum 0.05\n\
             w_seconds_count 1\n# TYPE c counter\nc_total 3\n# TYPE g_count gauge\ng_count 2\n\
             # TYPE fake_bucket gauge\nfake_bucket 1\n# TYPE e counter\ne_bucket_total 1\n",
        );
        for ok in [
            "w_seconds_bucket",
            "w_seconds_sum",
            "w_seconds_count",
            "c_total",
            "g_count",
        ] {
            assert_eq!(e.refuses(ok), None, "{ok}");
        }
        assert!(
            e.refuses("w_seconds").is_some(),
            "the family name has no sample"
        );
        assert!(e.refuses("c").is_some(), "a counter's sample is c_total");
        assert!(e.refuses("missing_total").is_some());
        assert_eq!(e.refuses("fake_bucket"), None, "its own TYPE says gauge");
    }
}
