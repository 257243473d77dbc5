//! ticketledger over plain HTTP/1.1 JSON (reqwest) or over its gRPC API (tonic, HTTP/2, a few
//! multiplexed connections, as etcd's driver), one attempt per request either way: the client
//! library's retries would hide back-pressure and distort latency. Setup goes through
//! `client::Client`, whose retries are welcome there.

use super::{classify_status, progress_every};
use crate::record::Outcome;
use crate::workload::{Layout, Op, Plan, Seats};
use anyhow::{Context, bail};
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::transport::{Channel, Endpoint};

/// Setup calls in flight at once (API keys, read holds).
const SETUP_CONCURRENCY: usize = 32;
/// Hold TTL of the hold performances: the ledger's minimum, so expiries recycle seats and
/// a buyer's live holds stay under the ledger's 4 per performance.
const HOLD_TTL_SECS: u64 = 10;
/// Hold TTL of the read performance: its holds must outlive the run.
const READ_HOLD_TTL_SECS: u64 = 3_600;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Every request to the leader (what `client::Client` converges to).
    Leader,
    /// Round-robin over every node (followers forward writes to the leader).
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// HTTP/1.1 JSON, one connection per concurrent request.
    Http,
    /// gRPC over HTTP/2 (`ticketledger.v1.Ledger`), `--tl-grpc-connections` connections per
    /// target. Linearizable reads (the `read` workload) still go over HTTP: the gRPC GetHold
    /// reads this node's applied state without a read index.
    Grpc,
    /// gRPC, pipelined (`Ledger.Pipeline`, client::grpc::Pipeline): one long-lived stream
    /// per connection carries every client's holds, confirms, joins and linearizable hold
    /// reads, each with its own credential.
    GrpcPipeline,
}

pub struct Options {
    pub urls: Vec<String>,
    pub admin_key: String,
    pub target: Target,
    pub connections: usize,
    pub protocol: Protocol,
    pub grpc_connections: usize,
}

type Grpc = api::grpc::ledger_client::LedgerClient<Channel>;
type Auth = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

pub struct Ticketledger {
    /// The leader's node id when the run was set up.
    pub leader: u64,
    http: reqwest::Client,
    targets: Vec<String>,
    next: AtomicUsize,
    layout: Layout,
    /// `Bearer <key>` of each buyer.
    buyers: Vec<String>,
    /// gRPC: connections round-robin, and each buyer's `authorization` value (parsed once).
    grpc: Vec<Grpc>,
    grpc_buyers: Vec<Auth>,
    /// GrpcPipeline: one stream per connection, round-robin.
    pipelines: Vec<client::grpc::Pipeline>,
    grpc_service: Option<Auth>,
    service: String,
    admin: String,
    performances: Vec<String>,
    rooms: Vec<String>,
    read_holds: Vec<String>,
    notes: Vec<String>,
    /// The first few distinct failures that were not the node's own answers (transport).
    failures: std::sync::Mutex<Vec<String>>,
}

