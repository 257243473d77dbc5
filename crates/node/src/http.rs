//! The HTTP/JSON v1 API (docs/http-api.md): authentication, body limits, JSON errors, and one
//! handler per call. Handlers parse and authorize at the edge, then either propose a command
//! (writes) or read the local ledger after a read index (reads).

use crate::app::{App, Consistency};
use crate::convert::*;
use crate::error::ApiError;
use crate::http_manage::{block_seats, check_in, list_bookings, sales_report, update_event};
use crate::metrics::Route;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ledger::*;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;

type Result<T> = std::result::Result<T, ApiError>;
type AppState = State<Arc<App>>;

pub fn router(app: Arc<App>) -> Router {
    let limiter = crate::ratelimit::Limiter::new(app.clone());
    router_with(app, limiter)
}

/// [`router`] with a rate limiter shared with the gRPC service (crate::run).
pub fn router_with(app: Arc<App>, limiter: Arc<crate::ratelimit::Limiter>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/auth/signup", post(signup))
        .route("/v1/auth/login", post(login))
        .route("/v1/api-keys", post(create_api_key))
        .route("/v1/venues", post(create_venue))
        .route("/v1/venues/{id}", get(get_venue))
        .route("/v1/events", post(create_event).get(list_events))
        .route("/v1/events/{id}", get(get_event).patch(update_event))
        .route("/v1/events/{id}/performances", post(create_performance))
        .route(
            "/v1/performances/{id}",
            get(get_performance).patch(update_performance),
        )
        .route("/v1/performances/{id}/seats", get(get_seats))
        .route("/v1/performances/{id}/blocked-seats", post(block_seats))
        .route("/v1/performances/{id}/check-in", post(check_in))
        .route("/v1/performances/{id}/queue", post(join_queue))
        .route("/v1/queue/{id}", get(get_queue))
        .route("/v1/holds", post(create_hold))
        .route("/v1/holds/{id}", get(get_hold).delete(release_hold))
        .route("/v1/holds/{id}/extend", post(extend_hold))
        .route("/v1/holds/{id}/confirm", post(confirm_hold))
        .route("/v1/holds/{id}/confirm-late", post(confirm_late))
        .route("/v1/holds/{id}/payment", post(record_payment))
        .route("/v1/holds/{id}/checkout", get(get_checkout))
        .route("/v1/checkouts", get(list_checkouts))
        .route("/v1/bookings", get(list_bookings))
        .route("/v1/bookings/{id}", get(get_booking))
        .route("/v1/reports/performances/{id}/sales", get(sales_report))
        .route("/v1/bookings/{id}/refund", post(refund_booking))
        .route("/v1/watch", get(crate::watch::sse))
        .merge(crate::admin::router())
        .merge(crate::openapi::router())
        .fallback(|| async { ApiError::not_found("no such route; see docs/http-api.md") })
        .layer(DefaultBodyLimit::max(api::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(crate::error::problems_only))
        .layer(axum::middleware::from_fn_with_state(
            limiter,
            crate::ratelimit::limit,
        ))
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Latency and status-class metrics for every request.
async fn observe(State(app): AppState, req: Request, next: axum::middleware::Next) -> Response {
    let route = match *req.method() {
        axum::http::Method::GET if !req.uri().path().starts_with("/v1/cluster") => Route::Read,
        _ if req.uri().path().starts_with("/v1/cluster") => Route::Admin,
        _ => Route::Write,
    };
    let start = Instant::now();
    let resp = next.run(req).await;
    app.metrics
        .observe_latency(route, start.elapsed().as_micros() as u64);
    let s = resp.status();
    if s.is_client_error() {
        app.metrics
            .http_responses_4xx
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    } else if s.is_server_error() {
        app.metrics
            .http_responses_5xx
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    resp
}

/// JSON body extractor whose failures are problems (400 malformed, 413 too large, 415).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> ApiError {
    let status = e.status();
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            status,
            "payload_too_large",
            format!("the request body is over {} bytes", api::MAX_BODY_BYTES),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            status,
            "unsupported_media_type",
            "send JSON with Content-Type: application/json",
        ),
        _ => ApiError::bad_request(format!("malformed request body: {}", e.body_text())),
    }
}

