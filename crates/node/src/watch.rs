//! The change feed to subscribers: `GET /v1/watch` (Server-Sent Events) and gRPC `Watch`.
//!
//! The source is the ledger's own change feed (`ledger::FeedEntry`), which is part of the
//! replicated state: every replica holds the same entries under the same log indexes, and
//! snapshots carry them, so a subscriber may resume from a log index on any node, before or
//! after a restart, and gets every change exactly once. The rules:
//!
//! - **Only applied entries are sent**, and an applied entry is committed: a follower behind
//!   the leader sends less, later, never something that may be lost. A `from` beyond the
//!   committed log (checked with a read index) is refused: it names entries that do not exist.
//! - **One event per log index**, carrying all the changes that entry made, so resuming at
//!   `last index + 1` can neither split nor repeat an entry.
//! - **Never a silent gap**: when `from` is older than the entries this node keeps (the feed
//!   holds at most `ledger::limits::MAX_FEED_EVENTS`), the answer is 410 `feed_truncated`
//!   naming the oldest index available; a subscriber that falls that far behind mid-stream
//!   gets the same problem as its last event.
//! - **Bounded per subscriber**: a producer task copies at most [`MAX_BATCH_ENTRIES`] feed
//!   entries per read of the ledger into a channel of [`SUBSCRIBER_BUFFER_EVENTS`]; when that
//!   channel stays full for [`SLOW_SUBSCRIBER_TIMEOUT`], the subscriber is cut off with
//!   `watch_too_slow` (it resumes from its last index). At most [`MAX_WATCHERS`] streams per
//!   node; more are 503 `too_many_watchers` (another node may have room).

use crate::app::App;
use crate::error::ApiError;
use api::feed::{FeedChange, FeedEvent};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use ledger::{Change, FeedEntry, Ledger, Principal, Role};
use openraft::type_config::async_runtime::WatchReceiver as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc, oneshot};

/// Concurrent watch streams (SSE and gRPC together) one node serves.
pub const MAX_WATCHERS: usize = 256;
/// Events (log indexes) buffered per subscriber between the producer and the connection.
pub const SUBSCRIBER_BUFFER_EVENTS: usize = 512;
/// Feed entries copied out of the ledger per read lock (a log index is never split, so a read
/// may take a few more).
pub const MAX_BATCH_ENTRIES: usize = 1024;
/// How long a subscriber's buffer may stay full before it is cut off.
pub const SLOW_SUBSCRIBER_TIMEOUT: Duration = Duration::from_secs(10);
/// A heartbeat (SSE comment with the applied index) after this long without an event.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// The node's watcher slots: one process serves one node, so a process-wide count is the
/// per-node limit.
static WATCHERS: Semaphore = Semaphore::const_new(MAX_WATCHERS);

/// Why a watch could not start or had to end.
#[derive(Debug)]
pub enum WatchError {
    /// `from` is older than this node keeps; resume from `oldest` after resynchronizing.
    Truncated {
        from: u64,
        oldest: u64,
    },
    Api(ApiError),
}

impl From<ApiError> for WatchError {
    fn from(e: ApiError) -> WatchError {
        WatchError::Api(e)
    }
}

/// The header (HTTP) and metadata key (gRPC) naming the oldest index still available.
pub const OLDEST_INDEX_HEADER: &str = "x-ticketledger-oldest-index";

impl WatchError {
    fn api(&self) -> ApiError {
        match self {
            WatchError::Truncated { from, oldest } => ApiError::new(
                StatusCode::GONE,
                "feed_truncated",
                format!(
                    "the change feed from index {from} is no longer kept on this node; the oldest index available is {oldest}: rebuild your view from a read of the current state, then watch from {oldest}"
                ),
            ),
            WatchError::Api(e) => e.clone(),
        }
    }

    fn oldest(&self) -> Option<u64> {
        match self {
            WatchError::Truncated { oldest, .. } => Some(*oldest),
            WatchError::Api(_) => None,
        }
    }