/// Distinct transport failures kept for the result's notes.
const FAILURES_KEPT: usize = 4;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Ticketledger {
    /// Create the keys, the venue, the performances, the rooms and the read holds of `plan`.
    pub async fn setup(o: Options, plan: &Plan, timeout: Duration) -> anyhow::Result<Self> {
        let admin = client::Client::try_new(o.urls.clone())
            .map_err(anyhow::Error::msg)?
            .with_key(o.admin_key.clone())
            .with_deadline(Duration::from_secs(60));
        let status = admin
            .status()
            .await
            .context("asking the cluster for its status")?;
        let Some(leader) = status.leader else {
            bail!("the cluster has no leader");
        };
        let chosen: Vec<&api::NodeStatus> = match o.target {
            Target::All => status.nodes.iter().collect(),
            Target::Leader => vec![
                status
                    .nodes
                    .iter()
                    .find(|n| n.id == leader)
                    .context("leader not in status")?,
            ],
        };
        let targets: Vec<String> = match o.target {
            Target::All => admin.nodes(),
            Target::Leader => vec![format!("http://{}", chosen[0].http_addr)],
        };
        let mut grpc = Vec::new();
        let mut pipelines = Vec::new();
        if o.protocol != Protocol::Http {
            for n in &chosen {
                for _ in 0..o.grpc_connections.max(1) {
                    if o.protocol == Protocol::GrpcPipeline {
                        // Every workload goes on the pipeline: no unary connection.
                        pipelines.push(
                            client::grpc::GrpcClient::try_new([n.grpc_addr.clone()])
                                .map_err(anyhow::Error::msg)?
                                .with_deadline(timeout)
                                .pipeline(),
                        );
                        continue;
                    }
                    let ch = Endpoint::from_shared(format!("http://{}", n.grpc_addr))
                        .with_context(|| format!("bad gRPC address {}", n.grpc_addr))?
                        .timeout(timeout)
                        .tcp_nodelay(true)
                        .connect()
                        .await
                        .with_context(|| format!("connecting to gRPC {}", n.grpc_addr))?;
                    grpc.push(Grpc::new(ch));
                }
            }
        }
        eprintln!(
            "ticketledger: leader {leader}, sending to {}",
            targets.join(" ")
        );
        let service = admin
            .create_api_key("loadgen-service", "service")
            .await?
            .key;
        let buyers = create_buyers(&admin, plan.buyers).await?;
        let venue = admin
            .create_venue(&venue_spec(&plan.layout))
            .await?
            .venue_id;
        let event = admin
            .create_event(&api::CreateEvent {
                name: "loadgen".into(),
                category: "music".into(),
                description: "load generator run".into(),
                media: Vec::new(),
            })
            .await?
            .event_id;
        let mut performances = Vec::new();
        for _ in 0..plan.layout.performances {
            performances
                .push(open_performance(&admin, &event, &venue, &plan.layout, HOLD_TTL_SECS).await?);
        }
        let rooms = if plan.workload.needs_queues() {
            create_rooms(&admin, &event, plan.rooms).await?
        } else {
            Vec::new()
        };
        let read_holds = if plan.workload.needs_reads() {
            let perf =
                open_performance(&admin, &event, &venue, &plan.layout, READ_HOLD_TTL_SECS).await?;
            create_read_holds(&admin, &buyers, &perf, &plan.layout, plan.read_slots).await?
        } else {
            Vec::new()
        };
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(o.connections)
            .timeout(timeout)
            .tcp_nodelay(true)
            .build()?;
        let auth = |k: &str| -> anyhow::Result<Auth> {
            format!("Bearer {k}")
                .parse()
                .context("an API key is not valid metadata")
        };
        let grpc_buyers = if grpc.is_empty() {
            Vec::new()
        } else {
            buyers
                .iter()
                .map(|k| auth(k))
                .collect::<anyhow::Result<_>>()?
        };
        let grpc_service = (!grpc.is_empty()).then(|| auth(&service)).transpose()?;
        let protocol_note = match o.protocol {
            Protocol::Http => {
                "plain HTTP/1.1 JSON, one attempt per request, no Idempotency-Key".to_string()
            }
            Protocol::Grpc => format!(
                "gRPC (HTTP/2, {} connections per target; reads over HTTP), one attempt per request, no request_id",
                o.grpc_connections.max(1)
            ),
            Protocol::GrpcPipeline => format!(
                "gRPC, pipelined (Ledger.Pipeline: one stream on each of {} connections per target, each call with its own key: holds, confirms, joins, linearizable hold reads); one attempt per request, no request_id",
                o.grpc_connections.max(1)
            ),
        };
        Ok(Ticketledger {
            leader,
            http,
            grpc,
            grpc_buyers,
            pipelines,
            grpc_service,
            next: AtomicUsize::new(0),
            layout: plan.layout,
            buyers: buyers.iter().map(|k| format!("Bearer {k}")).collect(),
            service: format!("Bearer {service}"),
            admin: format!("Bearer {}", o.admin_key),
            performances,
            rooms,
            read_holds,
            notes: vec![
                format!("target: {:?} ({})", o.target, targets.join(" ")),
                "durability: acknowledged after a majority fsynced the entry (Raft)".into(),
                protocol_note,
            ],
            targets,
            failures: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The setup's notes and the first distinct transport failures seen.
    pub fn notes(&self) -> Vec<String> {
        let mut n = self.notes.clone();
        let f = self.failures.lock().expect("failures lock");
        n.extend(f.iter().map(|e| format!("transport failure seen: {e}")));
        n
    }

    fn failed(&self, s: &tonic::Status) -> Outcome {
        let o = classify_grpc(s);
        if o == Outcome::Transport {
            self.note_failure(format!("{:?}: {}", s.code(), s.message()));
        }
        o
    }

    /// Keep the first few distinct transport failures for the result's notes.
    fn note_failure(&self, text: String) {
        let mut f = self.failures.lock().expect("failures lock");
        if f.len() < FAILURES_KEPT && !f.contains(&text) {
            f.push(text);
        }
    }

    fn base(&self) -> &str {
        let i = self.next.fetch_add(1, Relaxed) % self.targets.len();
        &self.targets[i]
    }

    fn grpc_client(&self) -> Grpc {
        let i = self.next.fetch_add(1, Relaxed) % self.grpc.len();
        self.grpc[i].clone()
    }

    pub async fn exec(&self, op: &Op) -> Outcome {
        if !self.pipelines.is_empty() || (!self.grpc.is_empty() && !matches!(op, Op::Read { .. })) {
            return self.exec_grpc(op).await;
        }
        match *op {
            Op::Hold { perf, buyer, seats } => self.hold(perf, buyer, &seats).await.0,
            Op::HoldConfirm { perf, buyer, seats } => match self.hold(perf, buyer, &seats).await {
                (Outcome::Ok, Some(hold_id)) => self.confirm(&hold_id).await,
                (outcome, _) => outcome,
            },
            Op::Join { room, buyer } => {
                let url = format!(
                    "{}/v1/performances/{}/queue",
                    self.base(),
                    self.rooms[room as usize]
                );
                let req = self
                    .http
                    .post(url)
                    .header("authorization", &self.buyers[buyer as usize]);
                send(req).await.0
            }
            Op::Read { slot } => {
                let id = &self.read_holds[slot as usize % self.read_holds.len().max(1)];
                let url = format!("{}/v1/holds/{id}", self.base());
                send(self.http.get(url).header("authorization", &self.admin))
                    .await
                    .0
            }
        }
    }

    async fn hold(&self, perf: u32, buyer: u32, seats: &Seats) -> (Outcome, Option<String>) {
        let body = api::CreateHold {
            performance_id: self.performances[perf as usize].clone(),
            seats: Some(
                seats
                    .as_slice()
                    .iter()
                    .map(|&s| self.layout.seat_name(s))
                    .collect(),
            ),
            section: None,
            quantity: None,
            category: None,
        };
        let req = self
            .http
            .post(format!("{}/v1/holds", self.base()))
            .header("authorization", &self.buyers[buyer as usize])
            .json(&body);
        match send(req).await {
            (Outcome::Ok, Some(bytes)) => match serde_json::from_slice::<api::Hold>(&bytes) {
                Ok(h) => (Outcome::Ok, Some(h.hold_id)),
                Err(_) => (Outcome::ServerError, None),
            },
            (o, _) => (o, None),
        }
    }

    async fn confirm(&self, hold_id: &str) -> Outcome {
        let req = self
            .http
            .post(format!("{}/v1/holds/{hold_id}/confirm", self.base()))
            .header("authorization", &self.service)
            .json(&api::ConfirmHold {
                payment_ref: format!("lg-{hold_id}"),
            });
        send(req).await.0
    }
}

impl Ticketledger {
    async fn exec_grpc(&self, op: &Op) -> Outcome {
        match *op {
            Op::Hold { perf, buyer, seats } => self.hold_grpc(perf, buyer, &seats).await.0,
            Op::HoldConfirm { perf, buyer, seats } => {
                match self.hold_grpc(perf, buyer, &seats).await {
                    (Outcome::Ok, Some(hold_id)) if !self.pipelines.is_empty() => {
                        let req = api::grpc::ConfirmHoldRequest {
                            payment_ref: format!("lg-{hold_id}"),
                            hold_id,
                            request_id: String::new(),
                        };
                        match self.pipeline().confirm_hold(&self.service, req).await {
                            Ok(_) => Outcome::Ok,
                            Err(e) => self.failed_call(&e),
                        }
                    }
                    (Outcome::Ok, Some(hold_id)) => {
                        let mut req = tonic::Request::new(api::grpc::ConfirmHoldRequest {
                            payment_ref: format!("lg-{hold_id}"),
                            hold_id,
                            request_id: String::new(),
                        });
                        if let Some(a) = &self.grpc_service {
                            req.metadata_mut().insert("authorization", a.clone());
                        }
                        match self.grpc_client().confirm_hold(req).await {
                            Ok(_) => Outcome::Ok,
                            Err(s) => self.failed(&s),
                        }
                    }
                    (outcome, _) => outcome,
                }
            }
            Op::Join { room, buyer } if !self.pipelines.is_empty() => {
                let req = api::grpc::JoinQueueRequest {
                    performance_id: self.rooms[room as usize].clone(),
                    request_id: String::new(),
                };
                match self
                    .pipeline()
                    .join_queue(&self.buyers[buyer as usize], req)
                    .await
                {
                    Ok(_) => Outcome::Ok,
                    Err(e) => self.failed_call(&e),
                }
            }
            Op::Read { slot } if !self.pipelines.is_empty() => {
                let id = &self.read_holds[slot as usize % self.read_holds.len().max(1)];
                let req = api::grpc::HoldRef {
                    hold_id: id.clone(),
                    request_id: String::new(),
                };
                match self.pipeline().get_hold(&self.admin, req).await {
                    Ok(_) => Outcome::Ok,
                    Err(e) => self.failed_call(&e),
                }
            }
            Op::Join { room, buyer } => {
                let mut req = tonic::Request::new(api::grpc::JoinQueueRequest {
                    performance_id: self.rooms[room as usize].clone(),
                    request_id: String::new(),
                });
                req.metadata_mut()
                    .insert("authorization", self.grpc_buyers[buyer as usize].clone());
                match self.grpc_client().join_queue(req).await {
                    Ok(_) => Outcome::Ok,
                    Err(s) => self.failed(&s),
                }
            }
            Op::Read { .. } => unreachable!("reads go over HTTP"),
        }
    }

    fn pipeline(&self) -> &client::grpc::Pipeline {
        let i = self.next.fetch_add(1, Relaxed) % self.pipelines.len();
        &self.pipelines[i]
    }

    /// A pipelined call's failure as a benchmark outcome, as [`classify_grpc`] does a
    /// unary one's.
    fn failed_call(&self, e: &client::Error) -> Outcome {
        match e {
            client::Error::Api { problem } => match (problem.status, problem.code.as_str()) {
                (409, "seat_unavailable" | "sold_out") => Outcome::Conflict,
                (409, _) => Outcome::ClientError,
                (status, _) => classify_status(status),
            },
            client::Error::Unavailable { last, .. } if last == client::grpc::NO_ANSWER => {
                Outcome::Timeout
            }
            other => {
                self.note_failure(other.to_string());
                Outcome::Transport
            }
        }
    }

    async fn hold_grpc(&self, perf: u32, buyer: u32, seats: &Seats) -> (Outcome, Option<String>) {
        let hold = api::grpc::PlaceHoldRequest {
            performance_id: self.performances[perf as usize].clone(),
            seats: seats
                .as_slice()
                .iter()
                .map(|&s| self.layout.seat_name(s))
                .collect(),
            ..Default::default()
        };
        if !self.pipelines.is_empty() {
            return match self
                .pipeline()
                .place_hold(&self.buyers[buyer as usize], hold)
                .await
            {
                Ok(h) => (Outcome::Ok, Some(h.hold_id)),
                Err(e) => (self.failed_call(&e), None),
            };
        }
        let mut req = tonic::Request::new(hold);
        req.metadata_mut()
            .insert("authorization", self.grpc_buyers[buyer as usize].clone());
        match self.grpc_client().place_hold(req).await {
            Ok(h) => (Outcome::Ok, Some(h.into_inner().hold_id)),
            Err(s) => (self.failed(&s), None),
        }
    }
}

/// A gRPC failure as a benchmark outcome: the node puts the HTTP status and the problem code
/// in the metadata of every error it answers; a status without them is the transport's.
fn classify_grpc(s: &tonic::Status) -> Outcome {
    let meta = |k: &str| s.metadata().get(k).and_then(|v| v.to_str().ok());
    match meta(api::grpc::STATUS_METADATA).and_then(|v| v.parse::<u16>().ok()) {
        Some(409) => match meta(api::grpc::CODE_METADATA) {
            Some("seat_unavailable" | "sold_out") => Outcome::Conflict,
            _ => Outcome::ClientError,
        },
        Some(status) => classify_status(status),
        None => match s.code() {
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => Outcome::Timeout,
            _ => Outcome::Transport,
        },
    }
}

/// One attempt; the body is read to the end (so the connection is reused) and returned on 2xx.
async fn send(req: reqwest::RequestBuilder) -> (Outcome, Option<bytes::Bytes>) {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return (Outcome::Timeout, None),
        Err(_) => return (Outcome::Transport, None),
    };
    let status = resp.status().as_u16();
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) if e.is_timeout() => return (Outcome::Timeout, None),
        Err(_) => return (Outcome::Transport, None),
    };
    if status == 409 {
        // Only a taken seat (or a sold-out show) is the "no" a buyer expects.
        let code = serde_json::from_slice::<api::Problem>(&body)
            .map(|p| p.code)
            .unwrap_or_default();
        let o = if code == "seat_unavailable" || code == "sold_out" {
            Outcome::Conflict
        } else {
            Outcome::ClientError
        };
        return (o, None);
    }
    let o = classify_status(status);
    (o, (o == Outcome::Ok).then_some(body))
}

