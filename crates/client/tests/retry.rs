//! The client's failover and retry rules against small in-process fake nodes: no ticketd
//! needed. Each fake records the requests it saw, so the tests check what went over the wire.

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A fake node whose answers are scripted: the n-th request gets `script[n]` (the last one
/// repeats). Returns its base URL and the idempotency keys it saw.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

#[derive(Clone, Copy)]
enum Reply {
    Unavailable { retry_after_secs: u64 },
    Conflict,
    Created,
    Hang,
}

async fn fake_node(script: Vec<Reply>) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = {
        let seen = seen.clone();
        axum::Router::new().route(
            "/v1/holds",
            axum::routing::post(move |headers: HeaderMap| {
                let seen = seen.clone();
                let script = script.clone();
                async move {
                    let n = {
                        let mut s = seen.lock().unwrap();
                        s.push(
                            headers
                                .get("idempotency-key")
                                .map(|v| v.to_str().unwrap().to_string()),
                        );
                        s.len() - 1
                    };
                    let reply = script[n.min(script.len() - 1)];
                    respond(reply).await
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn problem(status: u16, code: &str) -> String {
    serde_json::to_string(&api::Problem {
        type_: format!("https://ticketledger.dev/problems/{code}"),
        title: code.into(),
        status,
        detail: format!("fake {code}"),
        code: code.into(),
        instance: None,
    })
    .unwrap()
}

async fn respond(reply: Reply) -> axum::response::Response {
    match reply {
        Reply::Unavailable { retry_after_secs } => (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                ("retry-after", retry_after_secs.to_string()),
                ("content-type", api::PROBLEM_JSON.to_string()),
            ],
            problem(503, "no_leader"),
        )
            .into_response(),
        Reply::Conflict => (
            StatusCode::CONFLICT,
            [("content-type", api::PROBLEM_JSON)],
            problem(409, "seat_unavailable"),
        )
            .into_response(),
        Reply::Created => (
            StatusCode::CREATED,
            axum::Json(api::Hold {
                hold_id: "h_1".into(),
                performance_id: "p_1".into(),
                seats: vec!["A:1:1".into()],
                quantity: 1,
                expires_at: "2099-01-01T00:00:00Z".into(),
                expires_at_ms: 0,
                amount_minor: 100,
                currency: "EUR".into(),
                state: "live".into(),
                booking_id: None,
            }),
        )
            .into_response(),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
    }
}

/// A URL where nothing listens.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn hold() -> api::CreateHold {
    api::CreateHold {
        performance_id: "p_1".into(),
        seats: Some(vec!["A:1:1".into()]),
        section: None,
        quantity: None,
        category: None,
    }
}

#[tokio::test]
async fn fails_over_and_retries_with_the_same_key_honouring_retry_after() {
    let (busy, busy_seen) = fake_node(vec![
        Reply::Unavailable {
            retry_after_secs: 1,
        },
        Reply::Created,
    ])
    .await;
    let c = client::Client::new([dead_url(), busy]).with_deadline(Duration::from_secs(5));
    let start = Instant::now();
    let h = c.hold(&hold()).await.unwrap();
    assert_eq!(h.hold_id, "h_1");
    let seen = busy_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one 503, then the success");
    let key = seen[0].clone().expect("a mutating call carries a key");
    assert_eq!(key.len(), 32);
    assert_eq!(
        seen[1].as_deref(),
        Some(key.as_str()),
        "the retry reuses the key"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(950),
        "the node said Retry-After: 1 and was asked again after {:?}",
        start.elapsed()
    );
    // A second logical call gets a key of its own.
    c.hold(&hold()).await.unwrap();
    let seen = busy_seen.lock().unwrap().clone();
    assert_ne!(seen[2].as_deref(), Some(key.as_str()));
}

#[tokio::test]
async fn a_4xx_is_the_answer_and_is_not_retried() {
    let (a, a_seen) = fake_node(vec![Reply::Conflict]).await;
    let (b, b_seen) = fake_node(vec![Reply::Created]).await;
    let err = client::Client::new([a, b]).hold(&hold()).await.unwrap_err();
    assert_eq!(err.code(), Some("seat_unavailable"));
    assert_eq!(err.status(), Some(409));
    assert_eq!(err.problem().unwrap().detail, "fake seat_unavailable");
    assert_eq!(a_seen.lock().unwrap().len(), 1);
    assert_eq!(b_seen.lock().unwrap().len(), 0);
}

#[tokio::test]
async fn a_hung_node_is_left_after_the_attempt_timeout() {
    let (hung, _) = fake_node(vec![Reply::Hang]).await;
    let (ok, ok_seen) = fake_node(vec![Reply::Created]).await;
    let c = client::Client::new([hung, ok])
        .with_deadline(Duration::from_secs(5))
        .with_attempt_timeout(Duration::from_millis(300));
    let start = Instant::now();
    c.hold(&hold()).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(ok_seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn the_deadline_bounds_a_cluster_that_never_answers() {
    let (a, a_seen) = fake_node(vec![Reply::Unavailable {
        retry_after_secs: 0,
    }])
    .await;
    let c = client::Client::new([a, dead_url()]).with_deadline(Duration::from_millis(800));
    let start = Instant::now();
    let err = c.hold(&hold()).await.unwrap_err();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(750) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    match err {
        client::Error::Unavailable { attempts, .. } => assert!(attempts >= 3, "{attempts}"),
        other => panic!("{other}"),
    }
    let seen = a_seen.lock().unwrap().clone();
    assert!(seen.len() >= 2);
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "one key for all attempts"
    );
}
