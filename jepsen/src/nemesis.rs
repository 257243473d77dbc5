//! Nemeses: faults injected on a seeded schedule, alone or combined. Each fault is a band
//! (start, end, what, on whom) in `nemesis.jsonl` and on the timeline.

use crate::cluster::Cluster;
use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const ALL: [&str; 11] = [
    "kill",
    "pause",
    "partition",
    "netem",
    "clock",
    "jump",
    "member",
    "snapshot",
    "wipe",
    "corrupt",
    "transfer",
];
/// Faults that need network namespaces or the proxy.
pub const NEEDS_NAMESPACES: [&str; 2] = ["partition", "netem"];
/// The largest clock offset the clock nemesis gives a node (the checkers' tolerance grows by it).
pub const CLOCK_OFFSET_MAX_MS: i64 = 2_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Band {
    pub fault: String,
    pub detail: String,
    pub start_us: u64,
    pub end_us: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

pub fn parse(list: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for f in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if f == "all" {
            out.extend(ALL.iter().map(|s| s.to_string()));
        } else if f == "none" {
        } else if ALL.contains(&f) {
            out.push(f.to_string());
        } else {
            bail!(
                "unknown nemesis {f:?}: use {} (comma-separated), all or none",
                ALL.join(", ")
            );
        }
    }
    out.dedup();
    Ok(out)
}

pub struct Nemesis {
    pub cluster: Arc<Cluster>,
    pub faults: Vec<String>,
    pub rng: StdRng,
    pub start: Instant,
    pub bands: Vec<Band>,
    pub log: std::fs::File,
    /// The next Raft id for a node that rejoins with a wiped data directory.
    pub next_id: u64,
    /// `corrupt` may also truncate the WAL's tail (`--corrupt-wal`).
    pub corrupt_wal: bool,
}

impl Nemesis {
    pub fn new(
        cluster: Arc<Cluster>,
        faults: Vec<String>,
        seed: u64,
        start: Instant,
        log: std::fs::File,
    ) -> Nemesis {
        let next_id = cluster.len() as u64 + 1;
        Nemesis {
            cluster,
            faults,
            rng: StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321),
            start,
            bands: Vec::new(),
            log,
            next_id,
            corrupt_wal: false,
        }
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Inject faults until `stop`, one at a time: a quiet gap, a fault for a few seconds, heal.
    pub async fn run(&mut self, stop: Arc<AtomicBool>) {
        if self.faults.is_empty() {
            return;
        }
        while !stop.load(Ordering::Relaxed) {
            let quiet = self.rng.random_range(1000..2500);
            if sleep_unless(&stop, Duration::from_millis(quiet)).await {
                break;
            }
            let fault = self.faults[self.rng.random_range(0..self.faults.len())].clone();
            let hold_ms = self.rng.random_range(2000..5000);
            let start_us = self.now_us();
            let (detail, error) = match self.inject(&fault, hold_ms, &stop).await {
                Ok(d) => (d, None),
                Err(e) => (String::new(), Some(format!("{e:#}"))),
            };
            let band = Band {
                fault,
                detail,
                start_us,
                end_us: self.now_us(),
                error,
            };
            println!(
                "  nemesis {:>6.1}s-{:>6.1}s {:<9} {}{}",
                band.start_us as f64 / 1e6,
                band.end_us as f64 / 1e6,
                band.fault,
                band.detail,
                band.error
                    .as_deref()
                    .map(|e| format!(" (error: {e})"))
                    .unwrap_or_default()
            );
            let _ = writeln!(
                self.log,
                "{}",
                serde_json::to_string(&band).unwrap_or_default()
            );
            self.bands.push(band);
            self.restart_exited();
        }
    }

    /// What a supervisor (compose's restart policy, the StatefulSet) does for a node that
    /// exited by itself: start it again on its data. Between faults, so no fault's own stops
    /// and starts are raced.
    fn restart_exited(&mut self) {
        for (slot, status) in self.cluster.exited() {
            println!(
                "  jepsen: node slot {slot} exited by itself ({status}); restarting it, as its supervisor would"
            );
            if let Err(e) = self.cluster.start(slot) {
                println!("  jepsen: restarting node slot {slot} failed: {e:#}");
            }
        }
    }

    fn pick(&mut self, slots: &[usize]) -> usize {
        slots[self.rng.random_range(0..slots.len())]
    }

    async fn leader_or_random(&mut self) -> usize {
        let n = self.cluster.len();
        match self.cluster.leader_slot().await {
            Some(l) => l,
            None => self.rng.random_range(1..=n),
        }
    }