    /// The problem as JSON, for an SSE `error` event.
    fn problem_json(&self) -> String {
        let e = self.api();
        let p = api::Problem {
            type_: format!("https://ticketledger.dev/problems/{}", e.code),
            title: e.status.canonical_reason().unwrap_or("error").to_string(),
            status: e.status.as_u16(),
            detail: e.detail,
            code: e.code.to_string(),
            instance: None,
        };
        serde_json::to_string(&p).expect("problems serialize")
    }

    pub fn into_status(self) -> tonic::Status {
        let oldest = self.oldest();
        let mut s: tonic::Status = self.api().into();
        if let Some(o) = oldest {
            s.metadata_mut().insert(OLDEST_INDEX_HEADER, o.into());
        }
        s
    }
}

impl IntoResponse for WatchError {
    fn into_response(self) -> Response {
        let oldest = self.oldest();
        let mut r = self.api().into_response();
        if let Some(o) = oldest {
            r.headers_mut()
                .insert(OLDEST_INDEX_HEADER, HeaderValue::from(o));
        }
        r
    }
}

/// What a subscription yields.
#[derive(Debug)]
pub enum Item {
    Event(FeedEvent),
    /// Nothing new for a while; this node has applied up to `applied_index`.
    Heartbeat {
        applied_index: u64,
    },
    /// The stream ends with this error.
    End(WatchError),
}

/// A running watch: events from the producer task, then the reason it ended (if any).
pub struct Subscription {
    rx: mpsc::Receiver<Item>,
    end: oneshot::Receiver<WatchError>,
}

impl Subscription {
    /// The items in order; the last one is `End` unless the node just stopped.
    pub fn into_stream(self) -> impl futures::Stream<Item = Item> + Send + 'static {
        futures::stream::unfold(Some(self), |state| async move {
            let mut s = state?;
            match s.rx.recv().await {
                Some(item) => Some((item, Some(s))),
                None => s.end.await.ok().map(|e| (Item::End(e), None)),
            }
        })
    }
}

/// Start a watch from `from` (0: the oldest change kept) for `principal`.
pub async fn subscribe(
    app: Arc<App>,
    principal: Principal,
    from: u64,
) -> Result<Subscription, WatchError> {
    if !matches!(app.role_of(principal), Some(Role::Service | Role::Operator)) {
        return Err(ApiError::forbidden(
            "watching the change feed needs a service or operator key",
        )
        .into());
    }
    let permit = WATCHERS.try_acquire().map_err(|_| {
        ApiError::unavailable(
            "too_many_watchers",
            format!("this node serves {MAX_WATCHERS} watch streams already; retry later or watch through another node"),
        )
    })?;
    // A `from` past what this node applied may be fine (it is behind) or name entries that
    // were never committed: ask the leader how far the log is committed.
    if from > app.ledger.last_applied_index() + 1 {
        app.linearize().await?;
        let applied = app.ledger.last_applied_index();
        if from > applied + 1 {
            return Err(ApiError::invalid(format!(
                "from {from} is beyond the committed log (last index {applied}): it cannot name an event you have seen; watch from at most {}",
                applied + 1
            ))
            .into());
        }
    }
    app.ledger.read(|l| oldest_complete(l, from))?;
    let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER_EVENTS);
    let (end_tx, end) = oneshot::channel();
    tokio::spawn(async move {
        if let Err(e) = produce(&app, from, &tx, permit).await {
            tracing::info!(error = ?e, "watch ended");
            let _ = end_tx.send(e);
        }
    });
    Ok(Subscription { rx, end })
}