#[derive(Deserialize, Default)]
pub struct ReadParams {
    consistency: Option<String>,
    section: Option<String>,
    category: Option<String>,
    q: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

impl ReadParams {
    fn consistency(&self) -> Result<Consistency> {
        parse_consistency(self.consistency.as_deref())
    }
}

fn parse_consistency(given: Option<&str>) -> Result<Consistency> {
    match given {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => Err(ApiError::bad_request(format!(
            "consistency must be linearizable or stale, not {other:?}"
        ))),
    }
}

/// `Authorization: Bearer <api key>` → the key's principal.
pub async fn authenticate(app: &App, headers: &HeaderMap) -> Result<Principal> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthenticated("send Authorization: Bearer <api key>"))?;
    authenticate_value(app, value.to_str().ok()).await
}

/// An `Authorization` value (`None`: not text) as a principal: an API key or a login token.
pub async fn authenticate_value(app: &App, value: Option<&str>) -> Result<Principal> {
    let token = value
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or_else(|| {
            ApiError::unauthenticated("the Authorization header must be `Bearer <api key>`")
        })?;
    if crate::auth::looks_like_token(token) {
        return authenticate_token(app, token).await;
    }
    let digest = *blake3::hash(token.as_bytes()).as_bytes();
    let lookup = |l: &Ledger| l.api_key_by_digest(&digest).map(|k| (k.id, k.revoked));
    // A key made a moment ago may not be applied here yet: look again after a read index.
    let found = match app.read(Consistency::Stale, lookup).await? {
        Some(k) => Some(k),
        None => app.read(Consistency::Linearizable, lookup).await?,
    };
    match found {
        Some((id, false)) => Ok(Principal::ApiKey(id)),
        Some((_, true)) => Err(ApiError::unauthenticated("this API key was revoked")),
        None => Err(ApiError::unauthenticated("unknown API key")),
    }
}

/// A login token: its MAC under the cluster's secret, its expiry by this node's clock, and
/// a user that exists (a token minted a moment ago on another node may name a user not yet
/// applied here: look again after a read index).
async fn authenticate_token(app: &App, token: &str) -> Result<Principal> {
    let secret = token_secret(app).await?;
    let user = crate::auth::verify(&secret, token, app.now_ms())?;
    let exists = |l: &Ledger| l.state().users.contains_key(&user);
    if app.read(Consistency::Stale, exists).await?
        || app.read(Consistency::Linearizable, exists).await?
    {
        Ok(Principal::User(user))
    } else {
        Err(ApiError::unauthenticated("the token names no account"))
    }
}

fn session(app: &App, secret: &Digest32, user: UserId) -> api::Session {
    let expires_at_ms = app.now_ms() + app.cfg.token_ttl.as_millis() as u64;
    api::Session {
        user_id: user.to_string(),
        token: crate::auth::mint(secret, user, expires_at_ms),
        expires_at: crate::time::rfc3339(expires_at_ms),
        expires_at_ms,
    }
}

async fn token_secret(app: &App) -> Result<Digest32> {
    app.read(Consistency::Stale, |l| l.state().token_secret)
        .await?
        .ok_or_else(|| ApiError::unavailable("not_initialized", "the cluster is not initialized"))
}

