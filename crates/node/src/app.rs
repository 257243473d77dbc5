//! The node's shared state and its two paths: writes (stamped on the leader's clock, proposed
//! through Raft, forwarded by followers) and reads (after a read index from the leader, or
//! stale on request). Also the leader's tick.

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::{Gauges, Metrics};
use crate::net::{ForwardReply, ForwardRequest, Peers};
use ledger::*;
use openraft::ReadPolicy;
use openraft::type_config::async_runtime::WatchReceiver as _;
use raft_store::{LedgerHandle, Raft, Request};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// After a read index confirmed by a quorum (never a lease: clocks drift).
    Linearizable,
    /// Whatever this node has applied.
    Stale,
}

/// Commands the proposer takes into one Raft proposal (one log entry) at most.
pub const MAX_PROPOSAL_BATCH: usize = raft_store::MAX_COMMANDS_PER_ENTRY;
/// Batches proposed but not yet applied, at most (the default of `--proposals-in-flight`).
/// While they are in flight new writes wait in the (bounded) queue, so under load the next
/// batch takes everything that arrived meanwhile: batches grow with load instead of every
/// write becoming its own proposal, log append and replication round. Measured (loadgen
/// hold, 256 clients, 3 nodes on 2 cores, dev profile): 1.0 commands per proposal without
/// this bound, ~52 with 2 in flight; throughput 8,459-8,686 → 8,881-9,325 holds/s, within
/// the machine's noise (bench/README.md).
pub const MAX_BATCHES_IN_FLIGHT: usize = 2;

/// A state hash and the applied index it is the hash of.
pub(crate) type HashAt = (u64, [u8; 32]);

/// A write waiting for the proposer.
pub struct Proposal {
    request: ForwardRequest,
    reply: tokio::sync::oneshot::Sender<Result<(Outcome, u64), WriteFailure>>,
}

pub struct App {
    pub cfg: Config,
    proposals: tokio::sync::mpsc::Sender<Proposal>,
    proposals_rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Proposal>>>,
    pub raft: Raft,
    pub ledger: LedgerHandle,
    pub metrics: Metrics,
    pub peers: Peers,
    pub passwords: crate::auth::Passwords,
    inflight: Arc<Semaphore>,
    /// The last state hash computed for the status calls, with its applied index.
    pub(crate) hash_memo: Arc<std::sync::Mutex<Option<HashAt>>>,
}

/// 32 random bytes as hex: API key secrets, refund references.
pub fn random_key() -> String {
    hex(&rand::random::<[u8; 32]>())
}

/// The refund_ref of a refund asked for without one, under an idempotency key: the same for
/// every retry of that request (a random one made each retry another request, hence a 409).
pub fn refund_ref_for_key(booking: &str, key: &str) -> String {
    let h = blake3::hash(format!("refund\0{booking}\0{key}").as_bytes());
    format!("refund-{}", &hex(h.as_bytes())[..32])
}

impl App {
    pub fn new(cfg: Config, raft: Raft, ledger: LedgerHandle) -> App {
        let inflight = Arc::new(Semaphore::new(cfg.max_inflight));
        let peers = Peers::new(cfg.request_timeout, cfg.tls.as_ref());
        let (tx, rx) = tokio::sync::mpsc::channel(cfg.max_inflight);
        let passwords = crate::auth::Passwords::new(cfg.argon2_memory_kib, cfg.argon2_iterations)
            .expect("Argon2 parameters are range-checked by Config::load");
        App {
            passwords,
            cfg,
            proposals: tx,
            proposals_rx: std::sync::Mutex::new(Some(rx)),
            raft,
            ledger,
            metrics: Metrics::default(),
            peers,
            inflight,
            hash_memo: Arc::default(),
        }
    }

    /// This node's wall clock in unix ms (plus the test-only offset).
    pub fn now_ms(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        (now + self.cfg.clock_offset_ms).max(0) as u64
    }

    fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Propose a command and wait for its outcome, from any node, within the request deadline.
    pub async fn write(
        &self,
        principal: Principal,
        key: Option<String>,
        op: Op,
    ) -> Result<Outcome, ApiError> {
        let Ok(_permit) = self.inflight.try_acquire() else {
            self.metrics
                .proposals_rejected_overload
                .fetch_add(1, Relaxed);
            return Err(ApiError::unavailable(
                "overloaded",
                "too many writes in flight on this node; retry shortly",
            ));
        };
        let request = ForwardRequest {
            principal,
            idempotency_key: key,
            op,
        };
        // Canary (jepsen/, test-only): the leader answers from a speculative apply on a copy of
        // its ledger when the commit takes over 50 ms, an ack before commit.
        #[cfg(feature = "canary-ack-before-commit")]
        let speculative = (self.leader() == Some(self.cfg.id)).then(|| {
            let cmd = Command {
                stamp_ms: self.now_ms(),
                principal: request.principal,
                idempotency_key: request.idempotency_key.clone(),
                op: request.op.clone(),
            };
            self.ledger
                .read(|l| l.clone().apply(l.last_index() + 1, cmd))
        });
        let routed = async {
            let (outcome, index) = self.route_write(request).await?;
            // Read your writes on every node: a follower answers once it applied the entry too.
            self.wait_applied(index).await?;
            Ok(outcome)
        };
        #[cfg(feature = "canary-ack-before-commit")]
        let routed = async {
            let mut routed = std::pin::pin!(routed);
            match speculative {
                Some(o) => tokio::time::timeout(Duration::from_millis(50), &mut routed)
                    .await
                    .unwrap_or(Ok(o)),
                None => routed.await,
            }
        };
        match tokio::time::timeout(self.cfg.request_timeout, routed).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::unavailable(
                "timeout",
                "the write was not committed within the request deadline (no quorum?); its outcome is unknown: retry with the same Idempotency-Key",
            )),
        }
    }

    async fn wait_applied(&self, index: u64) -> Result<(), ApiError> {
        if self.ledger.last_applied_index() >= index {
            return Ok(());
        }
        self.raft
            .wait(Some(self.cfg.request_timeout))
            .applied_index_at_least(Some(index), "own write")
            .await
            .map(|_| ())
            .map_err(|e| {
                ApiError::unavailable(
                    "timeout",
                    format!("committed but not yet applied here: {e}"),
                )
            })
    }

    async fn route_write(&self, request: ForwardRequest) -> Result<(Outcome, u64), ApiError> {
        // Two tries: a leader change between looking and proposing is retried once.
        for _ in 0..2 {
            match self.leader() {
                Some(leader) if leader == self.cfg.id => {
                    match self.propose(request.clone()).await {
                        Err(WriteFailure::NotLeader) => self.wait_for_leader().await?,
                        Err(WriteFailure::Other(e)) => return Err(e),
                        Ok(outcome) => return Ok(outcome),
                    }
                }
                Some(leader) => {
                    self.metrics.proposals_forwarded.fetch_add(1, Relaxed);
                    match self.peers.forward(&self.raft, leader, &request).await? {
                        ForwardReply::Outcome(o, index) => return Ok((o, index)),
                        ForwardReply::NotLeader => self.wait_for_leader().await?,
                        ForwardReply::Failed(detail) => {
                            return Err(ApiError::unavailable("unavailable", detail));
                        }
                    }
                }
                None => self.wait_for_leader().await?,
            }
        }
        Err(ApiError::unavailable(
            "no_leader",
            "leadership is changing; retry shortly",
        ))
    }

    /// Wait (within the deadline) until some node is known to lead.
    async fn wait_for_leader(&self) -> Result<(), ApiError> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + self.cfg.request_timeout;
        loop {
            if rx.borrow_watched().current_leader.is_some() {
                // Give the new leader a moment to commit its first entry before retrying.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(ApiError::unavailable(
                    "no_leader",
                    "no leader: the cluster has no quorum right now",
                ));
            }
        }
    }

    /// On the leader: queue the write for the proposer, which stamps and proposes writes
    /// that arrive together as one batch (one log append, one fsync, one round per batch).
    pub async fn propose(&self, request: ForwardRequest) -> Result<(Outcome, u64), WriteFailure> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.proposals
            .try_send(Proposal { request, reply })
            .map_err(|_| {
                self.metrics
                    .proposals_rejected_overload
                    .fetch_add(1, Relaxed);
                WriteFailure::Other(ApiError::unavailable(
                    "overloaded",
                    "the proposal queue is full; retry shortly",
                ))
            })?;
        rx.await.unwrap_or_else(|_| {
            Err(WriteFailure::Other(ApiError::unavailable(
                "unavailable",
                "the proposer stopped; the outcome is unknown: retry with the same Idempotency-Key",
            )))
        })
    }

    /// The proposer: take what is queued (up to [`MAX_PROPOSAL_BATCH`]), stamp it with one
    /// reading of the leader's clock, hand it to Raft as one batch, and answer each write
    /// from the results in order, while the next batch is already being gathered.
    pub async fn proposer_loop(self: Arc<Self>) {
        let Some(mut rx) = self.proposals_rx.lock().expect("proposer lock").take() else {
            return;
        };
        let in_flight = Arc::new(Semaphore::new(self.cfg.proposals_in_flight));
        let mut carried: Option<Proposal> = None;
        loop {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let first = match carried.take() {
                Some(p) => p,
                None => match rx.recv().await {
                    Some(p) => p,
                    None => return,
                },
            };
            // A catalog write (possibly a request body's size) goes in an entry of its own;
            // one met while gathering waits for the next batch.
            let alone = first.request.op.may_be_large();
            let mut batch = vec![first];
            while !alone && batch.len() < MAX_PROPOSAL_BATCH {
                match rx.try_recv() {
                    Ok(p) if p.request.op.may_be_large() => {
                        carried = Some(p);
                        break;
                    }
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let stamp_ms = self.now_ms();
            self.metrics
                .proposals
                .fetch_add(batch.len() as u64, Relaxed);
            self.metrics.batch_size.observe(batch.len() as u64);
            let (commands, replies): (Vec<Command>, Vec<_>) = batch
                .into_iter()
                .map(|p| {
                    let cmd = Command {
                        stamp_ms,
                        principal: p.request.principal,
                        idempotency_key: p.request.idempotency_key,
                        op: p.request.op,
                    };
                    (cmd, p.reply)
                })
                .unzip();
            // One entry for the whole batch: one log write, one replication round and one
            // apply step for all of its commands, one outcome each.
            match self
                .raft
                .client_write_many([Request::commands(commands)])
                .await
            {
                Err(fatal) => {
                    drop(permit);
                    for r in replies {
                        let _ = r.send(Err(WriteFailure::Other(ApiError::unavailable(
                            "unavailable",
                            format!("raft stopped: {fatal}"),
                        ))));
                    }
                }
                Ok(mut results) => {
                    let deadline = self.cfg.request_timeout;
                    tokio::spawn(async move {
                        use futures::StreamExt;
                        let answer_all = async move {
                            let failed =
                                |e: WriteFailure| -> Vec<Result<(Outcome, u64), WriteFailure>> {
                                    replies.iter().map(|_| Err(e.clone())).collect()
                                };
                            let answers = match results.next().await {
                                Some(Ok(Ok(w))) => {
                                    let index = w.response.index;
                                    let outcomes = w.response.outcomes;
                                    if outcomes.len() == replies.len() {
                                        outcomes.into_iter().map(|o| Ok((o, index))).collect()
                                    } else {
                                        failed(WriteFailure::Other(ApiError::internal(format!(
                                            "an entry of {} commands answered with {} outcomes",
                                            replies.len(),
                                            outcomes.len()
                                        ))))
                                    }
                                }
                                Some(Ok(Err(
                                    openraft::error::ClientWriteError::ForwardToLeader(_),
                                ))) => failed(WriteFailure::NotLeader),
                                Some(Ok(Err(e))) => failed(WriteFailure::Other(
                                    ApiError::unavailable("unavailable", e.to_string()),
                                )),
                                Some(Err(fatal)) => {
                                    failed(WriteFailure::Other(ApiError::unavailable(
                                        "unavailable",
                                        format!(
                                            "raft stopped ({fatal}); outcome unknown: retry with the same Idempotency-Key"
                                        ),
                                    )))
                                }
                                None => failed(WriteFailure::Other(ApiError::unavailable(
                                    "unavailable",
                                    "the write was not answered (leadership changed?); outcome unknown: retry with the same Idempotency-Key",
                                ))),
                            };
                            for (reply, answer) in replies.into_iter().zip(answers) {
                                let _ = reply.send(answer);
                            }
                        };
                        // The batch's entry is applied (or failed), or the writers gave up at
                        // their deadline (their replies drop: outcome unknown, retry with the
                        // same key): the next batch may go.
                        if tokio::time::timeout(deadline, answer_all).await.is_err() {
                            tracing::warn!(
                                "a proposed batch was not applied within the request timeout"
                            );
                        }
                        drop(permit);
                    });
                }
            }
        }
    }

    /// Read the local ledger, after a read index unless `Stale`.
    pub async fn read<R>(
        &self,
        c: Consistency,
        f: impl FnOnce(&Ledger) -> R,
    ) -> Result<R, ApiError> {
        // Canary (jepsen/, test-only): a follower serves linearizable reads without a read index.
        #[cfg(feature = "canary-stale-follower-reads")]
        let c = match self.leader() == Some(self.cfg.id) {
            true => c,
            false => Consistency::Stale,
        };
        if c == Consistency::Linearizable {
            self.linearize().await?;
        }
        Ok(self.ledger.read(f))
    }

    /// Wait until this node has applied everything committed before the call (ReadIndex).
    pub async fn linearize(&self) -> Result<(), ApiError> {
        let fut = async {
            let index = match self.leader() {
                Some(l) if l == self.cfg.id => self.read_index().await?,
                Some(l) => self.peers.read_index(&self.raft, l).await?,
                None => {
                    self.wait_for_leader().await?;
                    return Err(ApiError::unavailable(
                        "no_leader",
                        "leadership changed; retry",
                    ));
                }
            };
            self.raft
                .wait(Some(self.cfg.request_timeout))
                .applied_index_at_least(Some(index), "read index")
                .await
                .map_err(|e| {
                    ApiError::unavailable("timeout", format!("not caught up with the leader: {e}"))
                })?;
            Ok(())
        };
        tokio::time::timeout(self.cfg.request_timeout, fut)
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::unavailable(
                    "timeout",
                    "no quorum confirmed the read within the deadline",
                ))
            })
    }

    /// On the leader: the index a linearizable read must wait for.
    pub async fn read_index(&self) -> Result<u64, ApiError> {
        let linearizer = self
            .raft
            .get_read_linearizer(ReadPolicy::ReadIndex)
            .await
            .map_err(|e| {
                ApiError::unavailable("no_leader", format!("cannot confirm leadership: {e}"))
            })?;
        Ok(linearizer.read_log_id().index())
    }

    /// A hold as its holder, a service or an operator may see it.
    pub async fn visible_hold(
        &self,
        p: Principal,
        id: HoldId,
        c: Consistency,
    ) -> Result<api::Hold, ApiError> {
        let found = self
            .read(c, |l| {
                l.state()
                    .holds
                    .get(&id)
                    .map(|h| (h.buyer, crate::convert::hold_view(l, h)))
            })
            .await?;
        match found {
            Some((buyer, v)) if buyer == p || self.is_service_or_operator(p).await? => Ok(v),
            Some(_) => Err(ApiError::forbidden("this hold is another buyer's")),
            None => Err(ApiError::not_found(format!(
                "no hold {id} (holds are forgotten an hour after they end)"
            ))),
        }
    }

    /// A booking as its buyer, a service or an operator may see it.
    pub async fn visible_booking(
        &self,
        p: Principal,
        id: BookingId,
        c: Consistency,
    ) -> Result<api::Booking, ApiError> {
        let found = self
            .read(c, |l| {
                l.state()
                    .bookings
                    .get(&id)
                    .map(|b| (b.buyer, crate::convert::booking_view(l, b)))
            })
            .await?;
        match found {
            Some((buyer, v)) if buyer == p || self.is_service_or_operator(p).await? => Ok(v),
            Some(_) => Err(ApiError::forbidden("this booking is another buyer's")),
            None => Err(ApiError::not_found(format!("no booking {id}"))),
        }
    }

    pub async fn is_operator(&self, p: Principal) -> Result<bool, ApiError> {
        Ok(self.role_of(p) == Some(Role::Operator))
    }

    pub async fn is_service_or_operator(&self, p: Principal) -> Result<bool, ApiError> {
        Ok(matches!(
            self.role_of(p),
            Some(Role::Operator | Role::Service)
        ))
    }

    pub fn role_of(&self, p: Principal) -> Option<Role> {
        self.ledger.read(|l| match p {
            Principal::ApiKey(k) => l
                .state()
                .api_keys
                .get(&k)
                .filter(|k| !k.revoked)
                .map(|k| k.role),
            Principal::User(u) => l.state().users.get(&u).map(|u| u.role),
            Principal::System => None,
        })
    }

    /// Ready: a leader is known and this node applied what it knows to be committed, within
    /// [`READY_MAX_LAG`] entries ([`readiness_of`]).
    pub fn readiness(&self) -> Result<(), String> {
        let m = self.raft.metrics().borrow_watched().clone();
        readiness_of(
            m.current_leader.is_some(),
            m.local_committed.map(|l| l.index).unwrap_or(0),
            m.last_applied.map(|l| l.index).unwrap_or(0),
        )
    }

    pub fn render_metrics(&self) -> String {
        let m = self.raft.metrics().borrow_watched().clone();
        let (holds_live, seats_sold, seats_held, queue_waiting) = self.ledger.read(|l| {
            let mut sold = 0u64;
            let mut held = 0u64;
            let mut waiting = 0u64;
            for p in l.state().performances.values() {
                let t = p.totals();
                sold += u64::from(t.sold);
                held += u64::from(t.held);
                waiting += p
                    .waiting_room
                    .as_ref()
                    .map_or(0, |r| (r.order.len() + r.prequeue.len()) as u64);
            }
            (l.live_holds() as u64, sold, held, waiting)
        });
        let g = Gauges {
            node_id: self.cfg.id,
            term: m.current_term,
            is_leader: m.current_leader == Some(self.cfg.id),
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: m.local_committed.map(|l| l.index).unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            holds_live,
            seats_sold,
            seats_held,
            queue_waiting,
        };
        self.metrics.render(&g)
    }

    /// The leader's tick: about every 100 ms, propose a `Tick` when a hold or admission is due
    /// or a waiting room admits. Nothing is proposed when nothing is due.
    pub async fn tick_loop(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.changed() => return,
            }
            if self.leader() != Some(self.cfg.id) {
                continue;
            }
            let now = self.now_ms();
            let due = self
                .ledger
                .read(|l| l.next_due_ms().is_some_and(|t| t <= now) || l.rooms_admitting());
            if !due {
                continue;
            }
            self.metrics.ticks.fetch_add(1, Relaxed);
            let request = ForwardRequest {
                principal: Principal::System,
                idempotency_key: None,
                op: Op::Tick,
            };
            if let Err(e) =
                tokio::time::timeout(self.cfg.request_timeout, self.propose(request)).await
            {
                tracing::warn!(error = %e, "tick timed out");
            }
        }
    }
}

