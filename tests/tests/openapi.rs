//! `/v1/openapi.json` and `/v1/docs` on a real node: every documented operation is routed,
//! the page is self-contained, every error is a problem (axum's own rejections included),
//! and each named limit of the HTTP edge gives its clear 4xx.

use cluster_tests::*;
use std::time::Duration;

struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
    allow: Option<String>,
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    key: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = http.request(method, url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some((ct, b)) = body {
        req = req.header("content-type", ct).body(b);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("the node answers");
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_string())
    };
    let (status, content_type, allow) = (
        resp.status().as_u16(),
        h("content-type").unwrap_or_default(),
        h("allow"),
    );
    let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    Answer {
        status,
        content_type,
        body,
        allow,
    }
}

fn problem(a: &Answer, what: &str) -> api::Problem {
    assert_eq!(
        a.content_type,
        api::PROBLEM_JSON,
        "{what}: {} {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    let p: api::Problem = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(p.status, a.status, "{what}");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_documented_operation_is_routed_and_the_docs_page_is_self_contained() {
    let t = TestCluster::start(1, &[]).await.unwrap();
    let base = format!("http://{}", t.c().nodes[0].http);
    let key = t.c().admin_key.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let doc = send(
        &http,
        reqwest::Method::GET,
        format!("{base}/v1/openapi.json"),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(
        (doc.status, doc.content_type.as_str()),
        (200, "application/json")
    );
    let doc: serde_json::Value = serde_json::from_slice(&doc.body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 30, "{} paths", paths.len());

    let mut tried = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            // A stream that does not end: its answer's status is enough, read no body.
            let url = format!("{base}{}", path.replace("{id}", "x_0"));
            let body = op["requestBody"]["content"]
                .as_object()
                .and_then(|c| c.keys().next().cloned())
                .map(|ct| (ct, b"{}".to_vec()));
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let mut req = http.request(m, &url).bearer_auth(&key);
            if let Some((ct, b)) = body {
                req = req.header("content-type", ct).body(b);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = if resp.headers().get("content-type").is_some_and(|v| {
                v.to_str()
                    .unwrap_or_default()
                    .starts_with("text/event-stream")
            }) {
                String::new()
            } else {
                String::from_utf8_lossy(&resp.bytes().await.unwrap()).into_owned()
            };
            assert_ne!(
                status, 405,
                "{method} {path} is documented but not routed: {text}"
            );
            assert!(
                !text.contains("no such route"),
                "{method} {path} is documented but not routed: {text}"
            );
            assert!(status < 500, "{method} {path}: {status} {text}");
            let documented = op["responses"][status.to_string()].is_object();
            assert!(
                documented,
                "{method} {path} answered {status}, not documented: {text}"
            );
            tried += 1;
        }
    }
    assert!(tried >= 35, "{tried} operations");

    let page = send(
        &http,
        reqwest::Method::GET,
        format!("{base}/v1/docs"),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("/v1/openapi.json"));
    for external in ["src=\"http", "href=\"http", "@import", "<link"] {
        assert!(
            !html.contains(external),
            "the page loads something: {external}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_error_is_a_problem_and_every_edge_limit_a_clear_4xx() {
    let t = TestCluster::start(1, &[]).await.unwrap();
    let cat = catalog(&t, 2, 1).await.unwrap();
    let base = format!("http://{}", t.c().nodes[0].http);
    let key = t.c().admin_key.clone();
    let k = Some(key.as_str());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let json = |s: String| Some(("application/json", s.into_bytes()));
    use reqwest::Method as M;

    // axum's own rejections, once plain text, are problems with the same status.
    let a = send(
        &http,
        M::GET,
        format!("{base}/v1/events?limit=abc"),
        k,
        None,
        &[],
    )
    .await;
    assert_eq!(
        (a.status, problem(&a, "query").code.as_str()),
        (400, "bad_request")
    );
    let a = send(
        &http,
        M::GET,
        format!("{base}/v1/checkouts?bogus=1"),
        k,
        None,
        &[],
    )
    .await;
    assert_eq!(
        (a.status, problem(&a, "unknown query").code.as_str()),
        (400, "bad_request")
    );
    let a = send(&http, M::DELETE, format!("{base}/v1/events"), k, None, &[]).await;
    assert_eq!(
        (a.status, problem(&a, "method").code.as_str()),
        (405, "method_not_allowed")
    );
    assert!(a.allow.is_some_and(|v| v.contains("GET")), "Allow kept");
    let a = send(&http, M::GET, format!("{base}/v1/nothing"), k, None, &[]).await;
    assert_eq!(
        (a.status, problem(&a, "route").code.as_str()),
        (404, "not_found")
    );

    // Body size: JSON bodies and the raw refund body alike.
    let big = "x".repeat(api::MAX_BODY_BYTES + 1);
    let a = send(
        &http,
        M::POST,
        format!("{base}/v1/events"),
        k,
        json(format!("{{\"name\":\"{big}\",\"category\":\"c\"}}")),
        &[],
    )
    .await;
    assert_eq!(
        (a.status, problem(&a, "json body").code.as_str()),
        (413, "payload_too_large")
    );
    let a = send(
        &http,
        M::POST,
        format!("{base}/v1/bookings/b_1/refund"),
        k,
        json(big.clone()),
        &[],
    )
    .await;
    assert_eq!(
        (a.status, problem(&a, "raw body").code.as_str()),
        (413, "payload_too_large")
    );
    let a = send(
        &http,
        M::POST,
        format!("{base}/v1/events"),
        k,
        Some(("text/plain", b"{}".to_vec())),
        &[],
    )
    .await;
    assert_eq!(
        (a.status, problem(&a, "media type").code.as_str()),
        (415, "unsupported_media_type")
    );

    // String lengths: a name over ledger::limits::MAX_NAME_LEN (200 bytes).
    let long_name = "n".repeat(201);
    let a = send(
        &http,
        M::POST,
        format!("{base}/v1/events"),
        k,
        json(format!("{{\"name\":\"{long_name}\",\"category\":\"c\"}}")),
        &[],
    )
    .await;
    assert_eq!(a.status, 422, "{}", String::from_utf8_lossy(&a.body));
    problem(&a, "long name");
    let long_ref = "r".repeat(129);
    let a = send(
        &http,
        M::POST,
        format!("{base}/v1/holds/h_1/confirm"),
        k,
        json(format!("{{\"payment_ref\":\"{long_ref}\"}}")),
        &[],
    )
    .await;
    assert!(
        matches!(a.status, 404 | 422),
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    problem(&a, "long payment_ref");

    // Seats per request: over the performance's max_seats_per_order (4 here).
    let seats: Vec<String> = (1..=5).map(|n| format!("\"A:2:{n}\"")).collect();
    let body = format!(
        "{{\"performance_id\":\"{}\",\"seats\":[{}]}}",
        cat.performance,
        seats.join(",")
    );
    let a = send(
        &http,
        M::POST,
        format!("{base}/v1/holds"),
        k,
        json(body),
        &[],
    )
    .await;
    assert_eq!(a.status, 422, "{}", String::from_utf8_lossy(&a.body));
    problem(&a, "seats per order");

    // Page sizes.
    for q in ["limit=0", "limit=501", "limit=-1"] {
        for path in ["/v1/events", "/v1/checkouts"] {
            let a = send(&http, M::GET, format!("{base}{path}?{q}"), k, None, &[]).await;
            assert_eq!(
                (a.status, problem(&a, q).code.as_str()),
                (400, "bad_request"),
                "{path}?{q}"
            );
        }
    }
    let a = send(
        &http,
        M::GET,
        format!("{base}/v1/events?limit=500"),
        k,
        None,
        &[],
    )
    .await;
    assert_eq!(a.status, 200);

    // Idempotency-Key: 1..=128 bytes.
    let body = "{\"name\":\"Show\",\"category\":\"music\"}".to_string();
    let long_key = "k".repeat(129);
    let a = send(
        &http,
        M::POST,
        format!("{base}/v1/events"),
        k,
        json(body.clone()),
        &[("Idempotency-Key", &long_key)],
    )
    .await;
    assert_eq!(
        (a.status, problem(&a, "long key").code.as_str()),
        (400, "bad_request")
    );
    let ok_key = "k".repeat(128);
    let a = send(
        &http,
        M::POST,
        format!("{base}/v1/events"),
        k,
        json(body),
        &[("Idempotency-Key", &ok_key)],
    )
    .await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));

    // The bearer credential: over 256 bytes is refused as such, not looked up.
    let long_bearer = "b".repeat(257);
    let a = send(
        &http,
        M::GET,
        format!("{base}/v1/events"),
        Some(&long_bearer),
        None,
        &[],
    )
    .await;
    assert_eq!(
        (a.status, problem(&a, "long bearer").code.as_str()),
        (401, "unauthenticated")
    );
}
