//! The client's connection pool against an in-process fake node that counts the TCP
//! connections it accepts: a client keeps as many idle connections per node as it was told,
//! so a second wave of as many concurrent requests reuses them instead of opening new ones.

use axum::serve::ListenerExt;
use reqwest::Method;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use tokio::sync::Barrier;

/// Requests in flight at once in each wave (every one waits for all the others, so each
/// holds a connection of its own).
const WAVE: usize = 200;

/// A node whose `GET /v1/ping` answers once `WAVE` requests are in; returns its base URL
/// and the number of connections it accepted so far.
async fn fake_node() -> (String, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(WAVE));
    let app = axum::Router::new().route(
        "/v1/ping",
        axum::routing::get(move || {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                axum::Json(serde_json::json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counted = accepted.clone();
    let listener = listener.tap_io(move |_| {
        counted.fetch_add(1, Relaxed);
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), accepted)
}

async fn wave(c: &client::Client) {
    let calls: Vec<_> = (0..WAVE)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                c.send::<(), serde_json::Value>(Method::GET, "/v1/ping", None)
                    .await
                    .expect("ping")
            })
        })
        .collect();
    for call in calls {
        call.await.expect("the call's task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_sized_to_the_requests_in_flight_reuses_its_connections() {
    let (url, accepted) = fake_node().await;
    let c = client::Client::new([url])
        .with_idle_connections(WAVE + 56)
        .expect("a client");
    wave(&c).await;
    let first = accepted.load(Relaxed);
    assert_eq!(
        first, WAVE,
        "each concurrent request had a connection of its own"
    );
    wave(&c).await;
    let opened = accepted.load(Relaxed) - first;
    // The default pool (64) would have closed at least WAVE - 64 = 136 of them and opened
    // them again; a few may be opened again while a finished one is still on its way back.
    assert!(
        opened < WAVE - client::IDLE_CONNECTIONS_DEFAULT,
        "the second wave opened {opened} new connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_pool_closes_what_it_cannot_keep() {
    let (url, accepted) = fake_node().await;
    let c = client::Client::new([url]);
    wave(&c).await;
    let first = accepted.load(Relaxed);
    wave(&c).await;
    let opened = accepted.load(Relaxed) - first;
    assert!(
        opened >= WAVE - client::IDLE_CONNECTIONS_DEFAULT,
        "the second wave opened only {opened} new connections through a pool of {}",
        client::IDLE_CONNECTIONS_DEFAULT
    );
}