/// `POST /v1/auth/signup`: a buyer account; the password is hashed here, before proposing.
async fn signup(
    State(app): AppState,
    headers: HeaderMap,
    Body(b): Body<api::Signup>,
) -> Result<Response> {
    // No Idempotency-Key here: anonymous signups all propose as the system, so a key would
    // be shared between strangers (a replay could hand one the other's account). A retried
    // signup is answered 409 `already_exists`; log in instead.
    if headers.contains_key(api::IDEMPOTENCY_KEY_HEADER) {
        return Err(ApiError::bad_request(
            "signup takes no Idempotency-Key: a retry is answered 409 already_exists; log in",
        ));
    }
    let secret = token_secret(&app).await?;
    let password_hash = app.passwords.hash(b.password).await?;
    let op = Op::CreateUser {
        email: b.email,
        name: b.name,
        password_hash,
        role: Role::Buyer,
    };
    match app.write(Principal::System, None, op).await? {
        Outcome::Ok(Reply::UserCreated { user }) => Ok(created(session(&app, &secret, user))),
        Outcome::Ok(other) => Err(unexpected(&other)),
        Outcome::Rejected(r) => Err(r.into()),
    }
}

/// `POST /v1/auth/login`: the same answer for an unknown email and a wrong password.
async fn login(State(app): AppState, Body(b): Body<api::Login>) -> Result<Json<api::Session>> {
    let secret = token_secret(&app).await?;
    let email = b.email.to_ascii_lowercase();
    let lookup = |l: &Ledger| {
        l.user_by_email(&email)
            .map(|u| (u.id, u.password_hash.clone()))
    };
    let found = match app.read(Consistency::Stale, lookup).await? {
        Some(u) => Some(u),
        None => app.read(Consistency::Linearizable, lookup).await?,
    };
    let wrong = || ApiError::unauthenticated("wrong email or password");
    let Some((user, stored)) = found else {
        // Spend the same time as a real check, so timing does not tell which emails exist.
        let _ = app.passwords.hash("timing-equalizer".into()).await;
        return Err(wrong());
    };
    if app.passwords.verify(b.password, stored).await? {
        Ok(Json(session(&app, &secret, user)))
    } else {
        Err(wrong())
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>> {
    match headers.get(api::IDEMPOTENCY_KEY_HEADER) {
        None => Ok(None),
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?;
            if k.is_empty() || k.len() > limits::MAX_IDEMPOTENCY_KEY_LEN {
                return Err(ApiError::bad_request(
                    "Idempotency-Key must be 1..=128 bytes",
                ));
            }
            Ok(Some(k.to_string()))
        }
    }
}

/// Authenticate, propose, and turn a rejection into its problem.
async fn write(app: &App, headers: &HeaderMap, op: Op) -> Result<Reply> {
    let principal = authenticate(app, headers).await?;
    write_as(app, headers, principal, op).await
}

pub(crate) async fn write_as(
    app: &App,
    headers: &HeaderMap,
    principal: Principal,
    op: Op,
) -> Result<Reply> {
    let key = idempotency_key(headers)?;
    match app.write(principal, key, op).await? {
        Outcome::Ok(reply) => Ok(reply),
        Outcome::Rejected(r) => Err(r.into()),
    }
}

fn created<T: serde::Serialize>(v: T) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

fn unexpected(reply: &Reply) -> ApiError {
    ApiError::internal(format!("unexpected ledger reply {reply:?}"))
}

// ---------------------------------------------------------------- probes

async fn readyz(State(app): AppState) -> Response {
    match app.readiness() {
        Ok(()) => "ready".into_response(),
        Err(why) => ApiError::unavailable("not_ready", why).into_response(),
    }
}

async fn metrics(State(app): AppState) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.render_metrics(),
    )
        .into_response()
}

// ---------------------------------------------------------------- accounts

async fn create_api_key(
    State(app): AppState,
    headers: HeaderMap,
    Body(b): Body<api::CreateApiKey>,
) -> Result<Response> {
    let role = Role::parse(&b.role)
        .ok_or_else(|| ApiError::invalid("role must be buyer, organizer, service or operator"))?;
    let secret = crate::app::random_key();
    let key_digest = *blake3::hash(secret.as_bytes()).as_bytes();
    match write(
        &app,
        &headers,
        Op::CreateApiKey {
            name: b.name,
            role,
            key_digest,
        },
    )
    .await?
    {
        Reply::ApiKeyCreated { key } => Ok(created(api::ApiKeyCreated {
            key_id: key.to_string(),
            key: secret,
        })),
        other => Err(unexpected(&other)),
    }
}

