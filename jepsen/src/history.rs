//! The history: every operation's invocation and completion, one JSON object a line
//! (`history.jsonl`), and the logical operations the checkers read from it.
//!
//! A completion is `ok` (the cluster answered with success), `fail` (it answered with a
//! rejection: the operation certainly did not take effect) or `info` (no answer: it may or may
//! not have taken effect, at any time after its invocation). An operation retried with the same
//! idempotency key names the first one in `retry_of`.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Op {
    /// Hold one seat of the hot section.
    Hold { seat: String, key: String },
    /// Hold a quantity of the general-admission section.
    GaHold { quantity: u16, key: String },
    /// `seat` is `None` for a GA hold.
    Release {
        hold: String,
        seat: Option<String>,
        key: String,
    },
    Confirm {
        hold: String,
        seat: Option<String>,
        key: String,
    },
    Refund {
        booking: String,
        seat: Option<String>,
        key: String,
    },
    /// The hot section's seat map from one node.
    ReadSeats { node: u64, stale: bool },
    /// The GA section's counters from one node.
    ReadGa { node: u64, stale: bool },
    /// Join the waiting-room performance's queue as buyer number `buyer`.
    Join { buyer: u32, key: String },
    /// A buyer's queue entry (state, position, admission) from one node.
    QueueRead {
        buyer: u32,
        queue: String,
        node: u64,
        stale: bool,
    },
    /// Hold one GA place of the waiting-room performance; `admitted`: the client had seen its
    /// admission and believed it unexpired (the checker judges by the change feed, not this).
    WrHold {
        buyer: u32,
        key: String,
        admitted: bool,
    },
    WrRelease {
        buyer: u32,
        hold: String,
        key: String,
    },
    /// The waiting room's counters (`joined`, `admitted_total` never decrease) from one node.
    ReadRoom { node: u64, stale: bool },
    /// Open the waiting-room performance's sale, revealing its seed.
    OpenRoom { key: String },
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Hold { .. } => "hold",
            Op::GaHold { .. } => "ga_hold",
            Op::Release { .. } => "release",
            Op::Confirm { .. } => "confirm",
            Op::Refund { .. } => "refund",
            Op::ReadSeats { .. } => "read_seats",
            Op::ReadGa { .. } => "read_ga",
            Op::Join { .. } => "join",
            Op::QueueRead { .. } => "queue_read",
            Op::WrHold { .. } => "wr_hold",
            Op::WrRelease { .. } => "wr_release",
            Op::ReadRoom { .. } => "read_room",
            Op::OpenRoom { .. } => "open_room",
        }
    }

    pub fn key(&self) -> Option<&str> {
        match self {
            Op::Hold { key, .. }
            | Op::GaHold { key, .. }
            | Op::Release { key, .. }
            | Op::Confirm { key, .. }
            | Op::Refund { key, .. }
            | Op::Join { key, .. }
            | Op::WrHold { key, .. }
            | Op::WrRelease { key, .. }
            | Op::OpenRoom { key } => Some(key),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Value {
    Hold {
        hold_id: String,
        expires_at_ms: u64,
        quantity: u32,
    },
    Released,
    Booking {
        booking_id: String,
    },
    Refunded,
    Seats {
        seats: BTreeMap<String, String>,
    },
    Ga {
        capacity: u32,
        available: u32,
        held: u32,
        sold: u32,
    },
    Queued {
        queue_id: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        position: Option<u64>,
    },
    QueueState {
        state: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        position: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        admitted_until_ms: Option<u64>,
    },
    Room {
        joined: u32,
        admitted_total: u32,
        waiting: u32,
    },
    Opened,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Type {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    #[serde(rename = "type")]
    pub kind: Type,
    /// The operation's id: its invocation and completion share it.
    pub id: u64,
    pub process: u32,
    /// Microseconds since the run started (the harness's monotonic clock).
    pub at_us: u64,
    pub op: Op,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value: Option<Value>,
    /// `fail`: the problem's stable code; `info`: why the outcome is unknown.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// The earlier operation this one repeats with the same idempotency key.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub retry_of: Option<u64>,
}

/// Appends entries to `history.jsonl` as they happen (a crash of the harness keeps what was
/// recorded) and keeps them in memory for the checkers.
pub struct Recorder {
    start: Instant,
    inner: Mutex<(std::io::BufWriter<std::fs::File>, Vec<Entry>, u64)>,
}

/// Most operations one run records (a bound on the harness's memory).
pub const MAX_OPS: u64 = 2_000_000;

impl Recorder {
    pub fn create(path: &Path, start: Instant) -> anyhow::Result<Recorder> {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Recorder {
            start,
            inner: Mutex::new((std::io::BufWriter::new(file), Vec::new(), 0)),
        })
    }

    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn push(&self, e: Entry) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let line = serde_json::to_string(&e).expect("entries serialize");
        // A full disk loses history lines; the checkers then see fewer operations, never wrong ones.
        let _ = writeln!(g.0, "{line}");
        g.1.push(e);
    }

    /// Record an invocation; `None` once [`MAX_OPS`] were recorded (the process stops).
    pub fn invoke(&self, process: u32, op: &Op, retry_of: Option<u64>) -> Option<u64> {
        let id = {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if g.2 >= MAX_OPS {
                return None;
            }
            g.2 += 1;
            g.2
        };
        self.push(Entry {
            kind: Type::Invoke,
            id,
            process,
            at_us: self.now_us(),
            op: op.clone(),
            value: None,
            error: None,
            retry_of,
        });
        Some(id)
    }

    pub fn complete(
        &self,
        id: u64,
        process: u32,
        op: &Op,
        done: &Completion,
        retry_of: Option<u64>,
    ) {
        let (kind, value, error) = match done {
            Completion::Ok(v) => (Type::Ok, Some(v.clone()), None),
            Completion::Fail(c) => (Type::Fail, None, Some(c.clone())),
            Completion::Info(w) => (Type::Info, None, Some(w.clone())),
        };
        self.push(Entry {
            kind,
            id,
            process,
            at_us: self.now_us(),
            op: op.clone(),
            value,
            error,
            retry_of,
        });
    }

    pub fn flush(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = g.0.flush();
    }

    pub fn entries(&self) -> Vec<Entry> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.1.clone()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    Ok(Value),
    Fail(String),
    Info(String),
}

pub fn load(path: &Path) -> anyhow::Result<Vec<Entry>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        // The last line of an interrupted run may be cut short: stop there.
        match serde_json::from_str(&line) {
            Ok(e) => out.push(e),
            Err(e) => {
                eprintln!("history line {}: {e} (ignoring the rest)", i + 1);
                break;
            }
        }
    }
    Ok(out)
}

