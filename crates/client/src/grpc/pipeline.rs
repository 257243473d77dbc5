//! Pipelined calls (`Ledger.Pipeline`): many holds, confirms, joins and hold reads on one
//! HTTP/2 stream to one node, for a front end carrying many buyers' calls. A unary call
//! costs the node a new HTTP/2 stream (headers both ways, trailers, a service call); a
//! pipelined one is one message each way on a stream that stays open.
//!
//! Unlike [`GrpcClient`]'s calls, a pipelined call is one attempt: its error is the node's
//! answer ([`Error::Api`], 503 `overloaded` included) or [`Error::Unavailable`] when the
//! stream broke or the deadline passed before the answer came (the outcome is unknown:
//! retry with the same `request_id`). The next call after a broken stream opens a new one,
//! to the client's next node.

use super::{GrpcClient, pb};
use crate::{Error, Result};
use pb::pipeline_answer::Answer;
use pb::pipeline_call::Call;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Calls of one stream unanswered at once: the node's own bound per stream
/// (`MAX_PIPELINE_IN_FLIGHT` in crates/node/src/grpc.rs, past which it answers 503
/// `overloaded`). Callers past it wait, within their deadline.
pub const MAX_IN_FLIGHT: usize = 1024;

/// The `last` of the [`Error::Unavailable`] of a call not answered within the deadline.
pub const NO_ANSWER: &str = "no answer within the deadline";

type Reply = oneshot::Sender<std::result::Result<Answer, String>>;

/// A handle on one pipelined stream; cheap to clone (clones share the stream). Dropping
/// the last handle ends the stream once its calls are answered.
#[derive(Clone)]
pub struct Pipeline {
    calls: mpsc::Sender<(Call, String, Reply)>,
    deadline: Duration,
}

impl GrpcClient {
    /// A pipelined stream to the node this client would call first (then, each time a
    /// stream breaks, to the next of its nodes), authenticated with this client's key
    /// unless a call names its own credential.
    pub fn pipeline(&self) -> Pipeline {
        let node = self.preferred.load(std::sync::atomic::Ordering::Relaxed) % self.nodes.len();
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let clients = self
            .nodes
            .iter()
            .map(|(_, ch)| super::ledger_client(ch.clone()))
            .collect();
        tokio::spawn(drive(clients, node, self.key.clone(), self.deadline, rx));
        Pipeline {
            calls: tx,
            deadline: self.deadline,
        }
    }
}

impl Pipeline {
    /// PlaceHold as the holder of `authorization` (`Bearer <key>`; empty: the stream's).
    pub async fn place_hold(
        &self,
        authorization: &str,
        req: pb::PlaceHoldRequest,
    ) -> Result<pb::Hold> {
        match self.call(Call::PlaceHold(req), authorization).await? {
            Answer::Hold(h) => Ok(h),
            other => Err(Error::Decode(format!("a hold was answered with {other:?}"))),
        }
    }

    /// ConfirmHold as the holder of `authorization` (`Bearer <key>`; empty: the stream's).
    pub async fn confirm_hold(
        &self,
        authorization: &str,
        req: pb::ConfirmHoldRequest,
    ) -> Result<pb::Booking> {
        match self.call(Call::ConfirmHold(req), authorization).await? {
            Answer::Booking(b) => Ok(b),
            other => Err(Error::Decode(format!(
                "a confirm was answered with {other:?}"
            ))),
        }
    }

    /// JoinQueue as the holder of `authorization` (`Bearer <key>`; empty: the stream's).
    pub async fn join_queue(
        &self,
        authorization: &str,
        req: pb::JoinQueueRequest,
    ) -> Result<pb::QueueStatus> {
        match self.call(Call::JoinQueue(req), authorization).await? {
            Answer::Queue(q) => Ok(q),
            other => Err(Error::Decode(format!("a join was answered with {other:?}"))),
        }
    }

    /// GetHold (linearizable: after a read index) as the holder of `authorization`.
    pub async fn get_hold(&self, authorization: &str, req: pb::HoldRef) -> Result<pb::Hold> {
        match self.call(Call::GetHold(req), authorization).await? {
            Answer::Hold(h) => Ok(h),
            other => Err(Error::Decode(format!(
                "a hold read was answered with {other:?}"
            ))),
        }
    }