/// The producer: read what was applied since `next`, send it, wait for more. Returns when the
/// subscriber left (`Ok`) or the stream must end with an error.
async fn produce(
    app: &App,
    mut next: u64,
    tx: &mpsc::Sender<Item>,
    _permit: SemaphorePermit<'static>,
) -> Result<(), WatchError> {
    let mut applied = app.raft.metrics();
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        let events = app.ledger.read(|l| read_batch(l, next))?;
        for ev in events {
            let index = ev.log_index;
            match tx
                .send_timeout(Item::Event(ev), SLOW_SUBSCRIBER_TIMEOUT)
                .await
            {
                Ok(()) => {
                    next = index + 1;
                    quiet_since = tokio::time::Instant::now();
                }
                Err(mpsc::error::SendTimeoutError::Closed(_)) => return Ok(()),
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                    return Err(ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "watch_too_slow",
                        format!(
                            "this subscriber did not take events for {}s and was cut off; resume from the index after the last event you received",
                            SLOW_SUBSCRIBER_TIMEOUT.as_secs()
                        ),
                    )
                    .into());
                }
            }
        }
        if app.ledger.read(|l| has_from(l, next)) {
            // More was applied meanwhile, or the batch stopped at its bound: read again.
            continue;
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() {
                return Err(ApiError::unavailable(
                    "unavailable",
                    format!("this node is shutting down; resume from index {next} on another node"),
                ).into());
            },
            _ = tokio::time::sleep_until(quiet_since + HEARTBEAT) => {
                quiet_since = tokio::time::Instant::now();
                let applied_index = app.ledger.last_applied_index();
                // A heartbeat is worth nothing to a subscriber whose buffer is full.
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Item::Heartbeat { applied_index }) {
                    return Ok(());
                }
            },
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// The lowest index from which this node still keeps every change: 0 while the feed never
/// dropped an entry; once it is full, the index after its oldest entry (entries at the oldest
/// index itself may have been dropped in part).
pub fn feed_floor(l: &Ledger) -> u64 {
    let feed = &l.state().feed;
    match feed.front() {
        Some(first) if feed.len() >= ledger::limits::MAX_FEED_EVENTS => first.log_index + 1,
        _ => 0,
    }
}

fn oldest_complete(l: &Ledger, from: u64) -> Result<(), WatchError> {
    let oldest = feed_floor(l);
    if from < oldest {
        return Err(WatchError::Truncated { from, oldest });
    }
    Ok(())
}

fn has_from(l: &Ledger, next: u64) -> bool {
    l.state().feed.back().is_some_and(|e| e.log_index >= next)
}

/// Up to about [`MAX_BATCH_ENTRIES`] feed entries from `next` on, one event per log index;
/// never a part of an index's changes.
fn read_batch(l: &Ledger, next: u64) -> Result<Vec<FeedEvent>, WatchError> {
    oldest_complete(l, next)?;
    let feed = &l.state().feed;
    let start = feed.partition_point(|e| e.log_index < next);
    let mut taken: Vec<&FeedEntry> = Vec::new();
    for e in feed.range(start..) {
        if taken.len() >= MAX_BATCH_ENTRIES
            && taken.last().map(|t| t.log_index) != Some(e.log_index)
        {
            break;
        }
        taken.push(e);
    }
    Ok(group(&taken))
}

/// Consecutive entries of one log index become one event.
fn group(entries: &[&FeedEntry]) -> Vec<FeedEvent> {
    let mut out: Vec<FeedEvent> = Vec::new();
    for e in entries {
        match out.last_mut() {
            Some(ev) if ev.log_index == e.log_index => ev.changes.push(change_view(&e.change)),
            _ => out.push(FeedEvent {
                log_index: e.log_index,
                at_ms: e.at_ms,
                changes: vec![change_view(&e.change)],
            }),
        }
    }
    out
}

fn principal_name(p: Principal) -> String {
    match p {
        Principal::System => "system".into(),
        Principal::User(u) => u.to_string(),
        Principal::ApiKey(k) => k.to_string(),
    }
}

