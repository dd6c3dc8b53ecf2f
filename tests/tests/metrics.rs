//! The Prometheus endpoint reports what the member is doing.

use twill_proto::v1 as pb;
use twill_tests::{free_port, parse_metrics, sample, scrape, Cluster};

fn value(text: &str, name: &str) -> f64 {
    let scrape = parse_metrics(text).expect("the scrape parses");
    sample(&scrape, name).unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_leases_and_writes() {
    let port = free_port().expect("port");
    let cl = Cluster::start_with(1, move |o| {
        o.metrics_listen = Some(([127, 0, 0, 1], port).into())
    })
    .await
    .expect("cluster");
    let c = cl.client();
    for i in 0..3 {
        c.acquire(pb::AcquireRequest {
            node: format!("n{i}"),
            public_ip: "192.0.2.1".into(),
            ..Default::default()
        })
        .await
        .expect("acquire");
    }
    c.release("n0").await.expect("release");
    let text = tokio::task::spawn_blocking(move || scrape(port, "/metrics"))
        .await
        .expect("scrape");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(value(&text, "twill_controller_is_leader"), 1.0);
    assert_eq!(value(&text, "twill_controller_leases"), 2.0);
    assert_eq!(
        value(&text, "twill_controller_subnets"),
        4095.0,
        "10.0.0.0/12 in /24s, first skipped"
    );
    assert!(value(&text, "twill_controller_writes_total") >= 4.0);
    assert!(value(&text, "twill_controller_write_seconds_count") >= 4.0);
    assert!(value(&text, "twill_controller_batched_writes_total") >= 4.0);
    // Every reason a write can fail for is served before the first failure.
    let parsed = parse_metrics(&text).expect("the scrape parses");
    for reason in ["not_leader", "no_quorum", "fatal"] {
        assert!(
            parsed
                .samples
                .iter()
                .any(|s| s.metric == "twill_controller_write_errors_total"
                    && s.labels.get("reason") == Some(reason)),
            "no write_errors series for {reason}:\n{text}"
        );
    }
    let missing = tokio::task::spawn_blocking(move || scrape(port, "/nope"))
        .await
        .expect("scrape");
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    cl.shutdown().await;
}
