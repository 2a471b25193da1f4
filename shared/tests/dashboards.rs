//! The dashboards, alert rules and the metric contract agree with what the
//! binaries export. No services needed.
//!
//! - Every dashboard in `dashboards/*.json` parses, uses the `DS_PROMETHEUS`
//!   datasource variable, and every panel has a title, a description and a
//!   unit (`fieldConfig.defaults.unit`) and at least one query.
//! - Every metric name in every PromQL expression (panel targets, template
//!   variables, `dashboards/alerts.yml`) is one the registry exports
//!   (`shared::metrics::all_metric_names()`; histograms as
//!   `_bucket/_sum/_count`), and every label they select or group by exists
//!   on those metrics.
//! - The "Metrics" table of `docs/operations.md` lists every family with its
//!   type and labels, and names nothing that does not exist.
//!
//! Whether the queries return data from real binaries is checked by
//! `scripts/check-dashboards` against a real Prometheus.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use shared::metrics::{all_metric_names, families, Family, Kind};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = repo().join("dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("dashboards/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", path.display()));
            out.push((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                json,
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 2,
        "expected the overview and MooseFS dashboards"
    );
    out
}

/// Metrics Prometheus itself provides for every target.
const PROMETHEUS_METRICS: &[&str] = &["up", "scrape_duration_seconds", "scrape_samples_scraped"];
/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Known series name -> (family, labels it has).
fn exported() -> HashMap<String, (&'static Family, Vec<&'static str>)> {
    let mut map = HashMap::new();
    for f in families() {
        for series in f.series_names() {
            let mut labels = f.labels.to_vec();
            if series.ends_with("_bucket") && f.kind == Kind::Histogram {
                labels.push("le");
            }
            map.insert(series, (f, labels));
        }
    }
    map
}

/// Replaces Grafana's variables the way the check script does.
fn substitute(expr: &str) -> String {
    let mut s = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1m")
        .replace("${__rate_interval}", "1m");
    // Template variables ($worker, ${worker}) become a regex matching all.
    while let Some(i) = s.find('$') {
        let rest = &s[i + 1..];
        let (len, _) = if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}').expect("closed ${...}");
            (end + 2, &r[..end])
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (end, &rest[..end])
        };
        s.replace_range(i..i + 1 + len, ".*");
    }
    s
}

/// What an expression refers to.
#[derive(Debug, Default)]
struct Refs {
    /// (metric name, label names in its matchers)
    selectors: Vec<(String, Vec<String>)>,
    /// Labels in by/without/on/ignoring/group_left/group_right clauses.
    grouping: Vec<String>,
    /// Labels created by label_replace/label_join (second argument).
    created: Vec<String>,
    errors: Vec<String>,
}