// ---------------------------------------------------------------- catalog

async fn create_venue(
    State(app): AppState,
    headers: HeaderMap,
    Body(b): Body<api::CreateVenue>,
) -> Result<Response> {
    match write(&app, &headers, venue_op(b)).await? {
        Reply::VenueCreated {
            venue,
            seats,
            ga_capacity,
        } => Ok(created(api::VenueCreated {
            venue_id: venue.to_string(),
            seats,
            ga_capacity,
        })),
        other => Err(unexpected(&other)),
    }
}

async fn get_venue(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ReadParams>,
) -> Result<Json<api::Venue>> {
    authenticate(&app, &headers).await?;
    let id: VenueId = parse_id(&id, "venue")?;
    app.read(q.consistency()?, |l| {
        l.state().venues.get(&id).map(venue_view)
    })
    .await?
    .map(Json)
    .ok_or_else(|| ApiError::not_found(format!("no venue {id}")))
}

async fn create_event(
    State(app): AppState,
    headers: HeaderMap,
    Body(b): Body<api::CreateEvent>,
) -> Result<Response> {
    match write(&app, &headers, event_op(b)).await? {
        Reply::EventCreated { event } => Ok(created(api::EventCreated {
            event_id: event.to_string(),
        })),
        other => Err(unexpected(&other)),
    }
}

const MAX_PAGE: usize = 500;

async fn list_events(
    State(app): AppState,
    headers: HeaderMap,
    Query(q): Query<ReadParams>,
) -> Result<Json<api::EventList>> {
    authenticate(&app, &headers).await?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={MAX_PAGE}"
        )));
    }
    let after: Option<EventId> = match &q.after {
        Some(a) => Some(
            a.parse()
                .map_err(|_| ApiError::bad_request("after must be an event id"))?,
        ),
        None => None,
    };
    let needle = q.q.as_deref().map(str::to_lowercase);
    let list = app
        .read(q.consistency()?, |l| {
            let range = match after {
                Some(a) => l
                    .state()
                    .events
                    .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
                None => l.state().events.range(..),
            };
            let mut events: Vec<api::Event> = range
                .map(|(_, e)| e)
                .filter(|e| q.category.as_ref().is_none_or(|c| &e.category == c))
                .filter(|e| {
                    needle.as_ref().is_none_or(|n| {
                        e.name.to_lowercase().contains(n)
                            || e.description.to_lowercase().contains(n)
                    })
                })
                .take(limit + 1)
                .map(|e| event_view(l, e))
                .collect();
            let next = (events.len() > limit).then(|| {
                events.truncate(limit);
                events
                    .last()
                    .map(|e| e.event_id.clone())
                    .unwrap_or_default()
            });
            api::EventList { events, next }
        })
        .await?;
    Ok(Json(list))
}

async fn get_event(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ReadParams>,
) -> Result<Json<api::Event>> {
    authenticate(&app, &headers).await?;
    let id: EventId = parse_id(&id, "event")?;
    app.read(q.consistency()?, |l| {
        l.state().events.get(&id).map(|e| event_view(l, e))
    })
    .await?
    .map(Json)
    .ok_or_else(|| ApiError::not_found(format!("no event {id}")))
}

async fn create_performance(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(b): Body<api::CreatePerformance>,
) -> Result<Response> {
    let principal = authenticate(&app, &headers).await?;
    let event: EventId = parse_id(&id, "event")?;
    let op = app
        .read(Consistency::Linearizable, |l| performance_op(l, event, b))
        .await??;
    match write_as(&app, &headers, principal, op).await? {
        Reply::PerformanceCreated { performance } => Ok(created(api::PerformanceCreated {
            performance_id: performance.to_string(),
        })),
        other => Err(unexpected(&other)),
    }
}

