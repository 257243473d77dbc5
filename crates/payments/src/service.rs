//! The checkout saga (DESIGN.md §6), a client of the ledger through `crates/client`:
//!
//! 1. extend the hold into its payment grace with `payment_ref = pay-<hold id>` (the ledger
//!    records a `started` checkout), with the buyer's own key, so the ledger refuses it
//!    unless the hold is theirs;
//! 2. charge the provider with the same key: captured → step 3 (the capture is recorded
//!    only if a refund follows: the confirm books a `started` checkout, and a resume asks
//!    the provider about every `started` one); declined → record
//!    `failed` (the ledger releases the hold); no answer in time → cancel at the provider,
//!    which makes the outcome definite (nothing charged → `failed`, the hold is released; it
//!    had captured → the capture stands and goes on to step 3: a cancel never refunds, so a
//!    cancel landing late cannot take the money of a booking made meanwhile); `pending` (an asynchronous method) → the checkout stays open
//!    until the provider's callback (or a resume's lookup) brings the outcome;
//! 3. confirm the hold; if it expired meanwhile, the written rule: book the same seats if they
//!    are all still free (`confirm-late`), otherwise refund the capture at once and record
//!    `refunded`. A refusal that says the order cannot be booked (seats taken, hold released,
//!    performance cancelled) refunds too, after the checkout is read once more (a booking
//!    made by an attempt whose answer was lost shows there and is kept): no stuck orders.
//!    A refusal that says nothing about the order (a revoked key, a limit) moves no money;
//!    the capture stays open for the next resume.
//!
//! Every open checkout is in the ledger (what its money did is at the provider, asked by the
//! payment_ref) and every call is idempotent (the provider by the
//! payment_ref, the ledger by keys derived from it), so [`Payments::resume`] (run at start
//! and then periodically) finishes every open checkout after a crash. What the service keeps
//! in memory is which holds it is driving right now, and the final outcomes (booked, declined,
//! refunded) of the sagas that ended here lately: the provider calls back for every charge
//! (at least once, often twice), nearly always after the saga ended, and those callbacks are
//! answered from memory instead of reading the ledger. A final outcome never changes, so that
//! memory cannot go stale; a restart empties it and the ledger is asked again.

use crate::provider::{CancelOutcome, ChargeOutcome, Provider, ProviderError};
use api::payments::{ChargeRequest, ChargeStatus, CheckoutOutcome, CheckoutResult};
use client::{Client, Error};
use reqwest::Method;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most steps one drive takes before it reports `pending` (each step reads the checkout).
const MAX_STEPS: usize = 8;
/// Attempts at a provider cancel before the outcome is left to the next resume.
const CANCEL_ATTEMPTS: u32 = 3;
/// Open checkouts read per page while resuming.
const RESUME_PAGE: u32 = 500;
/// Final outcomes kept in memory (about 200 bytes each).
const SETTLED_KEPT: usize = 100_000;
/// How long a checkout the provider is still deciding (an asynchronous method) is left to
/// its callback before a resume asks the provider again. The callback is what ends such a
/// checkout; a resume is for the callback that never comes. (At every resume, every 2 s, the
/// asynchronous 2% of a 300k-buyer demo's checkouts cost a read and a lookup each: 1,892
/// settles for 13,858 checkouts.)
const DECIDING_RECHECK: Duration = Duration::from_secs(10);

/// The checkout's payment_ref (and the provider's idempotency key) for a hold.
pub fn payment_ref(hold_id: &str) -> String {
    format!("pay-{hold_id}")
}

/// The hold a payment_ref of ours belongs to.
pub fn hold_of(payment_ref: &str) -> Option<&str> {
    payment_ref.strip_prefix("pay-").filter(|h| !h.is_empty())
}

/// A ledger idempotency key for one step of one checkout: the same on every retry and after
/// a restart, so the ledger answers a repeat with the first outcome.
fn step_key(step: &str, payment_ref: &str) -> String {
    let h = blake3::hash(format!("{step}\0{payment_ref}").as_bytes());
    h.to_hex()[..32].to_string()
}