const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "Inf", "NaN",
];
/// Aggregation operators (they may be followed by `by (...)` before their
/// parenthesis, so they are never metric names here).
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
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// A small PromQL scanner: enough to find metric selectors, their label
/// matchers and grouping labels (strings, numbers, durations and function
/// names are skipped).
fn scan(expr: &str) -> Refs {
    let chars: Vec<char> = expr.chars().collect();
    let mut refs = Refs::default();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let read_string = |j: usize| -> (usize, String) {
        let quote = chars[j];
        let mut k = j + 1;
        let mut s = String::new();
        while k < chars.len() && chars[k] != quote {
            if chars[k] == '\\' {
                k += 1;
            }
            s.push(chars[k]);
            k += 1;
        }
        (k + 1, s)
    };
    let ident_at = |j: usize| -> (usize, String) {
        let mut k = j;
        while k < chars.len()
            && (chars[k].is_ascii_alphanumeric() || chars[k] == '_' || chars[k] == ':')
        {
            k += 1;
        }
        (k, chars[j..k].iter().collect())
    };
    // label_replace(v, "dst", ...) / label_join(v, "dst", ...): remember "dst".
    let mut pending_label_fn: Vec<usize> = Vec::new(); // paren depth of such calls
    let mut depth = 0usize;
    let mut commas_at_depth: HashMap<usize, usize> = HashMap::new();
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            let (next, s) = read_string(i);
            if let Some(&d) = pending_label_fn.last() {
                if d == depth && commas_at_depth.get(&d) == Some(&1) {
                    refs.created.push(s);
                }
            }
            i = next;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            if i < chars.len()
                && (chars[i] == 'e' || chars[i] == 'E')
                && chars
                    .get(i + 1)
                    .is_some_and(|d| d.is_ascii_digit() || *d == '-' || *d == '+')
            {
                i += 2;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            // duration units (5m, 1h30m)
            while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let (end, word) = ident_at(i);
            let next = skip_ws(end);
            let after = chars.get(next).copied();
            if GROUPING.contains(&word.as_str()) && after == Some('(') {
                let mut k = next + 1;
                loop {
                    k = skip_ws(k);
                    match chars.get(k) {
                        Some(')') => {
                            k += 1;
                            break;
                        }
                        Some(',') => k += 1,
                        Some(_) => {
                            let (e, label) = ident_at(k);
                            assert!(e > k, "unexpected character in grouping of {expr}");
                            refs.grouping.push(label);
                            k = e;
                        }
                        None => panic!("unclosed grouping in {expr}"),
                    }
                }
                i = k;
            } else if KEYWORDS.contains(&word.as_str())
                || GROUPING.contains(&word.as_str())
                || AGGREGATIONS.contains(&word.as_str())
            {
                // `sum by (x) (...)`: the grouping is read on the next word.
                i = end;
            } else if after == Some('(') {
                // A function or aggregation.
                if word == "label_replace" || word == "label_join" {
                    pending_label_fn.push(depth + 1);
                }
                i = end;
            } else {
                // A metric name, maybe with matchers.
                let mut labels = Vec::new();
                i = end;
                if after == Some('{') {
                    let mut k = next + 1;
                    loop {
                        k = skip_ws(k);
                        match chars.get(k) {
                            Some('}') => {
                                k += 1;
                                break;
                            }
                            Some(',') => k += 1,
                            Some('"') | Some('\'') | Some('`') => k = read_string(k).0,
                            Some('=') | Some('!') | Some('~') => k += 1,
                            Some(_) => {
                                let (e, label) = ident_at(k);
                                assert!(e > k, "unexpected character in matchers of {expr}");
                                labels.push(label);
                                k = e;
                            }
                            None => panic!("unclosed matchers in {expr}"),
                        }
                    }
                    i = k;
                }
                refs.selectors.push((word, labels));
            }
        } else if c == '{' {
            refs.errors
                .push(format!("selector without a metric name in {expr}"));
            while i < chars.len() && chars[i] != '}' {
                i += 1;
            }
            i += 1;
        } else {
            match c {
                '(' => {
                    depth += 1;
                    commas_at_depth.insert(depth, 0);
                }
                ')' => {
                    if pending_label_fn.last() == Some(&depth) {
                        pending_label_fn.pop();
                    }
                    depth = depth.saturating_sub(1);
                }
                ',' => *commas_at_depth.entry(depth).or_insert(0) += 1,
                _ => {}
            }
            i += 1;
        }
    }
    refs
}

/// Checks one expression; returns the problems found.
fn check_expr(
    where_: &str,
    expr: &str,
    known: &HashMap<String, (&Family, Vec<&str>)>,
) -> Vec<String> {
    let expr = substitute(expr);
    let refs = scan(&expr);
    let mut problems: Vec<String> = refs
        .errors
        .iter()
        .map(|e| format!("{where_}: {e}"))
        .collect();
    if refs.selectors.is_empty() {
        problems.push(format!("{where_}: no metric in `{expr}`"));
    }
    let mut available: HashSet<String> = TARGET_LABELS.iter().map(|s| s.to_string()).collect();
    available.extend(refs.created.iter().cloned());
    for (name, labels) in &refs.selectors {
        if PROMETHEUS_METRICS.contains(&name.as_str()) {
            continue;
        }
        match known.get(name) {
            None => problems.push(format!(
                "{where_}: `{name}` is not exported by the binaries (expression `{expr}`)"
            )),
            Some((_, have)) => {
                available.extend(have.iter().map(|s| s.to_string()));
                for l in labels {
                    if !have.contains(&l.as_str()) && !TARGET_LABELS.contains(&l.as_str()) {
                        problems.push(format!(
                            "{where_}: `{name}` has no label `{l}` (it has {have:?})"
                        ));
                    }
                }
            }
        }
    }
    for l in &refs.grouping {
        if !available.contains(l) {
            problems.push(format!(
                "{where_}: grouping label `{l}` is on none of the metrics of `{expr}`"
            ));
        }
    }
    problems
}