    /// Slots of voters other than the leader.
    async fn followers(&mut self) -> anyhow::Result<Vec<usize>> {
        let s = self
            .cluster
            .admin()
            .with_deadline(Duration::from_secs(5))
            .status()
            .await?;
        let leader = s.leader;
        Ok(s.voters
            .iter()
            .filter(|v| Some(**v) != leader)
            .filter_map(|v| self.cluster.slot_of_id(*v))
            .collect())
    }

    /// Inject one fault, hold it, heal it. Returns what was done.
    async fn inject(
        &mut self,
        fault: &str,
        hold_ms: u64,
        stop: &AtomicBool,
    ) -> anyhow::Result<String> {
        let n = self.cluster.len();
        let all: Vec<usize> = (1..=n).collect();
        let hold = Duration::from_millis(hold_ms);
        let c = self.cluster.clone();
        match fault {
            "kill" => {
                let targets = match self.rng.random_range(0..3) {
                    0 => vec![self.pick(&all)],
                    1 => vec![self.leader_or_random().await],
                    _ => {
                        let mut v = all.clone();
                        for i in (1..v.len()).rev() {
                            v.swap(i, self.rng.random_range(0..=i));
                        }
                        v.truncate(n / 2 + 1);
                        v
                    }
                };
                for &t in &targets {
                    c.kill(t)?;
                }
                sleep_unless(stop, hold).await;
                for &t in &targets {
                    c.start(t)?;
                }
                Ok(format!("kill -9 slots {targets:?}, restarted"))
            }
            "pause" => {
                let t = if self.rng.random_bool(0.5) {
                    self.leader_or_random().await
                } else {
                    self.pick(&all)
                };
                c.pause(t)?;
                sleep_unless(stop, hold).await;
                c.resume(t)?;
                Ok(format!("SIGSTOP/SIGCONT slot {t}"))
            }
            "partition" => {
                let leader = self.leader_or_random().await;
                let mut others: Vec<usize> = all.iter().copied().filter(|s| *s != leader).collect();
                for i in (1..others.len()).rev() {
                    others.swap(i, self.rng.random_range(0..=i));
                }
                let kind = self.rng.random_range(0..4);
                let (a, b, bridge): (Vec<usize>, Vec<usize>, Option<usize>) = match kind {
                    // The leader with a majority.
                    0 => {
                        let k = n / 2;
                        let mut a = vec![leader];
                        a.extend(&others[..k]);
                        (a, others[k..].to_vec(), None)
                    }
                    // The leader in a minority.
                    1 => {
                        let k = (n - 1) / 2 - 1;
                        let mut a = vec![leader];
                        a.extend(&others[..k]);
                        (a, others[k..].to_vec(), None)
                    }
                    // One node alone (not necessarily the leader).
                    2 => {
                        let t = self.pick(&all);
                        (
                            vec![t],
                            all.iter().copied().filter(|s| *s != t).collect(),
                            None,
                        )
                    }
                    // A bridge: two halves that only the bridge node connects.
                    _ => {
                        let bridge = others[0];
                        let rest: Vec<usize> =
                            all.iter().copied().filter(|s| *s != bridge).collect();
                        let half = rest.len() / 2;
                        (rest[..half].to_vec(), rest[half..].to_vec(), Some(bridge))
                    }
                };
                let cut: Vec<(usize, usize)> = a
                    .iter()
                    .flat_map(|x| b.iter().map(move |y| (*x, *y)))
                    .collect();
                c.partition(&cut)?;
                sleep_unless(stop, hold).await;
                c.heal_partition()?;
                let name = ["leader-majority", "leader-minority", "isolated", "bridge"][kind];
                Ok(format!(
                    "{name}: {a:?} | {b:?}{} (leader slot {leader})",
                    bridge
                        .map(|x| format!(" bridged by {x}"))
                        .unwrap_or_default()
                ))
            }
            "netem" => {
                let delay = self.rng.random_range(30..150);
                let loss = self.rng.random_range(0..15);
                let targets = if self.rng.random_bool(0.5) {
                    vec![self.pick(&all)]
                } else {
                    all.clone()
                };
                let mut what = String::new();
                for &t in &targets {
                    what = c.netem(t, delay, delay / 2, loss)?;
                }
                sleep_unless(stop, hold).await;
                c.heal_netem();
                Ok(format!("{what} on slots {targets:?}"))
            }
            "clock" => {
                let t = self.pick(&all);
                let sign = if self.rng.random_bool(0.5) { 1 } else { -1 };
                let offset = sign * self.rng.random_range(300..=CLOCK_OFFSET_MAX_MS);
                c.kill(t)?;
                c.set_slot(t, |s| s.clock_offset_ms = offset);
                c.start(t)?;
                sleep_unless(stop, hold).await;
                c.kill(t)?;
                c.set_slot(t, |s| s.clock_offset_ms = 0);
                c.start(t)?;
                Ok(format!(
                    "slot {t} restarted with its clock {offset:+} ms, then back to 0"
                ))
            }
            "jump" => {
                // A live jump of one node's wall clock (libfaketime), the leader half the time.
                let t = if self.rng.random_bool(0.5) {
                    self.leader_or_random().await
                } else {
                    self.pick(&all)
                };
                let sign = if self.rng.random_bool(0.5) { 1 } else { -1 };
                let offset = sign * self.rng.random_range(300..=CLOCK_OFFSET_MAX_MS);
                c.set_fake_offset(t, offset)?;
                sleep_unless(stop, hold).await;
                c.set_fake_offset(t, 0)?;
                Ok(format!(
                    "slot {t}'s wall clock jumped {offset:+} ms while running (libfaketime), then back"
                ))
            }
            "corrupt" => {
                let f = self.followers().await?;
                if f.is_empty() {
                    bail!("no follower to corrupt");
                }
                let t = self.pick(&f);
                c.kill(t)?;
                let data = c.slot(t).dir.join("data");
                let damage = corrupt_files(&data, &mut self.rng, self.corrupt_wal)?;
                c.start(t)?;
                match self.caught_up(t, Duration::from_secs(25)).await {
                    Ok(()) => {
                        sleep_unless(stop, hold / 2).await;
                        Ok(format!("slot {t}: {damage}; it restarted and caught up"))
                    }
                    Err(why) => {
                        let (old, new) = self.wipe_rejoin(t, stop, hold / 2).await?;
                        Ok(format!(
                            "slot {t}: {damage}; it did not come back ({why:#}), so node {old} was wiped and rejoined as node {new}"
                        ))
                    }
                }
            }
            "member" => {
                let f = self.followers().await?;
                if f.is_empty() {
                    bail!("no follower to remove");
                }
                let t = self.pick(&f);
                let gone = c.slot(t);
                let admin = c.admin().with_deadline(Duration::from_secs(10));
                let voters: Vec<u64> = c
                    .slots()
                    .iter()
                    .map(|s| s.id)
                    .filter(|id| *id != gone.id)
                    .collect();
                admin
                    .change_membership(voters)
                    .await
                    .context("removing a voter")?;
                sleep_unless(stop, hold).await;
                admin
                    .add_learner(gone.id, gone.peer_grpc(), gone.peer_http())
                    .await
                    .context("re-adding it as a learner")?;
                admin
                    .change_membership(c.slots().iter().map(|s| s.id).collect())
                    .await
                    .context("promoting it again")?;
                Ok(format!(
                    "removed node {} (slot {t}) from the voters, re-added it",
                    gone.id
                ))
            }
            "snapshot" => {
                let f = self.followers().await?;
                if f.is_empty() {
                    bail!("no follower to stop");
                }
                let t = self.pick(&f);
                c.kill(t)?;
                sleep_unless(stop, hold / 2).await;
                // Every other node snapshots and purges its log behind it: the stopped node
                // can only catch up by installing a snapshot.
                let mut taken = Vec::new();
                for s in all.iter().filter(|s| **s != t) {
                    let one = client::Client::new([c.node_url(*s)])
                        .with_key(c.admin_key.clone())
                        .with_deadline(Duration::from_secs(5));
                    if let Ok(r) = one.snapshot().await {
                        taken.push((*s, r.applied_index));
                    }
                }
                sleep_unless(stop, hold / 2).await;
                c.start(t)?;
                Ok(format!(
                    "slot {t} stopped while the others snapshotted {taken:?} (slot, index); restarted"
                ))
            }
            "wipe" => {
                let f = self.followers().await?;
                if f.is_empty() {
                    bail!("no follower to wipe");
                }
                let t = self.pick(&f);
                let (old, new_id) = self.wipe_rejoin(t, stop, hold / 2).await?;
                Ok(format!(
                    "slot {t}: node {old} wiped, rejoined as node {new_id}"
                ))
            }
            "transfer" => {
                let f = self.followers().await?;
                if f.is_empty() {
                    bail!("no follower to transfer to");
                }
                let t = self.pick(&f);
                let id = c.slot(t).id;
                c.admin()
                    .with_deadline(Duration::from_secs(5))
                    .transfer_leader(id)
                    .await?;
                sleep_unless(stop, hold).await;
                Ok(format!("leadership transferred to node {id} (slot {t})"))
            }
            other => bail!("unknown nemesis {other}"),
        }
    }
}