fn venue_spec(l: &Layout) -> api::CreateVenue {
    api::CreateVenue {
        name: "loadgen hall".into(),
        sections: (0..l.sections)
            .map(|s| api::SectionSpec::Seated {
                name: Layout::section_name(s),
                rows: (1..=l.rows)
                    .map(|r| api::RowSpec {
                        label: r.to_string(),
                        seats: l.seats_per_row,
                    })
                    .collect(),
            })
            .collect(),
    }
}

async fn open_performance(
    admin: &client::Client,
    event: &str,
    venue: &str,
    l: &Layout,
    hold_ttl_secs: u64,
) -> anyhow::Result<String> {
    let now = now_ms();
    let spec = api::CreatePerformance {
        venue_id: venue.into(),
        starts_at: api::TimeInput::UnixMs(now + 30 * 24 * 3600 * 1000),
        on_sale_at: api::TimeInput::UnixMs(now),
        sale_ends_at: None,
        hold_ttl_secs,
        payment_grace_secs: None,
        max_seats_per_order: Some(10),
        categories: None,
        prices: (0..l.sections)
            .map(|s| api::Price {
                section: Layout::section_name(s),
                category: None,
                amount_minor: 5_000,
                currency: "EUR".into(),
            })
            .collect(),
        waiting_room: None,
    };
    let id = admin.create_performance(event, &spec).await?.performance_id;
    admin
        .update_performance(
            &id,
            &api::UpdatePerformance {
                status: "on_sale".into(),
                seed: None,
            },
        )
        .await
        .with_context(|| format!("opening the sale of {id}"))?;
    Ok(id)
}