fn panels_of(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            if p["type"] == "row" {
                walk(&p["panels"], out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn non_empty_str(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.trim().is_empty())
}

#[test]
fn scanner_understands_the_promql_it_meets() {
    let r = scan(
        r#"histogram_quantile(0.99, sum by (le, op) (rate(a_bucket{op!="x", le=~"1.*"}[5m]))) / clamp_min(sum(b) without(instance), 1e-9) or on() label_replace(vector(0), "server", "(none)", "", "")"#,
    );
    let names: Vec<&str> = r.selectors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a_bucket", "b"]);
    assert_eq!(r.selectors[0].1, ["op", "le"]);
    assert_eq!(r.grouping, ["le", "op", "instance"]);
    assert_eq!(r.created, ["server"]);
    assert_eq!(
        substitute("rate(x{w=~\"$worker\"}[$__rate_interval])"),
        "rate(x{w=~\".*\"}[1m])"
    );
    assert!(!check_expr("t", "sum(rate(mfs_ingest_nope_total[1m]))", &exported()).is_empty());
    assert!(!check_expr("t", "sum by (nope) (mfs_ingest_pending_parts)", &exported()).is_empty());
    assert!(!check_expr("t", "mfs_ingest_requests_total{nope=\"x\"}", &exported()).is_empty());
    assert!(check_expr(
        "t",
        "sum by (outcome) (mfs_ingest_requests_total{job=\"x\"})",
        &exported()
    )
    .is_empty());
}

#[test]
fn every_dashboard_query_uses_exported_metrics_and_every_panel_is_labelled() {
    let known = exported();
    let names: BTreeSet<String> = all_metric_names().into_iter().collect();
    assert!(names.contains("mfs_ingest_part_duration_seconds_bucket"));
    assert!(names.contains("mfs_ingest_mfs_chunkserver_errors_total"));
    let mut problems = Vec::new();
    let mut queries = 0;
    for (file, d) in dashboards() {
        for key in ["uid", "title", "description"] {
            if !non_empty_str(&d[key]) {
                problems.push(format!("{file}: no {key}"));
            }
        }
        if d["schemaVersion"].as_u64().unwrap_or(0) < 36 {
            problems.push(format!("{file}: schemaVersion below 36"));
        }
        let vars = d["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !vars.iter().any(|v| {
            v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource" && v["query"] == "prometheus"
        }) {
            problems.push(format!("{file}: no DS_PROMETHEUS datasource variable"));
        }
        for v in vars.iter().filter(|v| v["type"] == "query") {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap_or("");
            // label_values(metric, label)
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or_else(|| {
                    panic!(
                        "{file}: variable {}: only label_values() is used",
                        v["name"]
                    )
                });
            let (metric, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
            let label = label.trim();
            problems.extend(check_expr(
                &format!("{file} variable {}", v["name"]),
                metric,
                &known,
            ));
            let metric = scan(metric).selectors[0].0.clone();
            if !known.get(&metric).is_some_and(|(_, l)| l.contains(&label)) {
                problems.push(format!(
                    "{file}: variable {}: {metric} has no label {label}",
                    v["name"]
                ));
            }
        }
        let mut ids = HashSet::new();
        for p in panels_of(&d) {
            let title = p["title"].as_str().unwrap_or("");
            let here = format!("{file} panel {:?}", title);
            if !ids.insert(p["id"].as_u64()) {
                problems.push(format!("{here}: duplicate or missing id"));
            }
            if title.trim().is_empty() {
                problems.push(format!("{file}: panel {} has no title", p["id"]));
            }
            if !non_empty_str(&p["description"]) {
                problems.push(format!("{here}: no description"));
            }
            if !non_empty_str(&p["fieldConfig"]["defaults"]["unit"]) {
                problems.push(format!("{here}: no unit in fieldConfig.defaults.unit"));
            }
            if p["datasource"]["uid"] != "${DS_PROMETHEUS}" {
                problems.push(format!("{here}: datasource is not ${{DS_PROMETHEUS}}"));
            }
            for key in ["x", "y", "w", "h"] {
                if p["gridPos"][key].as_u64().is_none() {
                    problems.push(format!("{here}: gridPos.{key} missing"));
                }
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{here}: no queries"));
            }
            let mut refids = HashSet::new();
            for t in &targets {
                if !refids.insert(t["refId"].as_str().unwrap_or("").to_string()) {
                    problems.push(format!("{here}: duplicate refId"));
                }
                let Some(expr) = t["expr"].as_str() else {
                    problems.push(format!("{here}: target without expr"));
                    continue;
                };
                queries += 1;
                problems.extend(check_expr(&here, expr, &known));
            }
        }
    }
    assert!(queries >= 40, "only {queries} queries found");
    assert!(
        problems.is_empty(),
        "dashboard problems:\n{}",
        problems.join("\n")
    );
}

/// Expressions of `alerts.yml` (single line or a `|`/`>` block).
fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("dashboards/alerts.yml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        if let Some(name) = line.strip_prefix("- alert:") {
            alert = name.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == "|" || rest == ">" || rest.starts_with("|-") || rest.starts_with(">-") {
                let indent = lines[i].len() - line.len();
                let mut expr = String::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    expr.push_str(next.trim());
                    expr.push(' ');
                    i += 1;
                }
                out.push((alert.clone(), expr));
            } else {
                out.push((alert.clone(), rest.trim_matches('\'').to_string()));
            }
        }
        i += 1;
    }
    out
}

