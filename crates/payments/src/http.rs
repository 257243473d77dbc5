//! The payments service's HTTP API:
//!
//! | call | who | what |
//! |---|---|---|
//! | `POST /v1/checkouts` `StartCheckout` | the holder (their bearer token) | pay for a hold: 200 `CheckoutResult` |
//! | `GET /v1/checkouts/{hold_id}` | the holder | where that checkout stands (settles it if it is open and idle; one the provider is deciding is answered `pending` from memory for 10 s after each look) |
//! | `POST /v1/refunds` `RefundBooking` | the booking's owner | refund a whole booking, in the ledger and at the provider |
//! | `POST /v1/provider/callbacks` | the provider (signed) | a charge's outcome; duplicates are harmless |
//! | `GET /healthz`, `GET /v1/stats` | anyone | liveness, outcome counters |
//!
//! The ledger's own authorization decides who may pay for or refund what: a checkout begins
//! with the extend of the hold made with the caller's token (refused unless the hold is
//! theirs, and nothing is charged or told before it passed); a status or a refund reads the
//! hold or booking with it first. The service's key does every other write.

// Handlers answer early with a ready response; boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use crate::provider::Provider;
use crate::service::{DriveError, Payments, hold_of};
use api::payments::{
    BookingRefunded, ChargeCallback, RefundBooking, SIGNATURE_HEADER, StartCheckout,
};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use client::Client;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

struct Ctx<P> {
    payments: Arc<Payments<P>>,
    /// A client of the ledger's nodes without a key: each read is made with a copy of it
    /// carrying the caller's own token.
    reader: Client,
    callback_secret: String,
}

/// A problem in the ledger's format (`api::Problem`), so clients decode both alike.
fn problem(status: u16, code: &str, detail: impl Into<String>) -> Response {
    let p = api::Problem {
        type_: format!("https://ticketledger.dev/problems/{code}"),
        title: code.replace('_', " "),
        status,
        detail: detail.into(),
        code: code.into(),
        instance: None,
    };
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        Json(p),
    )
        .into_response();
    r.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("application/problem+json"),
    );
    if status == 503 {
        r.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    r
}

fn from_client(e: &client::Error) -> Response {
    match e.problem() {
        Some(p) => problem(p.status, &p.code, p.detail.clone()),
        None => problem(503, "unavailable", e.to_string()),
    }
}

fn from_drive(e: &DriveError) -> Response {
    match e {
        DriveError::Ledger(e) => from_client(e),
        DriveError::ForeignCheckout(_) => problem(409, "invalid_state", e.to_string()),
    }
}

fn bearer(headers: &HeaderMap) -> Result<String, Response> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .ok_or_else(|| {
            problem(
                401,
                "unauthenticated",
                "Authorization: Bearer <token> is required",
            )
        })
}

/// `reader` reads the ledger with each caller's token (the ownership check); give it the
/// pool the service's own ledger client uses, sized to the checkouts in flight.
pub fn router<P: Provider>(
    payments: Arc<Payments<P>>,
    reader: Client,
    callback_secret: String,
) -> axum::Router {
    let ctx = Arc::new(Ctx {
        payments,
        reader,
        callback_secret,
    });
    let router = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/stats", get(stats::<P>))
        .route("/v1/checkouts", post(start::<P>))
        .route("/v1/checkouts/{hold_id}", get(status::<P>))
        .route("/v1/refunds", post(refund::<P>))
        .route("/v1/provider/callbacks", post(callback::<P>))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .with_state(ctx);
    shed_beyond(router, MAX_REQUESTS_IN_FLIGHT)
}

/// Requests the service works on at once; beyond it, a 503 with Retry-After at once (the
/// buyer's client retries with the same hold, which is idempotent), so a stampede costs a
/// bounded amount of memory and of ledger and provider calls.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 4_096;

/// `router` answering 503 `overloaded` to a request that finds `limit` others in flight.
pub fn shed_beyond(router: axum::Router, limit: usize) -> axum::Router {
    let permits = Arc::new(tokio::sync::Semaphore::new(limit));
    router.layer(axum::middleware::from_fn_with_state(permits, shed))
}

async fn shed(
    State(permits): State<Arc<tokio::sync::Semaphore>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match permits.try_acquire() {
        Ok(_permit) => next.run(req).await,
        Err(_) => problem(
            503,
            "overloaded",
            "the payments service is at its limit of requests in flight; retry",
        ),
    }
}

async fn stats<P: Provider>(State(ctx): State<Arc<Ctx<P>>>) -> Json<serde_json::Value> {
    Json(ctx.payments.stats.json())
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| problem(400, "bad_request", format!("bad body: {e}")))
}