/// A ledger change as the public feed names it.
pub fn change_view(c: &Change) -> FeedChange {
    let kind = |k: &str| FeedChange {
        kind: k.to_string(),
        ..FeedChange::default()
    };
    let s = |x: &dyn std::fmt::Display| Some(x.to_string());
    match c {
        Change::PerformanceCreated {
            performance,
            seed_commitment,
        } => FeedChange {
            performance_id: s(performance),
            seed: seed_commitment.as_ref().map(|d| ledger::hex(d)),
            ..kind("performance_created")
        },
        Change::SaleStatusChanged {
            performance,
            status,
        } => FeedChange {
            performance_id: s(performance),
            status: Some(status.as_str().into()),
            ..kind("sale_status_changed")
        },
        Change::SeedRevealed {
            performance,
            seed,
            prequeue_len,
        } => FeedChange {
            performance_id: s(performance),
            seed: Some(ledger::hex(seed)),
            count: Some(*prequeue_len),
            ..kind("seed_revealed")
        },
        Change::QueueJoined {
            queue,
            buyer,
            prequeue,
        } => FeedChange {
            queue_id: s(queue),
            buyer: Some(principal_name(*buyer)),
            prequeue: Some(*prequeue),
            ..kind("queue_joined")
        },
        Change::QueueAdmitted { queue, until_ms } => FeedChange {
            queue_id: s(queue),
            until_ms: Some(*until_ms),
            ..kind("queue_admitted")
        },
        Change::AdmissionExpired { queue } => FeedChange {
            queue_id: s(queue),
            ..kind("admission_expired")
        },
        Change::QueueSoldOut {
            performance,
            waiting,
        } => FeedChange {
            performance_id: s(performance),
            count: Some(*waiting),
            ..kind("queue_sold_out")
        },
        Change::HoldPlaced {
            hold,
            performance,
            buyer,
            seats,
            expires_at_ms,
        } => FeedChange {
            hold_id: s(hold),
            performance_id: s(performance),
            buyer: Some(principal_name(*buyer)),
            count: Some(*seats),
            until_ms: Some(*expires_at_ms),
            ..kind("hold_placed")
        },
        Change::HoldReleased { hold, performance } => FeedChange {
            hold_id: s(hold),
            performance_id: s(performance),
            ..kind("hold_released")
        },
        Change::HoldExpired { hold, performance } => FeedChange {
            hold_id: s(hold),
            performance_id: s(performance),
            ..kind("hold_expired")
        },
        Change::HoldExtended {
            hold,
            expires_at_ms,
        } => FeedChange {
            hold_id: s(hold),
            until_ms: Some(*expires_at_ms),
            ..kind("hold_extended")
        },
        Change::BookingConfirmed {
            booking,
            hold,
            performance,
            amount,
            tickets,
        } => FeedChange {
            booking_id: s(booking),
            hold_id: s(hold),
            performance_id: s(performance),
            amount_minor: Some(amount.amount_minor),
            currency: s(&amount.currency),
            count: Some(*tickets),
            ..kind("booking_confirmed")
        },
        Change::BookingRefunded {
            booking,
            performance,
            amount,
            tickets,
        } => FeedChange {
            booking_id: s(booking),
            performance_id: s(performance),
            amount_minor: Some(amount.amount_minor),
            currency: s(&amount.currency),
            count: Some(*tickets),
            ..kind("booking_refunded")
        },
        Change::PaymentRecorded {
            hold,
            performance,
            state,
        } => FeedChange {
            hold_id: s(hold),
            performance_id: s(performance),
            status: Some(
                match state {
                    ledger::PaymentState::Captured => "captured",
                    ledger::PaymentState::Failed => "failed",
                    ledger::PaymentState::Refunded => "refunded",
                }
                .into(),
            ),
            ..kind("payment_recorded")
        },
        Change::TicketCheckedIn { ticket, booking } => FeedChange {
            ticket_id: s(ticket),
            booking_id: s(booking),
            ..kind("ticket_checked_in")
        },
    }
}

// ---------------------------------------------------------------- SSE