impl Nemesis {
    /// Kill a slot, remove it from the membership, delete its data directory, restart it as
    /// a new node id and add it back (learner, then voter). Returns (old id, new id).
    async fn wipe_rejoin(
        &mut self,
        t: usize,
        stop: &AtomicBool,
        wait: Duration,
    ) -> anyhow::Result<(u64, u64)> {
        let c = self.cluster.clone();
        let old = c.slot(t);
        c.kill(t)?;
        let admin = c.admin().with_deadline(Duration::from_secs(10));
        let voters: Vec<u64> = c
            .slots()
            .iter()
            .map(|s| s.id)
            .filter(|id| *id != old.id)
            .collect();
        admin
            .change_membership(voters.clone())
            .await
            .context("removing the wiped node")?;
        let data = old.dir.join("data");
        if data.exists() {
            std::fs::remove_dir_all(&data).context("removing the data directory")?;
        }
        let new_id = self.next_id;
        self.next_id += 1;
        c.set_slot(t, |s| s.id = new_id);
        c.start(t)?;
        c.wait_healthy(t, Duration::from_secs(30)).await?;
        sleep_unless(stop, wait).await;
        let s = c.slot(t);
        admin
            .add_learner(new_id, s.peer_grpc(), s.peer_http())
            .await
            .context("adding the new member")?;
        let mut v = voters;
        v.push(new_id);
        admin
            .change_membership(v)
            .await
            .context("promoting the new member")?;
        Ok((old.id, new_id))
    }