#[derive(Default)]
pub struct Stats {
    pub booked: AtomicU64,
    pub booked_late: AtomicU64,
    pub declined: AtomicU64,
    pub refunded: AtomicU64,
    pub expired: AtomicU64,
    pub pending: AtomicU64,
    pub provider_timeouts: AtomicU64,
    pub callbacks: AtomicU64,
    pub resumed: AtomicU64,
}

impl Stats {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "booked": self.booked.load(Relaxed),
            "booked_late": self.booked_late.load(Relaxed),
            "declined": self.declined.load(Relaxed),
            "refunded": self.refunded.load(Relaxed),
            "expired": self.expired.load(Relaxed),
            "pending": self.pending.load(Relaxed),
            "provider_timeouts": self.provider_timeouts.load(Relaxed),
            "callbacks": self.callbacks.load(Relaxed),
            "resumed": self.resumed.load(Relaxed),
        })
    }
}

/// What the provider step concluded.
enum Decided {
    Captured(String),
    Failed(String),
    RefundedAtProvider(String, String),
    /// Not definite yet: leave the checkout open for the next resume.
    Unknown(String),
    /// The provider is deciding (an asynchronous method): its callback ends the checkout.
    Deciding(String),
}

/// Where a drive begins.
enum Begin {
    /// With a read of the checkout (a callback, a resume, the buyer's status).
    Read,
    /// With the checkout the buyer's extend started (or an answer again to a retry of it).
    Extended(api::Checkout),
    /// With a read, the buyer's extend having been refused for the hold's state: no
    /// checkout means there is nothing to pay for, and this refusal says why.
    Refused(Error),
}

/// What recording a provider outcome in the ledger came to.
enum Recorded {
    /// Recorded (or answered again for a retry): the checkout as the ledger answered.
    Now(api::Checkout),
    /// The outcome no longer fits (the state moved on): read the checkout again.
    ReadAgain,
    /// The ledger did not answer in time.
    Pending(CheckoutResult),
}

/// The checkout an extend with `payment_ref` has just started: what the ledger's checkout
/// view says right after it (a `started` checkout of the hold's amount), so the saga does not
/// read it back before charging.
fn started(hold: &api::Hold, payment_ref: &str) -> api::Checkout {
    api::Checkout {
        hold_id: hold.hold_id.clone(),
        payment_ref: payment_ref.to_string(),
        performance_id: hold.performance_id.clone(),
        amount_minor: hold.amount_minor,
        currency: hold.currency.clone(),
        state: api::CheckoutState::Started,
        provider_ref: None,
        booking_id: None,
        reason: None,
        hold_state: hold.state.clone(),
        hold_expires_at_ms: hold.expires_at_ms,
    }
}

/// Why a drive could not run.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("the ledger refused: {0}")]
    Ledger(#[from] Error),
    #[error("hold {0} is in checkout under another payment_ref")]
    ForeignCheckout(String),
}

pub struct Payments<P> {
    ledger: Client,
    provider: P,
    callback_url: Option<String>,
    /// Holds being driven now, each behind its own lock: a callback, a resume and the buyer's
    /// request for one hold take turns; different holds run in parallel.
    driving: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    settled: Mutex<Settled>,
    /// Checkouts the provider was still deciding when last asked, and when: a resume leaves
    /// each to its callback for [`DECIDING_RECHECK`]. At most [`SETTLED_KEPT`] entries; one
    /// leaves when its checkout's drive ends otherwise.
    deciding: Mutex<HashMap<String, std::time::Instant>>,
    pub stats: Stats,
}

/// The final outcomes of the latest sagas that ended in this process, at most
/// [`SETTLED_KEPT`], the oldest forgotten first.
#[derive(Default)]
struct Settled {
    by_hold: HashMap<String, CheckoutResult>,
    order: std::collections::VecDeque<String>,
}

impl Settled {
    fn get(&self, hold_id: &str) -> Option<CheckoutResult> {
        self.by_hold.get(hold_id).cloned()
    }

