//! The simulated payment provider: a real HTTP server speaking the provider API of
//! [`api::payments`], with configurable latency, declines, timeouts (the charge is made but
//! the answer never arrives in time) and duplicate signed callbacks. It keeps a book of every
//! charge so tests and the demo can check the money: no capture without a booking or a
//! refund, no booking without a capture.
//!
//! Sources (card tokens) choose a fate: `tok_ok` always captures, `tok_decline` is always
//! declined, `tok_timeout` captures and then answers only after `hang_ms`, `tok_slow_<ms>`
//! decides after `<ms>` more milliseconds, `tok_async_<ms>` is an asynchronous method (a bank
//! redirect, 3-D Secure): answered `pending` at once, captured `<ms>` later and announced by
//! callback only. Any other source gets the configured random rates.

use api::payments::{
    Charge, ChargeCallback, ChargeRequest, ChargeStatus, ProviderBook, SIGNATURE_HEADER,
};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most charges one simulator keeps (a bound on its memory).
pub const MAX_CHARGES: usize = 4_000_000;
const MAX_KEY_LEN: usize = 128;
const MAX_SOURCE_LEN: usize = 64;

#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Time to decide a charge.
    pub latency_ms: u64,
    /// Extra random latency, uniform in `0..=jitter_ms`.
    pub jitter_ms: u64,
    /// Percent of random-fate charges declined.
    pub decline_percent: u32,
    /// Percent of random-fate charges that capture but answer only after `hang_ms`.
    pub timeout_percent: u32,
    pub hang_ms: u64,
    /// Extra copies of every callback (0: each outcome is posted once).
    pub duplicate_callbacks: u32,
    /// Shared secret the callbacks are signed with.
    pub callback_secret: String,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            latency_ms: 20,
            jitter_ms: 20,
            decline_percent: 0,
            timeout_percent: 0,
            hang_ms: 10_000,
            duplicate_callbacks: 0,
            callback_secret: "sim-secret".into(),
            seed: 1,
        }
    }
}

/// The signature of a callback body under `secret` (hex).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let key = blake3::hash(secret.as_bytes());
    blake3::keyed_hash(key.as_bytes(), body)
        .to_hex()
        .to_string()
}

struct Entry {
    charge: Charge,
    /// What was asked (amount, currency, source), to refuse the key reused for another charge.
    asked: Option<(u64, String, String)>,
}

struct Sim {
    cfg: SimConfig,
    charges: Mutex<HashMap<String, Entry>>,
    rng: Mutex<u64>,
    next_id: AtomicU64,
    captured_minor: AtomicU64,
    refunded_minor: AtomicU64,
    callbacks_sent: AtomicU64,
    http: reqwest::Client,
}

#[derive(Clone, Copy)]
enum Fate {
    Capture,
    /// Answer `pending` now, capture later (announced by callback).
    CaptureAsync,
    Decline,
    /// Capture, then hold the answer back for this long.
    CaptureThenHang(u64),
}

impl Sim {
    fn rand(&self) -> u64 {
        let mut s = self.rng.lock().expect("rng lock");
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// The fate and the time to decide, by source.
    fn fate(&self, source: &str) -> (Fate, u64) {
        let base = self.cfg.latency_ms + self.rand() % (self.cfg.jitter_ms + 1);
        match source {
            "tok_ok" => (Fate::Capture, base),
            "tok_decline" => (Fate::Decline, base),
            "tok_timeout" => (Fate::CaptureThenHang(self.cfg.hang_ms), base),
            s if s.starts_with("tok_slow_") => {
                let extra = s["tok_slow_".len()..]
                    .parse::<u64>()
                    .unwrap_or(0)
                    .min(600_000);
                (Fate::Capture, base + extra)
            }
            s if s.starts_with("tok_async_") => {
                let extra = s["tok_async_".len()..]
                    .parse::<u64>()
                    .unwrap_or(0)
                    .min(600_000);
                (Fate::CaptureAsync, base + extra)
            }
            _ => {
                let roll = (self.rand() % 100) as u32;
                if roll < self.cfg.decline_percent {
                    (Fate::Decline, base)
                } else if roll < self.cfg.decline_percent + self.cfg.timeout_percent {
                    (Fate::CaptureThenHang(self.cfg.hang_ms), base)
                } else {
                    (Fate::Capture, base)
                }
            }
        }
    }
}

fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({"status": status.as_u16(), "detail": detail.into()})),
    )
        .into_response()
}

