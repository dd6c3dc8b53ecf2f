//! A member that is shutting down answers a new call with an HTTP/2 GOAWAY. The call was never
//! processed there, so the client must try again (elsewhere) instead of reporting tonic's
//! INTERNAL status as the controller's answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use twill_client::{Client, ClientError, ClientOptions};

/// An empty SETTINGS frame, then GOAWAY with last-stream-id 0 and NO_ERROR (RFC 9113 6.5, 6.8).
const SETTINGS_THEN_GOAWAY: [u8; 26] = [
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS, no parameters
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY
    0, 0, 0, 0, // last stream id 0: nothing was processed
    0, 0, 0, 0, // NO_ERROR
];

/// A listener that says GOAWAY on every connection, counting them.
async fn going_away() -> (String, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}", l.local_addr().expect("bound"));
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = s.write_all(&SETTINGS_THEN_GOAWAY).await;
                // Read until the client closes, so the kernel does not reset the connection
                // under the frames just written.
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                })
                .await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_goaway_is_retried_not_reported_as_the_controllers_answer() {
    let (a, seen_a) = going_away().await;
    let (b, seen_b) = going_away().await;
    let opts = ClientOptions {
        retry_for: Duration::from_millis(1_500),
        attempt_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let client = Client::with_options([a, b], opts).expect("loopback URLs are valid");
    let err = client
        .acquire(twill_proto::v1::AcquireRequest {
            node: "n1".into(),
            ..Default::default()
        })
        .await
        .expect_err("nothing here answers a call");
    match err {
        ClientError::Unavailable { attempts, last, .. } => {
            assert!(attempts >= 2, "tried {attempts} time(s), last: {last}");
        }
        other => panic!("a GOAWAY was taken for the controller's answer: {other:?}"),
    }
    assert!(
        seen_a.load(Ordering::SeqCst) > 0 && seen_b.load(Ordering::SeqCst) > 0,
        "both members tried: {} and {} connections",
        seen_a.load(Ordering::SeqCst),
        seen_b.load(Ordering::SeqCst)
    );
}