/// `GET /v1/watch?from=<index>`: the change feed as Server-Sent Events. A reconnecting
/// EventSource sends `Last-Event-ID`, which wins over `from` (it resumes at that id + 1).
pub async fn sse(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, WatchError> {
    let principal = crate::http::authenticate(&app, &headers).await?;
    let from = match last_event_id(&headers)? {
        Some(id) => id.saturating_add(1),
        None => parse_from(query.as_deref())?,
    };
    let sub = subscribe(app, principal, from).await?;
    use futures::StreamExt;
    let events = sub.into_stream().map(|item| {
        Ok::<_, std::convert::Infallible>(match item {
            Item::Event(ev) => Event::default()
                .id(ev.log_index.to_string())
                .event(api::feed::SSE_CHANGE)
                .data(serde_json::to_string(&ev).expect("feed events serialize")),
            Item::Heartbeat { applied_index } => {
                Event::default().comment(format!("applied {applied_index}"))
            }
            Item::End(e) => Event::default()
                .event(api::feed::SSE_ERROR)
                .data(e.problem_json()),
        })
    });
    let mut resp = Sse::new(events).into_response();
    // Proxies must not buffer the stream.
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let v = v.to_str().unwrap_or("").trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("Last-Event-ID must be a log index, not {v:?}")))
}