/// The simulator's router (serve it with `axum::serve`).
pub fn router(cfg: SimConfig) -> axum::Router {
    let seed = cfg.seed.max(1);
    let sim = Arc::new(Sim {
        cfg,
        charges: Mutex::new(HashMap::new()),
        rng: Mutex::new(seed),
        next_id: AtomicU64::new(1),
        captured_minor: AtomicU64::new(0),
        refunded_minor: AtomicU64::new(0),
        callbacks_sent: AtomicU64::new(0),
        http: client::tls::http_builder()
            .build()
            .expect("an HTTP client builds"),
    });
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/charges", post(charge).get(book))
        .route("/v1/charges/{key}", get(lookup))
        .route("/v1/charges/{key}/cancel", post(cancel))
        .route("/v1/charges/{key}/refund", post(refund))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(sim)
}

fn validate(req: &ChargeRequest) -> Result<(), String> {
    if req.idempotency_key.is_empty() || req.idempotency_key.len() > MAX_KEY_LEN {
        return Err(format!("idempotency_key must be 1..={MAX_KEY_LEN} bytes"));
    }
    if !req
        .idempotency_key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("idempotency_key must be [A-Za-z0-9_-]".into());
    }
    if req.amount_minor == 0 {
        return Err("amount_minor must be positive".into());
    }
    if req.currency.len() != 3 || !req.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("currency must be three upper-case letters".into());
    }
    if req.source.is_empty() || req.source.len() > MAX_SOURCE_LEN {
        return Err(format!("source must be 1..={MAX_SOURCE_LEN} bytes"));
    }
    if let Some(u) = &req.callback_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        return Err("callback_url must be an http(s) URL".into());
    }
    Ok(())
}

async fn charge(State(sim): State<Arc<Sim>>, body: axum::body::Bytes) -> Response {
    let req: ChargeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("bad charge: {e}")),
    };
    if let Err(e) = validate(&req) {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, e);
    }
    let asked = (req.amount_minor, req.currency.clone(), req.source.clone());
    {
        let mut charges = sim.charges.lock().expect("charges lock");
        if let Some(e) = charges.get(&req.idempotency_key) {
            return match &e.asked {
                Some(a) if *a != asked => problem(
                    StatusCode::CONFLICT,
                    "idempotency_key reused for another charge",
                ),
                // A repeat (or a charge after a bare cancel): the charge as it stands.
                _ => (StatusCode::OK, Json(e.charge.clone())).into_response(),
            };
        }
        if charges.len() >= MAX_CHARGES {
            return problem(StatusCode::SERVICE_UNAVAILABLE, "the simulator is full");
        }
        let id = sim.next_id.fetch_add(1, Relaxed);
        charges.insert(
            req.idempotency_key.clone(),
            Entry {
                charge: Charge {
                    idempotency_key: req.idempotency_key.clone(),
                    charge_id: format!("ch_{id}"),
                    status: ChargeStatus::Pending,
                    amount_minor: req.amount_minor,
                    currency: req.currency.clone(),
                    reason: None,
                },
                asked: Some(asked),
            },
        );
    }
    // The decision runs in its own task: like a real provider, it happens whether or not
    // the caller is still there to hear it.
    let (fate, decide_after) = sim.fate(&req.source);
    let hang = match fate {
        Fate::CaptureThenHang(ms) => ms,
        _ => 0,
    };
    let pending = (
        StatusCode::OK,
        Json(Charge {
            idempotency_key: req.idempotency_key.clone(),
            charge_id: String::new(),
            status: ChargeStatus::Pending,
            amount_minor: req.amount_minor,
            currency: req.currency.clone(),
            reason: Some("asynchronous payment: the outcome follows by callback".into()),
        }),
    );
    let decider = {
        let sim = sim.clone();
        tokio::spawn(async move { decide(&sim, &req, fate, decide_after).await })
    };
    if let Fate::CaptureAsync = fate {
        return pending.into_response();
    }
    let decided = match decider.await {
        Ok(c) => c,
        Err(e) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("decider failed: {e}"),
            );
        }
    };
    if hang > 0 {
        tokio::time::sleep(Duration::from_millis(hang)).await;
    }
    (StatusCode::OK, Json(decided)).into_response()
}

/// Decide a pending charge after `after_ms` (unless it was cancelled meanwhile), and post its
/// callbacks.
async fn decide(sim: &Arc<Sim>, req: &ChargeRequest, fate: Fate, after_ms: u64) -> Charge {
    tokio::time::sleep(Duration::from_millis(after_ms)).await;
    let decided = {
        let mut charges = sim.charges.lock().expect("charges lock");
        let e = charges
            .get_mut(&req.idempotency_key)
            .expect("charges are never removed");
        if e.charge.status == ChargeStatus::Pending {
            match fate {
                Fate::Decline => {
                    e.charge.status = ChargeStatus::Declined;
                    e.charge.reason = Some("card declined".into());
                }
                Fate::Capture | Fate::CaptureAsync | Fate::CaptureThenHang(_) => {
                    e.charge.status = ChargeStatus::Captured;
                    sim.captured_minor.fetch_add(e.charge.amount_minor, Relaxed);
                }
            }
        }
        e.charge.clone()
    };
    if let Some(url) = &req.callback_url
        && matches!(
            decided.status,
            ChargeStatus::Captured | ChargeStatus::Declined
        )
    {
        let copies = 1 + sim.cfg.duplicate_callbacks;
        let (sim, url, decided) = (sim.clone(), url.clone(), decided.clone());
        tokio::spawn(async move { send_callbacks(&sim, &url, &decided, copies).await });
    }
    decided
}