async fn read_performance(
    app: &App,
    id: PerformanceId,
    c: Consistency,
) -> Result<api::Performance> {
    app.read(c, |l| {
        l.state()
            .performances
            .get(&id)
            .map(|p| performance_view(l, p))
    })
    .await?
    .ok_or_else(|| ApiError::not_found(format!("no performance {id}")))
}

async fn get_performance(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ReadParams>,
) -> Result<Json<api::Performance>> {
    authenticate(&app, &headers).await?;
    Ok(Json(
        read_performance(&app, parse_id(&id, "performance")?, q.consistency()?).await?,
    ))
}

async fn update_performance(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(b): Body<api::UpdatePerformance>,
) -> Result<Json<api::Performance>> {
    let id: PerformanceId = parse_id(&id, "performance")?;
    write(&app, &headers, status_op(id, &b)?).await?;
    Ok(Json(read_performance(&app, id, Consistency::Stale).await?))
}

async fn get_seats(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ReadParams>,
) -> Result<Json<api::SeatMap>> {
    authenticate(&app, &headers).await?;
    let id: PerformanceId = parse_id(&id, "performance")?;
    let section = q.section.clone();
    app.read(q.consistency()?, |l| {
        match l.state().performances.get(&id) {
            Some(p) => seat_map(l, p, section.as_deref()),
            None => Err(ApiError::not_found(format!("no performance {id}"))),
        }
    })
    .await?
    .map(Json)
}

// ---------------------------------------------------------------- waiting room

async fn join_queue(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let performance: PerformanceId = parse_id(&id, "performance")?;
    match write(&app, &headers, Op::JoinQueue { performance }).await? {
        Reply::QueueJoined { queue, position } => Ok(created(api::QueueJoined {
            queue_id: queue.to_string(),
            position,
        })),
        other => Err(unexpected(&other)),
    }
}

async fn get_queue(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ReadParams>,
) -> Result<Json<api::QueueStatus>> {
    let principal = authenticate(&app, &headers).await?;
    let queue: QueueId = parse_id(&id, "queue entry")?;
    let view = app
        .read(q.consistency()?, |l| {
            let (e, position) = l.queue_entry(queue)?;
            Some((e.buyer, queue_view(queue, e, position)))
        })
        .await?;
    match view {
        Some((buyer, v)) if buyer == principal || app.is_operator(principal).await? => Ok(Json(v)),
        Some(_) => Err(ApiError::forbidden("this queue entry is another buyer's")),
        None => Err(ApiError::not_found(format!("no queue entry {queue}"))),
    }
}

// ---------------------------------------------------------------- holds and bookings

async fn create_hold(
    State(app): AppState,
    headers: HeaderMap,
    Body(b): Body<api::CreateHold>,
) -> Result<Response> {
    let principal = authenticate(&app, &headers).await?;
    // Venues never change, so resolving seat names needs no read index unless the
    // performance is too new to be here yet.
    let op = match app.read(Consistency::Stale, |l| hold_op(l, &b)).await? {
        Err(e) if e.code == "not_found" => {
            app.read(Consistency::Linearizable, |l| hold_op(l, &b))
                .await??
        }
        other => other?,
    };
    match write_as(&app, &headers, principal, op).await? {
        Reply::HoldPlaced(r) => {
            let view = app
                .read(Consistency::Stale, |l| {
                    l.state().holds.get(&r.hold).map(|h| hold_view(l, h))
                })
                .await?;
            view.map(created)
                .ok_or_else(|| ApiError::internal("hold placed but not readable"))
        }
        other => Err(unexpected(&other)),
    }
}

async fn get_hold(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ReadParams>,
) -> Result<Json<api::Hold>> {
    let principal = authenticate(&app, &headers).await?;
    Ok(Json(
        app.visible_hold(principal, parse_id(&id, "hold")?, q.consistency()?)
            .await?,
    ))
}