    /// The slot answers /healthz and has applied what the leader had applied when we began.
    async fn caught_up(&self, t: usize, deadline: Duration) -> anyhow::Result<()> {
        let c = &self.cluster;
        let start = Instant::now();
        c.wait_healthy(t, deadline).await?;
        let admin = c.admin().with_deadline(Duration::from_secs(3));
        let id = c.slot(t).id;
        let mut target = None;
        loop {
            if let Ok(s) = admin.status().await {
                let leader_applied = s
                    .nodes
                    .iter()
                    .find(|n| Some(n.id) == s.leader)
                    .map(|n| n.applied_index);
                if target.is_none() {
                    target = leader_applied;
                }
                let mine = s.nodes.iter().find(|n| n.id == id).map(|n| n.applied_index);
                if let (Some(want), Some(have)) = (target, mine)
                    && have >= want
                {
                    return Ok(());
                }
            }
            if !c.running(t) {
                bail!(
                    "it exited: {}",
                    last_line(&c.slot(t).dir.join("ticketd.log"))
                );
            }
            if start.elapsed() > deadline {
                bail!("not caught up within {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The last error-looking line of a log (or its last line).
fn last_line(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(200).collect();
    lines
        .iter()
        .find(|l| l.contains("ERROR") || l.contains("Error") || l.contains("error"))
        .or(lines.first())
        .map(|l| l.chars().take(300).collect())
        .unwrap_or_default()
}

/// Damage a stopped node's files, one of: flip bytes in the newest snapshot, flip bytes in
/// the newest RocksDB table (SST) of the log, truncate the tail of the log's newest WAL, or
/// cut the newest snapshot in half. Returns what was done.
pub fn corrupt_files(
    data: &std::path::Path,
    rng: &mut StdRng,
    wal: bool,
) -> anyhow::Result<String> {
    let newest = |dir: &std::path::Path, pred: &dyn Fn(&str) -> bool| {
        let mut v: Vec<(std::time::SystemTime, std::path::PathBuf)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_str().is_some_and(pred))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .filter(|(_, p)| std::fs::metadata(p).is_ok_and(|m| m.len() > 64))
            .collect();
        v.sort();
        v.pop().map(|x| x.1)
    };
    let snap = newest(&data.join("snapshots"), &|n| {
        n.starts_with("snap-") && n.ends_with(".bin")
    });
    let sst = newest(&data.join("log"), &|n| n.ends_with(".sst"));
    let wal_file = newest(&data.join("log"), &|n| n.ends_with(".log"));
    let mut choices: Vec<u8> = Vec::new();
    if snap.is_some() {
        choices.extend([0, 3]);
    }
    if sst.is_some() {
        choices.push(1);
    }
    // A truncated WAL loses log entries the node had acknowledged (fsync'd): a disk that lies.
    // openraft's leader then panics on the follower's log reversion (see jepsen/README.md),
    // so this one is opt-in.
    let wal = wal.then_some(wal_file).flatten();
    if wal.is_some() {
        choices.push(2);
    }
    if choices.is_empty() {
        bail!(
            "no snapshot, table or WAL file to damage in {}",
            data.display()
        );
    }
    let what = choices[rng.random_range(0..choices.len())];
    let flip = |path: &std::path::Path, rng: &mut StdRng| -> anyhow::Result<String> {
        let mut bytes = std::fs::read(path)?;
        let n = bytes.len();
        let at = rng.random_range(n / 4..n - 16);
        for b in &mut bytes[at..at + 16] {
            *b ^= 0x5a;
        }
        std::fs::write(path, &bytes)?;
        Ok(format!(
            "flipped 16 bytes at offset {at} of {} ({n} bytes)",
            path.display()
        ))
    };
    let truncate = |path: &std::path::Path, keep: u64| -> anyhow::Result<String> {
        let len = std::fs::metadata(path)?.len();
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(keep)?;
        f.sync_all()?;
        Ok(format!(
            "truncated {} from {len} to {keep} bytes",
            path.display()
        ))
    };
    match (what, snap, sst, wal) {
        (0, Some(p), _, _) => flip(&p, rng),
        (3, Some(p), _, _) => {
            let len = std::fs::metadata(&p)?.len();
            truncate(&p, len / 2)
        }
        (1, _, Some(p), _) => flip(&p, rng),
        (2, _, _, Some(p)) => {
            let len = std::fs::metadata(&p)?.len();
            let cut = rng.random_range(1..=(len / 2).clamp(1, 4096));
            truncate(&p, len - cut)
        }
        _ => bail!("no file of the chosen kind"),
    }
}

/// Sleep, waking early when `stop` is set; `true` if it was.
async fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50).min(end - Instant::now())).await;
    }
    stop.load(Ordering::Relaxed)
}