/// Read the hold with the caller's token: the ledger answers 401/403/404 for what they may
/// not touch. Only whose hold it is matters here, and that never changes, so the answering
/// node's own state decides (no read index through the leader). A node that has not applied the hold yet answers `not_found`:
/// then the leader is asked. (What a stale read can get wrong is a session revoked within
/// the replication lag: it may still start paying for its own hold.)
async fn owned_hold<P>(
    ctx: &Ctx<P>,
    headers: &HeaderMap,
    hold_id: &str,
) -> Result<api::Hold, Response> {
    let token = bearer(headers)?;
    let caller = ctx.reader.clone().with_key(token);
    match caller.get_hold_stale(hold_id).await {
        Err(e) if e.code() == Some("not_found") => {
            caller.get_hold(hold_id).await.map_err(|e| from_client(&e))
        }
        r => r.map_err(|e| from_client(&e)),
    }
}

async fn start<P: Provider>(
    State(ctx): State<Arc<Ctx<P>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let req: StartCheckout = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if req.source.is_empty() || req.source.len() > 64 {
        return problem(422, "invalid_input", "source must be 1..=64 bytes");
    }
    if req.hold_id.is_empty() || req.hold_id.len() > 64 {
        return problem(422, "invalid_input", "hold_id must be 1..=64 bytes");
    }
    // The buyer's own key extends the hold: the ledger's check that the hold is theirs.
    let token = match bearer(&headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match ctx
        .payments
        .checkout(&req.hold_id, &req.source, &token)
        .await
    {
        Ok(r) => Json(r).into_response(),
        Err(e) => from_drive(&e),
    }
}

async fn status<P: Provider>(
    State(ctx): State<Arc<Ctx<P>>>,
    headers: HeaderMap,
    Path(hold_id): Path<String>,
) -> Response {
    if let Err(r) = owned_hold(&ctx, &headers, &hold_id).await {
        return r;
    }
    match ctx.payments.status(&hold_id).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => from_drive(&e),
    }
}

async fn refund<P: Provider>(
    State(ctx): State<Arc<Ctx<P>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let req: RefundBooking = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let token = match bearer(&headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let caller = ctx.reader.clone().with_key(token);
    if let Err(e) = caller.booking(&req.booking_id).await {
        return from_client(&e);
    }
    match ctx.payments.refund_booking(&req.booking_id).await {
        Ok(refunded_minor) => Json(BookingRefunded {
            booking_id: req.booking_id,
            refunded_minor,
        })
        .into_response(),
        Err(e) => from_drive(&e),
    }
}

async fn callback<P: Provider>(
    State(ctx): State<Arc<Ctx<P>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let signed = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let expected = crate::sim::sign(&ctx.callback_secret, &body);
    // Compare in constant time (both are hex of the same length when valid).
    let same = signed.len() == expected.len()
        && signed
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return problem(401, "unauthenticated", "bad callback signature");
    }
    let cb: ChargeCallback = match parse(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(hold_id) = hold_of(&cb.idempotency_key) else {
        return problem(404, "not_found", "not a charge of this service");
    };
    ctx.payments.stats.callbacks.fetch_add(1, Relaxed);
    match ctx.payments.settle(hold_id).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => from_drive(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// Two requests may be in flight; a third is shed with a 503 until one ends.
    #[tokio::test]
    async fn requests_beyond_the_limit_are_shed() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = gate.clone();
        let app = axum::Router::new()
            .route(
                "/slow",
                get(move || {
                    let g = g.clone();
                    async move {
                        let _ = g.acquire().await;
                        "slow"
                    }
                }),
            )
            .route("/fast", get(|| async { "fast" }));
        let app = shed_beyond(app, 2);
        let req = |path: &str| {
            axum::http::Request::get(path)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let a = tokio::spawn(app.clone().oneshot(req("/slow")));
        let b = tokio::spawn(app.clone().oneshot(req("/slow")));
        // Once both slow ones hold their place, a fast one is shed (wait for that, bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let shed = loop {
            let r = app.clone().oneshot(req("/fast")).await.unwrap();
            if r.status() == StatusCode::SERVICE_UNAVAILABLE {
                break r;
            }
            assert_eq!(r.status(), StatusCode::OK);
            assert!(std::time::Instant::now() < deadline, "nothing was shed");
            tokio::task::yield_now().await;
        };
        assert_eq!(shed.headers()["retry-after"], "1");
        gate.add_permits(2);
        for t in [a, b] {
            assert_eq!(t.await.unwrap().unwrap().status(), StatusCode::OK);
        }
        let r = app.clone().oneshot(req("/fast")).await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "capacity is back once they ended"
        );
    }
}