/// Performances with a waiting room, left in draft: joins go to the pre-queue, as in the
/// hour before an on-sale.
async fn create_rooms(admin: &client::Client, event: &str, n: u32) -> anyhow::Result<Vec<String>> {
    let venue = admin
        .create_venue(&api::CreateVenue {
            name: "loadgen room".into(),
            sections: vec![api::SectionSpec::GeneralAdmission {
                name: "Floor".into(),
                capacity: 100,
            }],
        })
        .await?
        .venue_id;
    let now = now_ms();
    let mut rooms = Vec::new();
    for i in 0..n {
        let seed = format!("loadgen-room-{i}-{now}");
        let spec = api::CreatePerformance {
            venue_id: venue.clone(),
            starts_at: api::TimeInput::UnixMs(now + 30 * 24 * 3600 * 1000),
            on_sale_at: api::TimeInput::UnixMs(now + 24 * 3600 * 1000),
            sale_ends_at: None,
            hold_ttl_secs: 600,
            payment_grace_secs: None,
            max_seats_per_order: Some(4),
            categories: None,
            prices: vec![api::Price {
                section: "Floor".into(),
                category: None,
                amount_minor: 2_000,
                currency: "EUR".into(),
            }],
            waiting_room: Some(api::WaitingRoomSpec {
                admission_rate_per_sec: 100,
                admission_ttl_secs: 600,
                max_active_admissions: 0,
                seed_commitment: blake3::hash(seed.as_bytes()).to_hex().to_string(),
            }),
        };
        rooms.push(admin.create_performance(event, &spec).await?.performance_id);
    }
    Ok(rooms)
}