#[derive(Clone)]
pub enum WriteFailure {
    NotLeader,
    Other(ApiError),
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteFailure::NotLeader => f.write_str("not the leader"),
            WriteFailure::Other(e) => write!(f, "{}: {}", e.code, e.detail),
        }
    }
}

/// How far behind its commit index a node may apply and still be ready: under steady writes
/// every node is an entry or a batch behind at any instant (each commit is applied a moment
/// after it is known), so "applied == committed" would flap `/readyz` and the gRPC health on
/// every write, and a probe-driven balancer would drain healthy nodes. A node replaying its
/// log after a restart, or catching up after a partition, is far more than this behind.
pub const READY_MAX_LAG: u64 = 256;

/// Readiness from what a node knows: a leader, and applied within [`READY_MAX_LAG`] entries of
/// what it knows committed.
pub fn readiness_of(leader_known: bool, committed: u64, applied: u64) -> Result<(), String> {
    if !leader_known {
        return Err("no leader known".into());
    }
    let behind = committed.saturating_sub(applied);
    if behind > READY_MAX_LAG {
        return Err(format!(
            "applying: {applied} of {committed} ({behind} entries behind, ready within {READY_MAX_LAG})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod readiness_tests {
    use super::*;

    #[test]
    fn ready_while_keeping_up_not_while_replaying() {
        assert!(readiness_of(false, 0, 0).unwrap_err().contains("no leader"));
        assert!(readiness_of(true, 0, 0).is_ok());
        // A write in flight: one entry committed and not yet applied is still ready.
        assert!(readiness_of(true, 298, 297).is_ok());
        assert!(readiness_of(true, 1000 + READY_MAX_LAG, 1000).is_ok());
        let e = readiness_of(true, 1001 + READY_MAX_LAG, 1000).unwrap_err();
        assert!(e.contains("applying: 1000 of"), "{e}");
        // Applied past what this node has heard committed (the metric lags): ready.
        assert!(readiness_of(true, 5, 9).is_ok());
    }
}