/// After the run: every fault healed, every slot running and a voter.
pub async fn heal_everything(c: &Cluster) -> anyhow::Result<()> {
    c.heal_all()?;
    // A node whose Raft core stopped (a panic in openraft) exits by itself since ticketd
    // watches its core, so it is started below like any stopped node.
    for s in 1..=c.len() {
        let _ = c.set_fake_offset(s, 0);
        if !c.running(s) {
            c.start(s)?;
        }
        if c.slot(s).clock_offset_ms != 0 {
            c.kill(s)?;
            c.set_slot(s, |x| x.clock_offset_ms = 0);
            c.start(s)?;
        }
    }
    for s in 1..=c.len() {
        if let Err(e) = c.wait_healthy(s, Duration::from_secs(30)).await {
            if c.running(s) {
                return Err(e);
            }
            // It refuses to start on its data (the corrupt nemesis's damage): rejoin it wiped,
            // as a new member.
            let old = c.slot(s);
            let new_id = c.slots().iter().map(|x| x.id).max().unwrap_or(0) + 1;
            println!(
                "jepsen: node slot {s} refuses to start ({}); wiping it, it rejoins as node {new_id}",
                last_line(&old.dir.join("ticketd.log"))
            );
            let voters: Vec<u64> = c
                .slots()
                .iter()
                .map(|x| x.id)
                .filter(|id| *id != old.id)
                .collect();
            c.admin()
                .with_deadline(Duration::from_secs(20))
                .change_membership(voters)
                .await
                .context("removing the node that refuses to start")?;
            let data = old.dir.join("data");
            if data.exists() {
                std::fs::remove_dir_all(&data)?;
            }
            c.set_slot(s, |x| x.id = new_id);
            c.start(s)?;
            c.wait_healthy(s, Duration::from_secs(30)).await?;
        }
    }
    c.wait_leader(Duration::from_secs(30)).await?;
    let admin = c.admin().with_deadline(Duration::from_secs(30));
    let st = admin.status().await?;
    let want: Vec<u64> = c.slots().iter().map(|s| s.id).collect();
    let mut have = st.voters.clone();
    have.sort_unstable();
    let mut want_sorted = want.clone();
    want_sorted.sort_unstable();
    if have != want_sorted {
        for s in c.slots() {
            if !st.voters.contains(&s.id) {
                admin
                    .add_learner(s.id, s.peer_grpc(), s.peer_http())
                    .await
                    .context("restoring a member")?;
            }
        }
        admin
            .change_membership(want)
            .await
            .context("restoring the voters")?;
    }
    Ok(())
}