    async fn call(&self, call: Call, authorization: &str) -> Result<Answer> {
        let unavailable = |last: String| Error::Unavailable {
            deadline: self.deadline,
            attempts: 1,
            last,
        };
        let (reply, answer) = oneshot::channel();
        let asked = async {
            self.calls
                .send((call, authorization.to_string(), reply))
                .await
                .map_err(|_| "the pipeline's driver stopped".to_string())?;
            answer
                .await
                .map_err(|_| "the pipeline's driver stopped".to_string())?
        };
        match tokio::time::timeout(self.deadline, asked).await {
            Err(_) => Err(unavailable(NO_ANSWER.into())),
            Ok(Err(why)) => Err(unavailable(why)),
            Ok(Ok(Answer::Error(e))) => Err(Error::Api {
                problem: Box::new(problem(e)),
            }),
            Ok(Ok(answer)) => Ok(answer),
        }
    }
}

fn problem(e: pb::CallError) -> api::Problem {
    let detail = e
        .message
        .strip_prefix(&format!("{}: ", e.code))
        .unwrap_or(&e.message)
        .to_string();
    api::Problem {
        type_: format!("https://ticketledger.dev/problems/{}", e.code),
        title: format!("{:?}", tonic::Code::from(e.grpc_code)),
        status: u16::try_from(e.http_status).unwrap_or(500),
        detail,
        code: e.code,
        instance: None,
    }
}

/// The driver: opens a stream at the first call, numbers the calls, matches answers to
/// them; when the stream breaks (or cannot be opened), fails what it had pending and opens
/// one to the next node at the next call. A stream on which a call waited twice the
/// deadline is taken as stuck (a node that stopped answering while its connection stays
/// up) and left the same way. Returns when every handle is gone and nothing is pending.
async fn drive(
    mut clients: Vec<pb::ledger_client::LedgerClient<tonic::transport::Channel>>,
    mut node: usize,
    key: Option<String>,
    deadline: Duration,
    mut calls: mpsc::Receiver<(Call, String, Reply)>,
) {
    let stuck_after = deadline.saturating_mul(2).max(Duration::from_millis(100));
    let mut next_id = 0u64;
    let mut first_stream = true;
    'streams: loop {
        if !first_stream {
            node = (node + 1) % clients.len();
        }
        first_stream = false;
        let Some(first) = calls.recv().await else {
            return;
        };
        let (out, out_rx) = mpsc::channel::<pb::PipelineCall>(MAX_IN_FLIGHT);
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(out_rx));
        if let Some(k) = &key
            && let Ok(v) = format!("Bearer {k}").parse()
        {
            req.metadata_mut().insert("authorization", v);
        }
        let mut pending: HashMap<u64, (Reply, Instant)> = HashMap::new();
        let mut send = |(call, authorization, reply): (Call, String, Reply),
                        pending: &mut HashMap<u64, (Reply, Instant)>| {
            next_id += 1;
            // Never blocks: at most MAX_IN_FLIGHT are pending, the channel holds as many.
            let sent = out.try_send(pb::PipelineCall {
                id: next_id,
                authorization,
                call: Some(call),
            });
            match sent {
                Ok(()) => {
                    pending.insert(next_id, (reply, Instant::now()));
                }
                Err(_) => {
                    let _ = reply.send(Err("the pipelined stream is closed".into()));
                }
            }
        };
        send(first, &mut pending);
        let mut answers = match clients[node].pipeline(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                let why = format!("opening the pipeline: {:?}: {}", s.code(), s.message());
                for (_, (r, _)) in pending.drain() {
                    let _ = r.send(Err(why.clone()));
                }
                continue 'streams;
            }
        };
        let mut open = true;
        let mut watchdog = tokio::time::interval(stuck_after / 2);
        watchdog.tick().await;
        let why = loop {
            if !open && pending.is_empty() {
                return;
            }
            tokio::select! {
                call = calls.recv(), if open && pending.len() < MAX_IN_FLIGHT => match call {
                    Some(c) => send(c, &mut pending),
                    // Every handle is gone: finish what is pending, then end.
                    None => open = false,
                },
                answer = answers.message() => match answer {
                    Ok(Some(a)) => {
                        if let (Some((r, _)), Some(answer)) = (pending.remove(&a.id), a.answer) {
                            let _ = r.send(Ok(answer));
                        }
                    }
                    Ok(None) => break "the node ended the pipelined stream".to_string(),
                    Err(s) => break format!("{:?}: {}", s.code(), s.message()),
                },
                _ = watchdog.tick() => {
                    if pending.values().any(|(_, at)| at.elapsed() > stuck_after) {
                        break format!("no answer on the pipelined stream for {stuck_after:?}: replaced");
                    }
                }
            }
        };
        for (_, (r, _)) in pending.drain() {
            let _ = r.send(Err(why.clone()));
        }
        if !open {
            return;
        }
    }
}