/// Post the outcome `copies` times (at-least-once, a few retries each, small random gaps).
async fn send_callbacks(sim: &Sim, url: &str, charge: &Charge, copies: u32) {
    let body = serde_json::to_vec(&ChargeCallback {
        idempotency_key: charge.idempotency_key.clone(),
        charge_id: charge.charge_id.clone(),
        status: charge.status,
    })
    .expect("callbacks serialize");
    let signature = sign(&sim.cfg.callback_secret, &body);
    for _ in 0..copies {
        tokio::time::sleep(Duration::from_millis(sim.rand() % 50)).await;
        for attempt in 0..3u64 {
            let sent = sim
                .http
                .post(url)
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .timeout(Duration::from_secs(10))
                .body(body.clone())
                .send()
                .await;
            sim.callbacks_sent.fetch_add(1, Relaxed);
            if sent.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
    }
}

async fn lookup(State(sim): State<Arc<Sim>>, Path(key): Path<String>) -> Response {
    match sim.charges.lock().expect("charges lock").get(&key) {
        Some(e) => (StatusCode::OK, Json(e.charge.clone())).into_response(),
        None => problem(StatusCode::NOT_FOUND, format!("no charge {key}")),
    }
}

async fn cancel(State(sim): State<Arc<Sim>>, Path(key): Path<String>) -> Response {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "bad key");
    }
    let mut charges = sim.charges.lock().expect("charges lock");
    if charges.len() >= MAX_CHARGES && !charges.contains_key(&key) {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "the simulator is full");
    }
    let id = sim.next_id.fetch_add(1, Relaxed);
    let e = charges.entry(key.clone()).or_insert_with(|| Entry {
        charge: Charge {
            idempotency_key: key,
            charge_id: format!("ch_{id}"),
            status: ChargeStatus::Cancelled,
            amount_minor: 0,
            currency: String::new(),
            reason: Some("cancelled before it arrived".into()),
        },
        asked: None,
    });
    match e.charge.status {
        ChargeStatus::Pending => {
            e.charge.status = ChargeStatus::Cancelled;
            e.charge.reason = Some("cancelled before it was decided".into());
        }
        // A decided charge is left as it is: a cancel only voids what is undecided. (A cancel
        // that refunded a capture could land late, after the capture was booked: money back
        // for a valid ticket. Refunds are their own, explicit call.)
        ChargeStatus::Captured
        | ChargeStatus::Declined
        | ChargeStatus::Cancelled
        | ChargeStatus::Refunded => {}
    }
    (StatusCode::OK, Json(e.charge.clone())).into_response()
}

async fn refund(State(sim): State<Arc<Sim>>, Path(key): Path<String>) -> Response {
    let mut charges = sim.charges.lock().expect("charges lock");
    let Some(e) = charges.get_mut(&key) else {
        return problem(StatusCode::NOT_FOUND, format!("no charge {key}"));
    };
    match e.charge.status {
        ChargeStatus::Captured => {
            e.charge.status = ChargeStatus::Refunded;
            e.charge.reason = Some("refunded".into());
            sim.refunded_minor.fetch_add(e.charge.amount_minor, Relaxed);
            (StatusCode::OK, Json(e.charge.clone())).into_response()
        }
        ChargeStatus::Refunded => (StatusCode::OK, Json(e.charge.clone())).into_response(),
        s => problem(
            StatusCode::CONFLICT,
            format!("charge {key} is {s:?}: nothing to refund"),
        ),
    }
}

async fn book(State(sim): State<Arc<Sim>>) -> Json<ProviderBook> {
    let mut charges: Vec<Charge> = sim
        .charges
        .lock()
        .expect("charges lock")
        .values()
        .map(|e| e.charge.clone())
        .collect();
    charges.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
    Json(ProviderBook {
        charges,
        captured_minor: sim.captured_minor.load(Relaxed),
        refunded_minor: sim.refunded_minor.load(Relaxed),
        callbacks_sent: sim.callbacks_sent.load(Relaxed),
    })
}