/// One logical operation: the first attempt's invocation, and the first definite answer
/// among it and its retries (or `Info` if none came). `attempts` holds every definite answer
/// given for its idempotency key, for the check that a retry is applied once.
#[derive(Clone, Debug)]
pub struct Logical {
    pub id: u64,
    pub process: u32,
    pub op: Op,
    pub invoke_us: u64,
    /// `None`: no definite answer (it may take effect at any time after `invoke_us`).
    pub complete_us: Option<u64>,
    pub outcome: Completion,
    pub attempts: Vec<Completion>,
}

/// Pair invocations with completions and fold retries into the operation they repeat.
pub fn logical(entries: &[Entry]) -> Vec<Logical> {
    let mut by_id: BTreeMap<u64, Logical> = BTreeMap::new();
    let mut root_of: HashMap<u64, u64> = HashMap::new();
    for e in entries {
        let root = e.retry_of.unwrap_or(e.id);
        match e.kind {
            Type::Invoke => {
                root_of.insert(e.id, root);
                if e.retry_of.is_none() {
                    by_id.insert(
                        e.id,
                        Logical {
                            id: e.id,
                            process: e.process,
                            op: e.op.clone(),
                            invoke_us: e.at_us,
                            complete_us: None,
                            outcome: Completion::Info("never completed".into()),
                            attempts: Vec::new(),
                        },
                    );
                }
            }
            kind => {
                let root = root_of.get(&e.id).copied().unwrap_or(root);
                let Some(l) = by_id.get_mut(&root) else {
                    continue;
                };
                let c = match kind {
                    Type::Ok => Completion::Ok(e.value.clone().unwrap_or(Value::Released)),
                    Type::Fail => Completion::Fail(e.error.clone().unwrap_or_default()),
                    _ => Completion::Info(e.error.clone().unwrap_or_default()),
                };
                if matches!(c, Completion::Info(_)) {
                    if l.complete_us.is_none() {
                        l.outcome = c;
                    }
                    continue;
                }
                if l.complete_us.is_none() {
                    l.complete_us = Some(e.at_us);
                    l.outcome = c.clone();
                }
                l.attempts.push(c);
            }
        }
    }
    by_id.into_values().collect()
}