async fn release_hold(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<api::Hold>> {
    let principal = authenticate(&app, &headers).await?;
    let hold: HoldId = parse_id(&id, "hold")?;
    write_as(&app, &headers, principal, Op::ReleaseHold { hold }).await?;
    Ok(Json(
        app.visible_hold(principal, hold, Consistency::Stale)
            .await?,
    ))
}

async fn extend_hold(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(b): Body<api::ExtendHold>,
) -> Result<Json<api::Hold>> {
    let principal = authenticate(&app, &headers).await?;
    let hold: HoldId = parse_id(&id, "hold")?;
    write_as(
        &app,
        &headers,
        principal,
        Op::ExtendHold {
            hold,
            payment_ref: b.payment_ref,
        },
    )
    .await?;
    Ok(Json(
        app.visible_hold(principal, hold, Consistency::Stale)
            .await?,
    ))
}

async fn confirm_hold(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(b): Body<api::ConfirmHold>,
) -> Result<Response> {
    book(&app, &headers, &id, b.payment_ref, false).await
}

/// The written rule for a payment that landed after its hold expired: the same seats are
/// booked if all are still free, else 409 `seat_unavailable` (the payments service refunds).
async fn confirm_late(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(b): Body<api::ConfirmHold>,
) -> Result<Response> {
    book(&app, &headers, &id, b.payment_ref, true).await
}

/// Confirm a live hold, or (late) an expired one in checkout, into a booking with one random
/// check-in code per ticket, drawn here on the proposer.
async fn book(
    app: &Arc<App>,
    headers: &HeaderMap,
    id: &str,
    payment_ref: String,
    late: bool,
) -> Result<Response> {
    let hold: HoldId = parse_id(id, "hold")?;
    let principal = authenticate(app, headers).await?;
    let code_seed = rand::random::<CodeSeed>();
    let op = if late {
        Op::ConfirmLate {
            hold,
            payment_ref,
            code_seed,
        }
    } else {
        Op::ConfirmHold {
            hold,
            payment_ref,
            code_seed,
        }
    };
    match write_as(app, headers, principal, op).await? {
        Reply::BookingConfirmed(r) => {
            let view = app
                .read(Consistency::Stale, |l| {
                    l.state()
                        .bookings
                        .get(&r.booking)
                        .map(|b| booking_view(l, b))
                })
                .await?;
            view.map(created)
                .ok_or_else(|| ApiError::internal("booking confirmed but not readable"))
        }
        other => Err(unexpected(&other)),
    }
}

async fn record_payment(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(b): Body<api::RecordPayment>,
) -> Result<Json<api::Checkout>> {
    let hold: HoldId = parse_id(&id, "hold")?;
    let principal = authenticate(&app, &headers).await?;
    let op = Op::RecordPayment {
        hold,
        payment_ref: b.payment_ref,
        event: crate::convert::payment_event(b.event),
    };
    match write_as(&app, &headers, principal, op).await? {
        Reply::PaymentRecorded { .. } => {}
        other => return Err(unexpected(&other)),
    }
    checkout_of(&app, principal, hold, Consistency::Stale).await
}

async fn get_checkout(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ReadParams>,
) -> Result<Json<api::Checkout>> {
    let hold: HoldId = parse_id(&id, "hold")?;
    let principal = authenticate(&app, &headers).await?;
    checkout_of(&app, principal, hold, q.consistency()?).await
}

/// A hold's checkout as its buyer, a service or an operator may see it.
async fn checkout_of(
    app: &Arc<App>,
    principal: Principal,
    hold: HoldId,
    c: Consistency,
) -> Result<Json<api::Checkout>> {
    // Ownership first: the same answer (403/404) as reading the hold itself.
    app.visible_hold(principal, hold, c).await?;
    let view = app
        .read(Consistency::Stale, |l| {
            l.state()
                .holds
                .get(&hold)
                .and_then(crate::convert::checkout_view)
        })
        .await?;
    view.map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "hold {hold} has no checkout: it was never extended with a payment_ref"
        ))
    })
}

