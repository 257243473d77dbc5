//! Redis, one node, `appendonly yes` + `appendfsync always` (checked at connect time). A seat
//! is a key that exists only while held or sold; a hold is one Lua script that sets every
//! seat only if none exists. Redis does not replicate here: it is the single-node yardstick.

use super::{progress_every, run_tag};
use crate::record::Outcome;
use crate::workload::{Op, Plan, Seats};
use anyhow::{Context, bail};
use redis::aio::MultiplexedConnection;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Connections at most (each multiplexes many requests).
pub const MAX_CONNECTIONS: usize = 64;

const HOLD_LUA: &str = r"
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[1]) end
return 1";
const CONFIRM_LUA: &str = r"
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[1] then return 0 end
end
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[2]) end
return 1";
const JOIN_LUA: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], redis.call('INCR', KEYS[2]))
return 1";

pub struct Redis {
    conns: Vec<MultiplexedConnection>,
    next: AtomicUsize,
    hold: redis::Script,
    confirm: redis::Script,
    join: redis::Script,
    tag: String,
    holds: AtomicU64,
    read_slots: u32,
    pub notes: Vec<String>,
}

impl Redis {
    pub async fn setup(url: &str, connections: usize, plan: &Plan) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).with_context(|| format!("bad Redis URL {url}"))?;
        let n = connections.clamp(1, MAX_CONNECTIONS);
        let mut conns = Vec::new();
        for _ in 0..n {
            conns.push(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .with_context(|| format!("connecting to Redis at {url}"))?,
            );
        }
        let durability = check_durability(&mut conns[0]).await?;
        let r = Redis {
            next: AtomicUsize::new(0),
            hold: redis::Script::new(HOLD_LUA),
            confirm: redis::Script::new(CONFIRM_LUA),
            join: redis::Script::new(JOIN_LUA),
            tag: run_tag(),
            holds: AtomicU64::new(1),
            read_slots: plan.read_slots,
            notes: vec![
                format!("{n} multiplexed connections, one Lua script per hold (EVALSHA)"),
                format!("durability: {durability}; single node, no replication"),
            ],
            conns,
        };
        if plan.workload.needs_reads() {
            eprintln!("redis: setting {} keys to read", plan.read_slots);
            let mut c = r.conns[0].clone();
            for slot in 0..plan.read_slots {
                let _: () = redis::cmd("SET")
                    .arg(r.read_key(slot))
                    .arg("held")
                    .query_async(&mut c)
                    .await
                    .context("setting a read key")?;
                progress_every("read keys", slot as usize + 1, plan.read_slots as usize);
            }
        }
        Ok(r)
    }

    fn conn(&self) -> MultiplexedConnection {
        self.conns[self.next.fetch_add(1, Relaxed) % self.conns.len()].clone()
    }

    fn read_key(&self, slot: u32) -> String {
        format!("{}:r:{slot}", self.tag)
    }

    fn seat_keys(&self, perf: u32, seats: &Seats) -> Vec<String> {
        seats
            .as_slice()
            .iter()
            .map(|s| format!("{}:s:{perf}:{s}", self.tag))
            .collect()
    }

    pub async fn exec(&self, op: &Op) -> Outcome {
        match *op {
            Op::Hold { perf, seats, .. } => self.hold(perf, &seats).await.0,
            Op::HoldConfirm { perf, seats, .. } => match self.hold(perf, &seats).await {
                (Outcome::Ok, held) => {
                    let sold = held.replacen("held:", "sold:", 1);
                    let mut inv = self.confirm.prepare_invoke();
                    for k in self.seat_keys(perf, &seats) {
                        inv.key(k);
                    }
                    inv.arg(held).arg(sold);
                    script_outcome(inv.invoke_async(&mut self.conn()).await)
                }
                (o, _) => o,
            },
            Op::Join { room, buyer } => {
                let mut inv = self.join.prepare_invoke();
                inv.key(format!("{}:q:{room}", self.tag))
                    .key(format!("{}:qn:{room}", self.tag))
                    .arg(buyer);
                match script_outcome(inv.invoke_async(&mut self.conn()).await) {
                    Outcome::Conflict => Outcome::ClientError,
                    o => o,
                }
            }
            Op::Read { slot } => {
                let key = self.read_key(slot % self.read_slots.max(1));
                let r: redis::RedisResult<Option<String>> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut self.conn())
                    .await;
                match r {
                    Ok(Some(_)) => Outcome::Ok,
                    Ok(None) => Outcome::ClientError,
                    Err(e) => error_outcome(&e),
                }
            }
        }
    }

    async fn hold(&self, perf: u32, seats: &Seats) -> (Outcome, String) {
        let held = format!("held:{}", self.holds.fetch_add(1, Relaxed));
        let mut inv = self.hold.prepare_invoke();
        for k in self.seat_keys(perf, seats) {
            inv.key(k);
        }
        inv.arg(&held);
        (
            script_outcome(inv.invoke_async(&mut self.conn()).await),
            held,
        )
    }
}

fn script_outcome(r: redis::RedisResult<i64>) -> Outcome {
    match r {
        Ok(1) => Outcome::Ok,
        Ok(_) => Outcome::Conflict,
        Err(e) => error_outcome(&e),
    }
}

fn error_outcome(e: &redis::RedisError) -> Outcome {
    if e.is_timeout() {
        Outcome::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        Outcome::Transport
    } else {
        Outcome::ServerError
    }
}

/// Refuse a server that would answer before the write is fsynced.
async fn check_durability(c: &mut MultiplexedConnection) -> anyhow::Result<String> {
    let mut facts = Vec::new();
    for (setting, want) in [("appendonly", "yes"), ("appendfsync", "always")] {
        let kv: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(setting)
            .query_async(c)
            .await
            .with_context(|| format!("CONFIG GET {setting}"))?;
        let v = kv.get(1).cloned().unwrap_or_default();
        if v != want {
            bail!("Redis runs with {setting} {v}: the comparison needs {setting} {want}");
        }
        facts.push(format!("{setting} {v}"));
    }
    Ok(facts.join(", "))
}
