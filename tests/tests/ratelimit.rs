//! Rate limits per principal and per client address on a real node (crates/node/src/ratelimit.rs):
//! a small limit answers 429 `rate_limited` with Retry-After, and another principal or
//! another address is not affected.

use cluster_tests::*;
use std::net::IpAddr;
use std::time::Duration;

/// One GET with `key` (if any): (status, Retry-After, problem code).
async fn get(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    key: Option<&str>,
) -> (u16, Option<String>, String) {
    let mut req = http.get(format!("{base}{path}"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("the node answers");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.bytes().await.unwrap();
    let code = serde_json::from_slice::<api::Problem>(&body)
        .map(|p| p.code)
        .unwrap_or_default();
    (status, retry, code)
}

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_limit_answers_429_with_retry_after_and_spares_others() {
    // Both limits 1/s with buckets of 40: the setup's calls from 127.0.0.1 stay under them,
    // and each part below uses loopback addresses of its own (Linux routes all of 127/8).
    let t = TestCluster::start(
        1,
        &[
            "--rate-limit-per-principal=1",
            "--rate-limit-per-address=1",
            "--rate-limit-burst=40",
        ],
    )
    .await
    .unwrap();
    let admin = t.admin();
    let a = admin.create_api_key("buyer-a", "buyer").await.unwrap().key;
    let b = admin.create_api_key("buyer-b", "buyer").await.unwrap().key;
    let base = format!("http://{}", t.c().nodes[0].http);

    // Principal A spends its bucket from three addresses in turn (none spends half of its
    // own), so the 429 is the principal's.
    let spread: Vec<_> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        .iter()
        .map(|ip| client_from(ip))
        .collect();
    let mut statuses = Vec::new();
    let mut limited = None;
    for i in 0..60 {
        let r = get(&spread[i % 3], &base, "/v1/events", Some(&a)).await;
        statuses.push(r.0);
        if r.0 == 429 {
            limited = Some(r);
            break;
        }
    }
    let (_, retry, code) = limited.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    assert_eq!(code, "rate_limited");
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&secs), "Retry-After {secs}");
    assert!(
        statuses.len() >= 40 && statuses[..statuses.len() - 1].iter().all(|s| *s == 200),
        "{statuses:?}"
    );
    // From a fresh address principal A is still limited; principal B there is not.
    let fresh = client_from("127.0.0.5");
    assert_eq!(get(&fresh, &base, "/v1/events", Some(&a)).await.0, 429);
    assert_eq!(get(&fresh, &base, "/v1/events", Some(&b)).await.0, 200);

    // One address spends its bucket with anonymous calls; another address is not affected.
    let flood = client_from("127.0.0.6");
    let mut from_flood = Vec::new();
    for _ in 0..60 {
        let r = get(&flood, &base, "/v1/openapi.json", None).await;
        from_flood.push(r.0);
        if r.0 == 429 {
            assert_eq!(r.2, "rate_limited");
            assert!(r.1.is_some(), "Retry-After");
            break;
        }
    }
    assert_eq!(
        from_flood.last(),
        Some(&429),
        "address never limited: {from_flood:?}"
    );
    assert_eq!(get(&flood, &base, "/v1/events", Some(&b)).await.0, 429);
    let calm = client_from("127.0.0.7");
    assert_eq!(get(&calm, &base, "/v1/openapi.json", None).await.0, 200);
    // The probes are never limited.
    assert_eq!(get(&flood, &base, "/healthz", None).await.0, 200);

    // After Retry-After the principal's bucket has a token again.
    tokio::time::sleep(Duration::from_secs(secs + 1)).await;
    assert_eq!(get(&fresh, &base, "/v1/events", Some(&a)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_token_of_one_user_shares_that_users_bucket() {
    let t = TestCluster::start(
        1,
        &[
            "--rate-limit-per-principal=1",
            "--rate-limit-burst=3",
            "--argon2-memory-kib=64",
            "--argon2-iterations=1",
        ],
    )
    .await
    .unwrap();
    let base = format!("http://{}", t.c().nodes[0].http);
    let http = client_from("127.0.0.1");
    let signup: api::Session = http
        .post(format!("{base}/v1/auth/signup"))
        .json(&api::Signup {
            email: "rate@example.com".into(),
            password: "a long password".into(),
            name: "Rate".into(),
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // A login in the same millisecond mints the same token (same user, same expiry): log in
    // until the expiry, and so the token, differs.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let login = loop {
        let s: api::Session = http
            .post(format!("{base}/v1/auth/login"))
            .json(&api::Login {
                email: "rate@example.com".into(),
                password: "a long password".into(),
            })
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s.token != signup.token {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "every login minted the signup's token"
        );
    };
    // Three calls with the first token spend the user's burst; the second token is limited.
    for _ in 0..3 {
        assert_eq!(
            get(&http, &base, "/v1/events", Some(&signup.token)).await.0,
            200
        );
    }
    let (status, retry, code) = get(&http, &base, "/v1/events", Some(&login.token)).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    assert!(retry.is_some());
    // A forged token naming that user has no bucket of its own and spends none of the user's:
    // it is answered 401, not 429.
    let forged = format!("tl1.{}.99999999999999.00", &signup.user_id[2..]);
    assert_eq!(get(&http, &base, "/v1/events", Some(&forged)).await.0, 401);
}