/// Checkouts for the payments service, in hold-id order: `?open=true` (the default) lists
/// those still waiting for a payment outcome; `?open=false` every hold still kept that has a
/// checkout (a page scans at most `MAX_CHECKOUT_SCAN` holds and may come back short).
async fn list_checkouts(
    State(app): AppState,
    headers: HeaderMap,
    Query(q): Query<CheckoutParams>,
) -> Result<Json<api::CheckoutList>> {
    const MAX_CHECKOUT_SCAN: usize = 100_000;
    let principal = authenticate(&app, &headers).await?;
    if !app.is_service_or_operator(principal).await? {
        return Err(ApiError::forbidden(
            "listing checkouts needs a service or operator key",
        ));
    }
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={MAX_PAGE}"
        )));
    }
    let after: Option<HoldId> = match &q.after {
        Some(a) => Some(
            a.parse()
                .map_err(|_| ApiError::bad_request("after must be a hold id"))?,
        ),
        None => None,
    };
    let consistency = parse_consistency(q.consistency.as_deref())?;
    let open_only = q.open.unwrap_or(true);
    let list = app
        .read(consistency, |l| {
            let mut checkouts = Vec::with_capacity(limit.min(1024));
            // The cursor is the last hold looked at, listed or not: a page that scanned
            // MAX_CHECKOUT_SCAN holds without one checkout still moves on.
            let mut last_seen = None;
            let mut more = false;
            if open_only {
                for h in l.open_checkouts(after) {
                    if checkouts.len() == limit {
                        more = true;
                        break;
                    }
                    checkouts.extend(crate::convert::checkout_view(h));
                    last_seen = Some(h.id);
                }
            } else {
                let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
                for (scanned, h) in l
                    .state()
                    .holds
                    .range((from, std::ops::Bound::Unbounded))
                    .map(|(_, h)| h)
                    .enumerate()
                {
                    if checkouts.len() == limit || scanned == MAX_CHECKOUT_SCAN {
                        more = true;
                        break;
                    }
                    checkouts.extend(crate::convert::checkout_view(h));
                    last_seen = Some(h.id);
                }
            }
            api::CheckoutList {
                checkouts,
                next: if more {
                    last_seen.map(|h| h.to_string())
                } else {
                    None
                },
            }
        })
        .await?;
    Ok(Json(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutParams {
    open: Option<bool>,
    after: Option<String>,
    limit: Option<usize>,
    consistency: Option<String>,
}

async fn get_booking(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ReadParams>,
) -> Result<Json<api::Booking>> {
    let principal = authenticate(&app, &headers).await?;
    let id: BookingId = parse_id(&id, "booking")?;
    Ok(Json(
        app.visible_booking(principal, id, q.consistency()?).await?,
    ))
}

async fn refund_booking(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<api::Refunded>> {
    let booking: BookingId = parse_id(&id, "booking")?;
    // The body is optional: none refunds the whole booking.
    let b: api::RefundRequest = if body.iter().all(u8::is_ascii_whitespace) {
        api::RefundRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("malformed request body: {e}")))?
    };
    let mut tickets = Vec::with_capacity(b.tickets.len());
    for t in &b.tickets {
        tickets.push(
            t.parse::<TicketId>()
                .map_err(|_| ApiError::invalid(format!("{t:?} is not a ticket id")))?,
        );
    }
    // Without a refund_ref the node names the refund; from the idempotency key when there is
    // one, so that a retry is the same request (a random name made a retry 409).
    let refund_ref = match (b.refund_ref, idempotency_key(&headers)?) {
        (Some(r), _) => r,
        (None, Some(k)) => crate::app::refund_ref_for_key(&booking.to_string(), &k),
        (None, None) => format!("refund-{}", crate::app::random_key()),
    };
    match write(
        &app,
        &headers,
        Op::Refund {
            booking,
            tickets,
            refund_ref,
        },
    )
    .await?
    {
        Reply::Refunded { amount, tickets } => Ok(Json(api::Refunded {
            booking_id: booking.to_string(),
            tickets: tickets.iter().map(|t| t.to_string()).collect(),
            amount_minor: amount.amount_minor,
            currency: amount.currency.to_string(),
        })),
        other => Err(unexpected(&other)),
    }
}