async fn create_buyers(admin: &client::Client, n: u32) -> anyhow::Result<Vec<String>> {
    eprintln!("ticketledger: creating {n} buyer API keys");
    let mut keys = Vec::with_capacity(n as usize);
    let mut pending = futures::stream::iter(0..n)
        .map(|i| {
            let admin = admin.clone();
            async move {
                admin
                    .create_api_key(&format!("loadgen-buyer-{i}"), "buyer")
                    .await
            }
        })
        .buffered(SETUP_CONCURRENCY);
    while let Some(k) = pending.next().await {
        keys.push(k.context("creating a buyer API key")?.key);
        progress_every("buyer keys", keys.len(), n as usize);
    }
    Ok(keys)
}

/// One single-seat hold per read slot, by buyers in turn (at most 4 per buyer, the ledger's limit).
async fn create_read_holds(
    admin: &client::Client,
    buyers: &[String],
    perf: &str,
    l: &Layout,
    n: u32,
) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(
        (n as usize) <= buyers.len() * 4 && n <= l.seats_per_performance(),
        "--read-slots must be at most 4 × --buyers and at most the seats of one performance"
    );
    eprintln!("ticketledger: creating {n} holds to read");
    let mut pending = futures::stream::iter(0..n)
        .map(|i| {
            let c = admin
                .clone()
                .with_key(buyers[i as usize % buyers.len()].clone());
            let body = api::CreateHold {
                performance_id: perf.into(),
                seats: Some(vec![l.seat_name(i)]),
                section: None,
                quantity: None,
                category: None,
            };
            async move { c.hold(&body).await }
        })
        .buffered(SETUP_CONCURRENCY);
    let mut holds = Vec::with_capacity(n as usize);
    while let Some(h) = pending.next().await {
        holds.push(h.context("creating a hold to read")?.hold_id);
        progress_every("read holds", holds.len(), n as usize);
    }
    Ok(holds)
}
