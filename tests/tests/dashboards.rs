//! The Grafana dashboards in `deploy/grafana/`: laid out as Grafana needs, and reading only
//! metrics that twill serves. The controller's dashboard is held against a real controller's
//! scrape and the agent's against a real agent's (bgp backend, so the per-peer series exist).

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use twill_tests::dashboards::{layout_problems, load, metrics_used, unserved, Exposition};
use twill_tests::netns::{agent_http_get, http_get, root_or_skip, wait_until, Topology};
use twill_tests::{parse_metrics, twill_binary};

const CONTROLLER: &str = "twill-controller.json";
const AGENT: &str = "twill-agent.json";

fn dashboard(name: &str) -> Value {
    load(name).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn dashboards_are_laid_out_for_grafana() {
    for name in [CONTROLLER, AGENT] {
        let d = dashboard(name);
        let problems = layout_problems(&d);
        assert!(problems.is_empty(), "{name}:\n{}", problems.join("\n"));
        let used = metrics_used(&d).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(used.len() >= 10, "{name} reads only {used:?}");
    }
    // Imported side by side, two dashboards with one uid would replace each other.
    assert_ne!(
        dashboard(CONTROLLER)["uid"],
        dashboard(AGENT)["uid"],
        "the two dashboards share a uid"
    );
}

/// The panel titled `title` in `d`'s top level, to break in a copy.
fn panel<'a>(d: &'a mut Value, title: &str) -> &'a mut Value {
    d["panels"]
        .as_array_mut()
        .expect("panels")
        .iter_mut()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title:?}"))
}

#[test]
fn layout_check_reports_each_kind_of_broken_panel() {
    let mut d = dashboard(AGENT);
    let ready_id = panel(&mut d, "Nodes ready")["id"].clone();
    let ready_grid = panel(&mut d, "Nodes ready")["gridPos"].clone();
    panel(&mut d, "Nodes not ready")["id"] = ready_id;
    panel(&mut d, "Refused peers")["gridPos"] = ready_grid;
    let p = panel(&mut d, "Masquerade repairs");
    p["description"] = json!("");
    p["targets"][0]["expr"] = json!("sum(twill_agent_masquerade_repairs_total)");
    panel(&mut d, "Readiness")
        .as_object_mut()
        .expect("panel")
        .remove("gridPos");
    panel(&mut d, "Public interface")["targets"][0]["expr"] = json!("");
    let p = panel(&mut d, "Routes programmed");
    p["fieldConfig"]["defaults"]
        .as_object_mut()
        .expect("defaults")
        .remove("unit");
    p["gridPos"]["x"] = json!(20);
    let got = layout_problems(&d).join("\n");
    for want in [
        "\"Nodes not ready\": id used twice",
        "panels \"Nodes ready\" and \"Refused peers\" overlap",
        "\"Masquerade repairs\": no description",
        "\"Masquerade repairs\": \"sum(twill_agent_masquerade_repairs_total)\" does not follow the $instance selection",
        "\"Readiness\": gridPos missing",
        "\"Public interface\": a query without an expression",
        "\"Routes programmed\": no unit",
        "\"Routes programmed\": gridPos missing or off the 24-column grid",
    ] {
        assert!(got.contains(want), "{want:?} not reported in:\n{got}");
    }
}

/// An agent's scrape as the bgp backend serves it with one peer, written out by hand.
const AGENT_SCRAPE: &str = r#"# TYPE twill_agent_ready gauge
twill_agent_ready 1
# TYPE twill_agent_routes gauge
twill_agent_routes 1
# TYPE twill_agent_refused_peers gauge
twill_agent_refused_peers 0
# TYPE twill_agent_reconciles counter
twill_agent_reconciles_total 42
# TYPE twill_agent_changes counter
twill_agent_changes_total 7
# TYPE twill_agent_reconcile_errors counter
twill_agent_reconcile_errors_total 0
# TYPE twill_agent_masquerade_repairs counter
twill_agent_masquerade_repairs_total 0
# TYPE twill_agent_public_interface gauge
twill_agent_public_interface{iface="eth0",address="192.0.2.1",public_ip="192.0.2.1",reason="--iface eth0"} 1
# TYPE twill_bgp_session_established gauge
twill_bgp_session_established{peer="192.0.2.2",asn="64512"} 1
# TYPE twill_bgp_prefixes_received gauge
twill_bgp_prefixes_received{peer="192.0.2.2",asn="64512"} 1
# TYPE twill_bgp_prefixes_accepted gauge
twill_bgp_prefixes_accepted{peer="192.0.2.2",asn="64512"} 1
# TYPE twill_bgp_prefixes_advertised gauge
twill_bgp_prefixes_advertised{peer="192.0.2.2",asn="64512"} 1
# TYPE twill_bgp_prefixes_refused gauge
twill_bgp_prefixes_refused{peer="192.0.2.2",asn="64512",reason="not_allowed"} 0
twill_bgp_prefixes_refused{peer="192.0.2.2",asn="64512",reason="unowned"} 0
twill_bgp_prefixes_refused{peer="192.0.2.2",asn="64512",reason="not_from_owner"} 0
twill_bgp_prefixes_refused{peer="192.0.2.2",asn="64512",reason="more_specific"} 0
# EOF
"#;

/// A panel reading `expr`, shaped like the dashboard's own.
fn panel_reading(id: u64, title: &str, expr: &str) -> Value {
    json!({
        "id": id, "type": "timeseries", "title": title, "description": "d",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 0, "y": 100},
        "fieldConfig": {"defaults": {"unit": "short"}, "overrides": []},
        "targets": [{"datasource": {"type": "prometheus", "uid": "${datasource}"},
                     "expr": expr, "refId": "A"}],
    })
}