    /// Keep `r` if the ledger's checkout is final: booked, declined (failed) or refunded. Not
    /// a pending one, nor an expired one (the extend was refused, which may be for a reason
    /// a retry gets past, such as a revoked service key).
    fn keep(&mut self, r: &CheckoutResult) {
        if !matches!(
            r.outcome,
            CheckoutOutcome::Booked | CheckoutOutcome::Declined | CheckoutOutcome::Refunded
        ) {
            return;
        }
        if self.by_hold.insert(r.hold_id.clone(), r.clone()).is_none() {
            self.order.push_back(r.hold_id.clone());
        }
        while self.order.len() > SETTLED_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.by_hold.remove(&old);
            }
        }
        debug_assert_eq!(self.order.len(), self.by_hold.len());
    }
}

/// A definite refusal by the ledger (a 4xx other than 408/429): retrying cannot change it.
fn definite(e: &Error) -> bool {
    e.status()
        .is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429)
}

/// A refusal of a booking that says the order cannot be booked any more, so the written rule
/// refunds it: the seats were taken after the hold expired, the hold was released or ended,
/// the performance was cancelled. Anything else (authentication, a limit, a conflict of
/// keys) is no statement about the order and never moves money.
fn no_booking_possible(e: &Error) -> bool {
    matches!(
        e.code(),
        Some("seat_unavailable" | "hold_not_live" | "sale_not_open" | "sold_out")
    )
}

impl<P: Provider> Payments<P> {
    /// `ledger` must carry a service-role key.
    pub fn new(ledger: Client, provider: P, callback_url: Option<String>) -> Payments<P> {
        Payments {
            ledger,
            provider,
            callback_url,
            driving: Mutex::new(HashMap::new()),
            settled: Mutex::default(),
            deciding: Mutex::default(),
            stats: Stats::default(),
        }
    }

    fn lock_for(&self, hold_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut d = self.driving.lock().expect("driving lock");
        // Forget the locks nobody holds any more (a bound on the map).
        if d.len() > 10_000 {
            d.retain(|_, l| Arc::strong_count(l) > 1);
        }
        d.entry(hold_id.to_string()).or_default().clone()
    }

    /// Pay for a hold with `source`, start to end (or `pending` when the ledger or the
    /// provider did not give a definite answer in time; [`Payments::resume`] finishes it).
    ///
    /// The hold is extended into checkout with `buyer_key`, the buyer's own key, so the
    /// ledger checks there, on the leader, that the hold is theirs (a refusal comes back as
    /// [`DriveError::Ledger`] and nothing is charged); no outcome of the saga is told before
    /// that check passed.
    pub async fn checkout(
        &self,
        hold_id: &str,
        source: &str,
        buyer_key: &str,
    ) -> Result<CheckoutResult, DriveError> {
        let lock = self.lock_for(hold_id);
        let _g = lock.lock().await;
        let begin = self.extend_as_buyer(hold_id, buyer_key).await?;
        if let Some(r) = self.settled.lock().expect("settled lock").get(hold_id) {
            return Ok(r);
        }
        self.drive_and_keep(hold_id, Some(source), begin).await
    }