#[test]
fn every_alert_uses_exported_metrics() {
    let known = exported();
    let exprs = alert_exprs();
    assert!(exprs.len() >= 10, "only {} alert expressions", exprs.len());
    let mut problems = Vec::new();
    for (alert, expr) in &exprs {
        problems.extend(check_expr(&format!("alert {alert}"), expr, &known));
    }
    assert!(
        problems.is_empty(),
        "alert problems:\n{}",
        problems.join("\n")
    );
    let text = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    for (alert, _) in &exprs {
        assert!(
            text.contains(&format!("### {alert}")),
            "docs/operations.md has no section \"### {alert}\""
        );
    }
}

#[test]
fn the_contract_in_docs_lists_every_metric() {
    let text = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let mut problems = Vec::new();
    for f in families() {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` ", f.name)));
        let Some(row) = row else {
            problems.push(format!("{}: no row in the Metrics table", f.name));
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | name | type | labels | meaning |
        if cells.get(2) != Some(&f.kind.as_str()) {
            problems.push(format!(
                "{}: documented type {:?}, is {}",
                f.name,
                cells.get(2),
                f.kind.as_str()
            ));
        }
        let mut documented: Vec<String> = cells
            .get(3)
            .unwrap_or(&"")
            .split(',')
            .map(|s| s.trim().trim_matches('`').to_string())
            .filter(|s| !s.is_empty() && s != "—" && s != "-")
            .collect();
        documented.sort();
        let mut actual: Vec<String> = f.labels.iter().map(|s| s.to_string()).collect();
        actual.sort();
        if documented != actual {
            problems.push(format!(
                "{}: documented labels {documented:?}, has {actual:?}",
                f.name
            ));
        }
    }
    // Every mfs_ingest_* name the document mentions exists.
    let names: HashSet<String> = all_metric_names()
        .into_iter()
        .chain(families().iter().map(|f| f.name.to_string()))
        .collect();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("mfs_ingest_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let word = &tail[..end];
        if word != shared::metrics::PREFIX && !names.contains(word) {
            problems.push(format!("docs/operations.md mentions unknown metric {word}"));
        }
        rest = &tail[end..];
    }
    assert!(
        problems.is_empty(),
        "contract problems:\n{}",
        problems.join("\n")
    );
}

#[test]
fn provisioning_files_exist() {
    let ds =
        std::fs::read_to_string(repo().join("dashboards/provisioning/datasources/prometheus.yml"))
            .unwrap();
    assert!(ds.contains("type: prometheus"));
    let dash =
        std::fs::read_to_string(repo().join("dashboards/provisioning/dashboards/mfs-ingest.yml"))
            .unwrap();
    assert!(dash.contains("type: file"));
}