#[test]
fn dashboard_checker_names_a_metric_no_endpoint_exports() {
    let scrape = Exposition::parse(AGENT_SCRAPE);
    let d = dashboard(AGENT);
    assert_eq!(unserved(&d, &scrape), Ok(vec![]), "the dashboard as it is");

    // A panel at the top level asking for a metric the agent does not have.
    let mut top = d.clone();
    top["panels"]
        .as_array_mut()
        .expect("panels")
        .push(panel_reading(
            900,
            "Lease time left",
            r#"min by (instance) (twill_agent_lease_seconds_left{instance=~"$instance"})"#,
        ));
    assert_eq!(
        unserved(&top, &scrape),
        Ok(vec![
            "twill_agent_lease_seconds_left (panel \"Lease time left\"): no such series in the scrape"
                .to_string()
        ])
    );

    // The same inside a collapsed row, and a percentile over a counter, which has no buckets.
    let mut nested = d.clone();
    nested["panels"].as_array_mut().expect("panels").push(json!({
        "id": 901, "type": "row", "title": "More", "collapsed": true,
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": 99},
        "panels": [
            panel_reading(902, "Lease left", r#"twill_agent_lease_seconds_left{instance=~"$instance"}"#),
            panel_reading(
                903,
                "Reconcile p99",
                r#"histogram_quantile(0.99, sum by (le) (rate(twill_agent_reconciles_bucket{instance=~"$instance"}[5m])))"#,
            ),
        ],
    }));
    let got = unserved(&nested, &scrape).expect("readable");
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with("twill_agent_lease_seconds_left (panel \"Lease left\")"));
    assert!(got[1].starts_with("twill_agent_reconciles_bucket (panel \"Reconcile p99\")"));

    // A variable reading a metric the agent does not have.
    let mut var = d.clone();
    var["templating"]["list"][1]["query"]["query"] =
        json!("label_values(twill_agent_up, instance)");
    assert_eq!(
        unserved(&var, &scrape),
        Ok(vec![
            "twill_agent_up (variable $instance): no such series in the scrape".to_string()
        ])
    );

    // The agent's dashboard held against a controller's scrape: every metric is missing.
    let controller =
        Exposition::parse("# TYPE twill_controller_term gauge\ntwill_controller_term 3\n# EOF\n");
    let missing = unserved(&d, &controller).expect("readable");
    let used = metrics_used(&d).expect("readable");
    assert_eq!(missing.len(), used.len(), "{missing:?}");
}

/// The body of a `/metrics` answer, checked to parse as Prometheus text.
fn body(answer: &str) -> String {
    parse_metrics(answer).unwrap_or_else(|e| panic!("{e:#}: {answer}"));
    answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Whether the agent's scrape has an established BGP session with a prefix received on it.
fn bgp_up(answer: &str) -> bool {
    let Ok(scrape) = parse_metrics(answer) else {
        return false;
    };
    let value = |metric: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric)
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
    };
    value("twill_bgp_session_established") == Some(1.0)
        && value("twill_bgp_prefixes_received").is_some_and(|v| v >= 1.0)
}

#[test]
fn dashboards_read_only_metrics_a_running_cluster_serves() {
    if !root_or_skip("dashboards_read_only_metrics_a_running_cluster_serves") {
        return;
    }
    let bin = twill_binary().expect("twill binary");
    let mut t = Topology::new("dash", 2, &bin).expect("topology");
    t.start_controller(&[
        "--backend",
        "bgp",
        "--bgp-asn",
        "64512",
        "--metrics-addr",
        "127.0.0.1:9420",
    ])
    .expect("controller");
    t.agent_extra = vec!["--metrics-addr".into(), "127.0.0.1:9421".into()];
    for i in 0..2 {
        t.start_agent(i).expect("agent");
    }
    for i in 0..2 {
        t.wait_subnet(i, Duration::from_secs(30))
            .expect("subnet.env");
    }
    // The session between the two nodes is up and carries the other's subnet: the per-peer
    // series are there.
    let node1 = t.nodes[0].ns.clone();
    wait_until(
        "node1's BGP session established with a prefix received",
        Duration::from_secs(60),
        || bgp_up(&agent_http_get(&node1, "/metrics")),
    );
    // A node's certificate used for an admin call: refused and counted, so the denied-calls
    // series exists.
    let refused = Command::new("ip")
        .args(["netns", "exec", &t.ctl_ns])
        .arg(&bin)
        .args(["token", "list", "--controller", &t.controller_url()])
        .arg("--credentials")
        .arg(t.nodes[0].dir.join("state").join("node.pem"))
        .output()
        .expect("twill token list");
    assert!(
        !refused.status.success(),
        "a node listed the join tokens: {}",
        String::from_utf8_lossy(&refused.stdout)
    );

    let controller = body(&http_get(&t.ctl_ns, "127.0.0.1:9420", "/metrics"));
    let agent = body(&agent_http_get(&node1, "/metrics"));
    for (name, text) in [(CONTROLLER, &controller), (AGENT, &agent)] {
        let missing = unserved(&dashboard(name), &Exposition::parse(text))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            missing.is_empty(),
            "{name} reads what the endpoint does not serve:\n{}\n\nscrape:\n{text}",
            missing.join("\n")
        );
    }
}