    /// The extend that starts a buyer's checkout, with the buyer's key and the step's key:
    /// [`Begin::Extended`] when it started (or a retry of it was answered again),
    /// [`Begin::Refused`] when the ledger refused it for a reason about the hold's state
    /// (extended already, ended): the hold is the buyer's, and the saga reads the checkout to
    /// see where it stands. A refusal about who may touch the hold, or no definite answer, is
    /// the caller's error.
    async fn extend_as_buyer(&self, hold_id: &str, buyer_key: &str) -> Result<Begin, DriveError> {
        let pref = payment_ref(hold_id);
        let buyer = self.ledger.clone().with_key(buyer_key.to_string());
        let body = api::ExtendHold {
            payment_ref: pref.clone(),
        };
        let extended: Result<api::Hold, Error> = buyer
            .send_keyed(
                Method::POST,
                &format!("/v1/holds/{hold_id}/extend"),
                Some(&body),
                Some(step_key("extend", &pref)),
            )
            .await;
        match extended {
            Ok(hold) => Ok(Begin::Extended(started(&hold, &pref))),
            // What `extend_hold` refuses once it found the hold and its owner.
            Err(e)
                if matches!(
                    e.code(),
                    Some("invalid_state" | "hold_expired" | "hold_not_live" | "limit_exceeded")
                ) =>
            {
                Ok(Begin::Refused(e))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Finish a checkout without a payment source (a callback arrived, or resuming after a
    /// restart): whatever the provider decided is recorded; an undecided charge is cancelled.
    pub async fn settle(&self, hold_id: &str) -> Result<CheckoutResult, DriveError> {
        self.drive_once(hold_id).await
    }

    /// Where a checkout stands, for its buyer: [`Self::settle`], unless the provider was still
    /// deciding it when asked less than [`DECIDING_RECHECK`] ago: then `pending` from memory
    /// (its callback is what ends it, and a buyer's app asks every second or so).
    pub async fn status(&self, hold_id: &str) -> Result<CheckoutResult, DriveError> {
        if let Some(r) = self.settled.lock().expect("settled lock").get(hold_id) {
            return Ok(r);
        }
        if self.deciding_lately(hold_id) {
            return Ok(self.result(
                hold_id,
                CheckoutOutcome::Pending,
                None,
                Some("the provider is still deciding".into()),
            ));
        }
        self.settle(hold_id).await
    }

    /// Whether the provider was deciding this checkout when last asked, less than
    /// [`DECIDING_RECHECK`] ago.
    fn deciding_lately(&self, hold_id: &str) -> bool {
        self.deciding
            .lock()
            .expect("deciding lock")
            .get(hold_id)
            .is_some_and(|at| at.elapsed() < DECIDING_RECHECK)
    }

    /// Drive the hold's saga under its lock, unless it already ended here: then its final
    /// outcome (looked at again once the lock is ours, as a callback usually waits for the
    /// drive that is finishing it).
    async fn drive_once(&self, hold_id: &str) -> Result<CheckoutResult, DriveError> {
        let known = || self.settled.lock().expect("settled lock").get(hold_id);
        if let Some(r) = known() {
            return Ok(r);
        }
        let lock = self.lock_for(hold_id);
        let _g = lock.lock().await;
        if let Some(r) = known() {
            return Ok(r);
        }
        self.drive_and_keep(hold_id, None, Begin::Read).await
    }

    /// [`Self::drive`], then count and keep its outcome (under the hold's lock).
    async fn drive_and_keep(
        &self,
        hold_id: &str,
        source: Option<&str>,
        begin: Begin,
    ) -> Result<CheckoutResult, DriveError> {
        let r = self.drive(hold_id, source, begin).await;
        if !matches!(&r, Ok(r) if r.outcome == CheckoutOutcome::Pending) {
            self.deciding.lock().expect("deciding lock").remove(hold_id);
        }
        if let Ok(r) = &r {
            self.count(r);
            self.settled.lock().expect("settled lock").keep(r);
        }
        r
    }

    fn count(&self, r: &CheckoutResult) {
        let c = match r.outcome {
            CheckoutOutcome::Booked => &self.stats.booked,
            CheckoutOutcome::Declined => &self.stats.declined,
            CheckoutOutcome::Refunded => &self.stats.refunded,
            CheckoutOutcome::Expired => &self.stats.expired,
            CheckoutOutcome::Pending => &self.stats.pending,
        };
        c.fetch_add(1, Relaxed);
    }

    /// Every open checkout of ours in the ledger, settled `concurrency` at a time; holds being
    /// driven in this process right now are left to their driver, and those the provider was
    /// still deciding when asked less than [`DECIDING_RECHECK`] ago to its callback. Returns
    /// how many it settled.
    pub async fn resume(self: &Arc<Self>, concurrency: usize) -> Result<u64, Error> {
        let mut after: Option<String> = None;
        let mut settled = 0;
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = Vec::new();
        loop {
            let page = self
                .ledger
                .checkouts(true, after.as_deref(), RESUME_PAGE)
                .await?;
            for c in page.checkouts {
                if hold_of(&c.payment_ref) != Some(c.hold_id.as_str()) {
                    continue; // not a checkout of this service
                }
                let busy = self
                    .driving
                    .lock()
                    .expect("driving lock")
                    .get(&c.hold_id)
                    .is_some_and(|l| l.try_lock().is_err());
                if busy || self.deciding_lately(&c.hold_id) {
                    continue;
                }
                let (me, permits) = (self.clone(), permits.clone());
                tasks.push(tokio::spawn(async move {
                    let _p = permits.acquire().await;
                    me.settle(&c.hold_id).await
                }));
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        for t in tasks {
            match t.await {
                Ok(Ok(_)) => {
                    settled += 1;
                    self.stats.resumed.fetch_add(1, Relaxed);
                }
                Ok(Err(e)) => tracing::warn!("resuming a checkout: {e}"),
                Err(e) => tracing::error!("a resume task failed: {e}"),
            }
        }
        Ok(settled)
    }

    fn result(
        &self,
        hold_id: &str,
        outcome: CheckoutOutcome,
        booking_id: Option<String>,
        reason: Option<String>,
    ) -> CheckoutResult {
        CheckoutResult {
            hold_id: hold_id.to_string(),
            payment_ref: payment_ref(hold_id),
            outcome,
            booking_id,
            reason,
        }
    }

    /// The saga, one definite step at a time. Each step acts on the checkout as the ledger
    /// last answered for it (the buyer's extend, to begin with): the reply of the
    /// step's own write where that reply is the checkout (recording a payment), else a fresh
    /// read. A reply to a retried write can be an older state than the ledger's now; acting on
    /// it is safe, because every step is idempotent and the ledger refuses one that no longer
    /// fits (and money only moves back after a fresh read).
    ///
    /// A capture this drive learns of is not recorded before the booking: the confirm books
    /// a `started` checkout as it books a `captured` one, and if this process dies between
    /// the two, the next resume finds the checkout `started` and asks the provider, which
    /// says captured. The capture is recorded only on the way to a refund. A happy checkout
    /// costs two writes, the buyer's extend and the confirm (it was one read and three
    /// writes, and before that four reads and three writes).
    async fn drive(
        &self,
        hold_id: &str,
        source: Option<&str>,
        begin: Begin,
    ) -> Result<CheckoutResult, DriveError> {
        let pref = payment_ref(hold_id);
        let mut charged = false;
        let (mut known, refused) = match begin {
            Begin::Read => (None, None),
            Begin::Extended(c) => (Some(c), None),
            Begin::Refused(e) => (None, Some(e)),
        };
        // The provider_ref of a capture this drive learned of and has not recorded: the
        // checkout is `started` in the ledger and captured in fact.
        let mut captured: Option<String> = None;
        for _ in 0..MAX_STEPS {
            let read = match known.take() {
                Some(c) => Ok(c),
                None => self.ledger.checkout(hold_id).await,
            };
            let co = match read {
                Ok(c) => c,
                // No checkout, and the buyer's extend was refused: nothing to pay for.
                Err(e) if e.code() == Some("not_found") && refused.is_some() => {
                    return Ok(self.result(
                        hold_id,
                        CheckoutOutcome::Expired,
                        None,
                        refused.as_ref().map(|r| r.to_string()),
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            if co.payment_ref != pref {
                return Err(DriveError::ForeignCheckout(hold_id.to_string()));
            }
            let state = match (co.state, &captured) {
                (api::CheckoutState::Started, Some(_)) => api::CheckoutState::Captured,
                (state, _) => state,
            };
            match state {
                api::CheckoutState::Started => {
                    let decided = match source {
                        Some(src) if !charged => {
                            charged = true;
                            self.charge(&co, src).await
                        }
                        _ => self.settle_at_provider(&pref).await,
                    };
                    let event = match decided {
                        Decided::Captured(provider_ref) => {
                            captured = Some(provider_ref);
                            known = Some(co);
                            continue;
                        }
                        Decided::Failed(reason) => api::PaymentEvent::Failed { reason },
                        Decided::RefundedAtProvider(provider_ref, reason) => {
                            api::PaymentEvent::Refunded {
                                provider_ref,
                                reason,
                            }
                        }
                        Decided::Deciding(reason) => {
                            let mut d = self.deciding.lock().expect("deciding lock");
                            if d.len() >= SETTLED_KEPT {
                                d.retain(|_, at| at.elapsed() < DECIDING_RECHECK);
                            }
                            if d.len() < SETTLED_KEPT {
                                d.insert(hold_id.to_string(), std::time::Instant::now());
                            }
                            return Ok(self.result(
                                hold_id,
                                CheckoutOutcome::Pending,
                                None,
                                Some(reason),
                            ));
                        }
                        Decided::Unknown(reason) => {
                            return Ok(self.result(
                                hold_id,
                                CheckoutOutcome::Pending,
                                None,
                                Some(reason),
                            ));
                        }
                    };
                    match self.record(hold_id, &pref, event).await? {
                        Recorded::Now(c) => known = Some(c),
                        Recorded::ReadAgain => {}
                        Recorded::Pending(r) => return Ok(r),
                    }
                }
                api::CheckoutState::Captured => {
                    let provider_ref = co
                        .provider_ref
                        .clone()
                        .or_else(|| captured.clone())
                        .unwrap_or_default();
                    match self.book(hold_id, &pref).await {
                        Ok(b) => {
                            return Ok(self.result(
                                hold_id,
                                CheckoutOutcome::Booked,
                                Some(b.booking_id),
                                None,
                            ));
                        }
                        Err(e) if no_booking_possible(&e) => {
                            // Read the checkout again before any money moves: a booking that
                            // was made (by an earlier attempt whose answer was lost) shows
                            // here, and is never refunded by mistake.
                            match self.ledger.checkout(hold_id).await {
                                // Still open: captured, recorded or not.
                                Ok(c)
                                    if c.state == api::CheckoutState::Captured
                                        || (c.state == api::CheckoutState::Started
                                            && captured.is_some()) => {}
                                // It moved on (booked by an attempt whose answer was lost).
                                Ok(c) => {
                                    known = Some(c);
                                    continue;
                                }
                                Err(re) => {
                                    return Ok(self.result(
                                        hold_id,
                                        CheckoutOutcome::Pending,
                                        None,
                                        Some(format!("booking refused ({e}); re-reading: {re}")),
                                    ));
                                }
                            }
                            // The written rule: no booking is possible, so the money goes back
                            // now, and the checkout says so.
                            let reason =
                                format!("no booking possible: {}", e.code().unwrap_or("refused"));
                            match self.provider.refund(&pref).await {
                                Ok(_) => {
                                    let event = api::PaymentEvent::Refunded {
                                        provider_ref,
                                        reason,
                                    };
                                    match self.record(hold_id, &pref, event).await? {
                                        Recorded::Now(c) => known = Some(c),
                                        Recorded::ReadAgain => {}
                                        Recorded::Pending(r) => return Ok(r),
                                    }
                                }
                                Err(pe) => {
                                    return Ok(self.result(
                                        hold_id,
                                        CheckoutOutcome::Pending,
                                        None,
                                        Some(format!("{reason}; the refund is owed: {pe}")),
                                    ));
                                }
                            }
                        }
                        Err(e) => {
                            // Not an answer about the order (a timeout, or a refusal such as
                            // a revoked key or a limit that says nothing about the seats): the
                            // capture stays, and the next resume tries the booking again.
                            if definite(&e) {
                                tracing::warn!(hold = hold_id, error = %e, "the ledger refused a booking for a reason that is not the order's");
                            }
                            return Ok(self.result(
                                hold_id,
                                CheckoutOutcome::Pending,
                                None,
                                Some(format!("booking not confirmed yet: {e}")),
                            ));
                        }
                    }
                }
                api::CheckoutState::Booked => {
                    return Ok(self.result(hold_id, CheckoutOutcome::Booked, co.booking_id, None));
                }
                api::CheckoutState::Failed => {
                    return Ok(self.result(hold_id, CheckoutOutcome::Declined, None, co.reason));
                }
                api::CheckoutState::Refunded => {
                    return Ok(self.result(hold_id, CheckoutOutcome::Refunded, None, co.reason));
                }
            }
        }
        Ok(self.result(
            hold_id,
            CheckoutOutcome::Pending,
            None,
            Some("still moving after every step it may take now".into()),
        ))
    }

    /// Record a provider outcome in the ledger.
    async fn record(
        &self,
        hold_id: &str,
        pref: &str,
        event: api::PaymentEvent,
    ) -> Result<Recorded, DriveError> {
        let kind = match &event {
            api::PaymentEvent::Captured { .. } => "captured",
            api::PaymentEvent::Failed { .. } => "failed",
            api::PaymentEvent::Refunded { .. } => "refunded",
        };
        let body = api::RecordPayment {
            payment_ref: pref.to_string(),
            event,
        };
        let r: Result<api::Checkout, Error> = self
            .ledger
            .send_keyed(
                Method::POST,
                &format!("/v1/holds/{hold_id}/payment"),
                Some(&body),
                Some(step_key(kind, pref)),
            )
            .await;
        match r {
            Ok(c) => Ok(Recorded::Now(c)),
            Err(e) if e.code() == Some("invalid_state") => Ok(Recorded::ReadAgain),
            Err(e) if definite(&e) => Err(e.into()),
            Err(e) => Ok(Recorded::Pending(self.result(
                hold_id,
                CheckoutOutcome::Pending,
                None,
                Some(format!("recording the {kind} payment: {e}")),
            ))),
        }
    }

    /// Confirm the hold; if it expired meanwhile, book the same seats if they are free.
    async fn book(&self, hold_id: &str, pref: &str) -> Result<api::Booking, Error> {
        let body = api::ConfirmHold {
            payment_ref: pref.to_string(),
        };
        let confirmed = self
            .ledger
            .send_keyed(
                Method::POST,
                &format!("/v1/holds/{hold_id}/confirm"),
                Some(&body),
                Some(step_key("confirm", pref)),
            )
            .await;
        match confirmed {
            Err(e) if e.code() == Some("hold_expired") => {
                let late = self
                    .ledger
                    .send_keyed(
                        Method::POST,
                        &format!("/v1/holds/{hold_id}/confirm-late"),
                        Some(&body),
                        Some(step_key("confirm-late", pref)),
                    )
                    .await;
                if late.is_ok() {
                    self.stats.booked_late.fetch_add(1, Relaxed);
                }
                late
            }
            other => other,
        }
    }

    async fn charge(&self, co: &api::Checkout, source: &str) -> Decided {
        let req = ChargeRequest {
            idempotency_key: co.payment_ref.clone(),
            amount_minor: co.amount_minor,
            currency: co.currency.clone(),
            source: source.to_string(),
            callback_url: self.callback_url.clone(),
        };
        match self.provider.charge(&req).await {
            Ok(ChargeOutcome::Captured { provider_ref }) => Decided::Captured(provider_ref),
            Ok(ChargeOutcome::Declined { reason }) => Decided::Failed(reason),
            Ok(ChargeOutcome::Cancelled) => Decided::Failed("cancelled at the provider".into()),
            Ok(ChargeOutcome::Pending) => Decided::Deciding(
                "the provider decides asynchronously; its callback settles the checkout".into(),
            ),
            Err(e) if e.is_unknown() => {
                self.stats.provider_timeouts.fetch_add(1, Relaxed);
                self.void(&co.payment_ref, format!("provider: {e}")).await
            }
            Err(e) => Decided::Failed(e.to_string()),
        }
    }

    /// The outcome of a charge whose answer this process does not have.
    async fn settle_at_provider(&self, pref: &str) -> Decided {
        match self.provider.lookup(pref).await {
            Ok(Some(c)) => match c.status {
                ChargeStatus::Captured => Decided::Captured(c.charge_id),
                ChargeStatus::Declined => {
                    Decided::Failed(c.reason.unwrap_or_else(|| "declined".into()))
                }
                ChargeStatus::Cancelled => Decided::Failed("cancelled at the provider".into()),
                ChargeStatus::Refunded => Decided::RefundedAtProvider(
                    c.charge_id,
                    c.reason.unwrap_or_else(|| "refunded".into()),
                ),
                // The provider is still deciding (an asynchronous method, or a charge whose
                // answer died with a previous process): its callback or the next resume ends it.
                ChargeStatus::Pending => Decided::Deciding("the provider is still deciding".into()),
            },
            Ok(None) => {
                self.void(
                    pref,
                    "the checkout was interrupted before the provider was asked".into(),
                )
                .await
            }
            Err(e) => Decided::Unknown(format!("provider lookup: {e}")),
        }
    }

    /// Make the charge definite by cancelling it at the provider.
    async fn void(&self, pref: &str, reason: String) -> Decided {
        let mut last = String::new();
        for attempt in 0..CANCEL_ATTEMPTS {
            match self.provider.cancel(pref).await {
                Ok(CancelOutcome::NothingCharged { .. }) => return Decided::Failed(reason),
                // The money moved before the cancel: the capture stands and is booked (or
                // refunded by the written rule if no booking is possible any more).
                Ok(CancelOutcome::Captured { provider_ref }) => {
                    return Decided::Captured(provider_ref);
                }
                Ok(CancelOutcome::Refunded { provider_ref }) => {
                    return Decided::RefundedAtProvider(
                        provider_ref,
                        format!("{reason}; it had been refunded"),
                    );
                }
                Err(ProviderError::Refused(m)) => return Decided::Unknown(m),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        Decided::Unknown(format!("{reason}; cancel not answered: {last}"))
    }

    /// Refund a whole booking of ours: in the ledger first (the seats return to sale), then
    /// the money at the provider, both under keys derived from the booking's payment_ref.
    pub async fn refund_booking(&self, booking_id: &str) -> Result<u64, DriveError> {
        let bk = self.ledger.booking(booking_id).await?;
        if hold_of(&bk.payment_ref).is_none() {
            return Err(DriveError::ForeignCheckout(bk.hold_id));
        }
        let body = api::RefundRequest {
            tickets: vec![],
            refund_ref: Some(format!("refund-{}", bk.payment_ref)),
        };
        let already = bk.refunded_minor == bk.amount_minor;
        if !already {
            let r: Result<api::Refunded, Error> = self
                .ledger
                .send_keyed(
                    Method::POST,
                    &format!("/v1/bookings/{booking_id}/refund"),
                    Some(&body),
                    Some(step_key("refund-booking", &bk.payment_ref)),
                )
                .await;
            r?;
        }
        let mut last = None;
        for attempt in 0..CANCEL_ATTEMPTS {
            match self.provider.refund(&bk.payment_ref).await {
                Ok(_) => return Ok(bk.amount_minor - bk.refunded_minor),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        let e = last.expect("at least one attempt");
        Err(DriveError::Ledger(Error::Unavailable {
            deadline: Duration::ZERO,
            attempts: CANCEL_ATTEMPTS,
            last: format!("the booking is refunded in the ledger, the money not yet: {e}"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(hold: usize, outcome: CheckoutOutcome) -> CheckoutResult {
        CheckoutResult {
            hold_id: format!("h_{hold}"),
            payment_ref: payment_ref(&format!("h_{hold}")),
            outcome,
            booking_id: None,
            reason: None,
        }
    }

    /// Only final outcomes are kept, at most `SETTLED_KEPT`, the oldest forgotten first.
    #[test]
    fn settled_outcomes_are_final_and_bounded() {
        let mut s = Settled::default();
        s.keep(&result(0, CheckoutOutcome::Pending));
        s.keep(&result(1, CheckoutOutcome::Expired));
        assert!(s.get("h_0").is_none() && s.get("h_1").is_none());
        for h in 2..SETTLED_KEPT + 12 {
            let outcome = match h % 3 {
                0 => CheckoutOutcome::Booked,
                1 => CheckoutOutcome::Declined,
                _ => CheckoutOutcome::Refunded,
            };
            s.keep(&result(h, outcome));
        }
        // Kept again (a second callback): no second entry.
        s.keep(&result(SETTLED_KEPT + 11, CheckoutOutcome::Refunded));
        assert_eq!(s.by_hold.len(), SETTLED_KEPT);
        assert_eq!(s.order.len(), SETTLED_KEPT);
        // Holds 2..=11 were the oldest ten.
        assert!(s.get("h_2").is_none() && s.get("h_11").is_none());
        assert_eq!(
            s.get("h_12").map(|r| r.outcome),
            Some(CheckoutOutcome::Booked)
        );
    }
}