fn parse_from(query: Option<&str>) -> Result<u64, ApiError> {
    let mut from = 0;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "from" => {
                from = v.parse().map_err(|_| {
                    ApiError::bad_request(format!("from must be a log index (0..2^64), not {v:?}"))
                })?
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {k:?}; /v1/watch takes from=<log index>"
                )));
            }
        }
    }
    Ok(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_and_last_event_id_parse_strictly() {
        assert_eq!(parse_from(None).unwrap(), 0);
        assert_eq!(parse_from(Some("from=42")).unwrap(), 42);
        assert_eq!(parse_from(Some("from=x")).unwrap_err().code, "bad_request");
        assert_eq!(parse_from(Some("from=-1")).unwrap_err().code, "bad_request");
        assert_eq!(parse_from(Some("since=1")).unwrap_err().code, "bad_request");
        let mut h = HeaderMap::new();
        assert_eq!(last_event_id(&h).unwrap(), None);
        h.insert("last-event-id", HeaderValue::from_static("17"));
        assert_eq!(last_event_id(&h).unwrap(), Some(17));
        h.insert("last-event-id", HeaderValue::from_static("seventeen"));
        assert!(last_event_id(&h).is_err());
    }

    #[test]
    fn entries_of_one_index_are_one_event() {
        let hold = |h: u64| Change::HoldExpired {
            hold: ledger::HoldId(h),
            performance: ledger::PerformanceId(1),
        };
        let entries = [
            FeedEntry {
                log_index: 5,
                at_ms: 10,
                change: hold(1),
            },
            FeedEntry {
                log_index: 5,
                at_ms: 10,
                change: hold(2),
            },
            FeedEntry {
                log_index: 7,
                at_ms: 11,
                change: hold(3),
            },
        ];
        let refs: Vec<&FeedEntry> = entries.iter().collect();
        let events = group(&refs);
        assert_eq!(
            events
                .iter()
                .map(|e| (e.log_index, e.changes.len()))
                .collect::<Vec<_>>(),
            vec![(5, 2), (7, 1)]
        );
        assert_eq!(events[0].changes[1].hold_id.as_deref(), Some("h_2"));
        assert_eq!(events[0].changes[0].kind, "hold_expired");
    }

    /// A ledger whose feed dropped its oldest entries (holds placed and released until the
    /// feed is past its bound) refuses a `from` it no longer holds in full, names the
    /// oldest index it does, and serves from there in bounded batches.
    #[test]
    fn a_full_feed_refuses_what_it_dropped_and_serves_from_its_floor() {
        use crate::convert::*;
        use ledger::{Command, Op, Outcome, Reply};
        let mut l = Ledger::new();
        let mut index = 0u64;
        let mut apply = |l: &mut Ledger, p: Principal, op: Op| {
            index += 1;
            match l.apply(index, Command::new(1_000, p, op)) {
                Outcome::Ok(r) => r,
                Outcome::Rejected(r) => panic!("rejected: {r:?}"),
            }
        };
        let op = Op::Bootstrap {
            operator_key_digest: [1; 32],
            token_secret: [2; 32],
        };
        let Reply::Bootstrapped { operator_key } = apply(&mut l, Principal::System, op) else {
            panic!("bootstrapped")
        };
        let operator = Principal::ApiKey(operator_key);
        let venue = venue_op(api::CreateVenue {
            name: "Hall".into(),
            sections: vec![api::SectionSpec::GeneralAdmission {
                name: "Floor".into(),
                capacity: 100,
            }],
        });
        let Reply::VenueCreated { venue, .. } = apply(&mut l, operator, venue) else {
            panic!("venue")
        };
        let event = event_op(api::CreateEvent {
            name: "Show".into(),
            category: "music".into(),
            description: String::new(),
            media: vec![],
        });
        let Reply::EventCreated { event } = apply(&mut l, operator, event) else {
            panic!("event")
        };
        let perf = performance_op(
            &l,
            event,
            api::CreatePerformance {
                venue_id: venue.to_string(),
                starts_at: api::TimeInput::UnixMs(4_102_444_800_000),
                on_sale_at: api::TimeInput::UnixMs(0),
                sale_ends_at: None,
                hold_ttl_secs: 60,
                payment_grace_secs: None,
                max_seats_per_order: None,
                categories: None,
                prices: vec![api::Price {
                    section: "Floor".into(),
                    category: None,
                    amount_minor: 100,
                    currency: "EUR".into(),
                }],
                waiting_room: None,
            },
        )
        .unwrap();
        let Reply::PerformanceCreated { performance } = apply(&mut l, operator, perf) else {
            panic!("performance")
        };
        let open = api::UpdatePerformance {
            status: "on_sale".into(),
            seed: None,
        };
        apply(&mut l, operator, status_op(performance, &open).unwrap());
        assert_eq!(feed_floor(&l), 0, "nothing dropped yet");
        assert!(read_batch(&l, 1).is_ok());
        let hold = api::CreateHold {
            performance_id: performance.to_string(),
            seats: None,
            section: Some("Floor".into()),
            quantity: Some(1),
            category: None,
        };
        // Two changes per round; go past the bound by a few hundred entries.
        for _ in 0..(ledger::limits::MAX_FEED_EVENTS / 2 + 300) {
            let op = hold_op(&l, &hold).unwrap();
            let Reply::HoldPlaced(h) = apply(&mut l, operator, op) else {
                panic!("hold")
            };
            apply(&mut l, operator, Op::ReleaseHold { hold: h.hold });
        }
        let oldest = feed_floor(&l);
        let first = l.state().feed.front().unwrap().log_index;
        assert_eq!(oldest, first + 1);
        match read_batch(&l, 1) {
            Err(WatchError::Truncated { from: 1, oldest: o }) => assert_eq!(o, oldest),
            other => panic!("expected feed_truncated, got {other:?}"),
        }
        match read_batch(&l, oldest - 1) {
            Err(WatchError::Truncated { .. }) => {}
            other => panic!("the oldest index may be partly dropped: {other:?}"),
        }
        let batch = read_batch(&l, oldest).unwrap();
        assert_eq!(batch[0].log_index, oldest);
        let entries: usize = batch.iter().map(|e| e.changes.len()).sum();
        assert!((MAX_BATCH_ENTRIES..MAX_BATCH_ENTRIES + 8).contains(&entries));
        assert!(batch.windows(2).all(|w| w[0].log_index < w[1].log_index));
        let status = WatchError::Truncated { from: 1, oldest }.into_status();
        assert_eq!(
            status.metadata().get(OLDEST_INDEX_HEADER).unwrap(),
            &oldest.to_string()
        );
        assert_eq!(
            status.metadata().get("x-ticketledger-code").unwrap(),
            "feed_truncated"
        );
    }
}
