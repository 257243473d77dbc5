//! The cluster under test: real `ticketd` processes, each in its own network namespace on a
//! bridge (so partitions are packet loss made with iptables and slow links are `tc netem`),
//! or, without root, on loopback (kill, pause and clock faults only).
//!
//! Layout of one run's namespaces (`jp<k>` is a free prefix): a switch namespace `jp<k>-sw`
//! holds the bridge `br0`; node slot `i` lives in `jp<k>-n<i>` on `eth0` = 10.231.k.(10+i);
//! the harness reaches the bridge from the root namespace over `jp<k>h` = 10.231.k.1. The
//! root namespace's firewall is never touched (the bridge forwards inside its own namespace).

use anyhow::{Context, anyhow, bail};
use client::Client;
use std::collections::{BTreeSet, HashMap};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How node slots reach each other.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Net {
    /// Network namespaces with the prefix `jp<k>`.
    Namespaces { k: u8 },
    /// Loopback addresses, no network faults (`--loopback`).
    Loopback,
    /// Each node on `127.0.0.(10+slot)` behind the fault-injecting TCP proxy (not root, or
    /// `JEPSEN_NO_NETNS=1`).
    Proxy,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Slot {
    /// 1-based slot number: stays when the node is replaced by a new member.
    pub slot: usize,
    /// The Raft node id now in this slot (a wiped node rejoins with a new id).
    pub id: u64,
    pub ip: String,
    pub http: String,
    pub grpc: String,
    pub dir: PathBuf,
    pub clock_offset_ms: i64,
    /// Proxy mode: the (gRPC, HTTP) addresses peers use, the proxy's in front of this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<(String, String)>,
}

impl Slot {
    /// The gRPC address other nodes reach this one at (the membership's).
    pub fn peer_grpc(&self) -> &str {
        self.advertise.as_ref().map_or(&self.grpc, |a| &a.0)
    }

    pub fn peer_http(&self) -> &str {
        self.advertise.as_ref().map_or(&self.http, |a| &a.1)
    }
}

pub struct Cluster {
    pub net: Net,
    pub ticketd: PathBuf,
    pub admin_key: String,
    pub extra_args: Vec<String>,
    slots: Mutex<Vec<Slot>>,
    children: Mutex<HashMap<usize, Child>>,
    paused: Mutex<BTreeSet<usize>>,
    /// When each slot's process was started (for the stale-read checker: a restarted node
    /// may serve older state than before).
    starts: Mutex<Vec<(usize, Instant)>>,
    /// libfaketime, preloaded into every node when the `jump` nemesis runs: each node's
    /// wall clock is its real one plus the offset in its `faketime` file, changeable live.
    faketime: Mutex<Option<PathBuf>>,
    proxy: Option<crate::proxy::Proxy>,
    /// Set by the first teardown: later ones (on drop) must not touch a prefix that another
    /// harness may have taken meanwhile.
    torn_down: std::sync::atomic::AtomicBool,
}

/// Every namespace prefix this harness may use; `jepsen cleanup` removes them all.
pub const PREFIXES: u8 = 8;
const HEALTHY_DEADLINE: Duration = Duration::from_secs(30);

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Run a command, failing with its stderr.
pub fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ns_names() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Install iproute2 and iptables from apt when a tool is missing (printing what is installed).
pub fn ensure_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("iptables", "iptables"),
    ]
    .iter()
    .filter(|(bin, _)| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
    })
    .map(|(_, pkg)| *pkg)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "jepsen: installing {} from apt (needed for namespaces and faults)",
        missing.join(" ")
    );
    let mut args = vec!["apt-get", "install", "-y"];
    args.extend(missing.iter().copied());
    sh(&args)
}

/// Remove every namespace of every prefix, killing the processes inside them first.
/// The file naming the harness process that owns prefix `k` (so that two harnesses on one
/// machine never take, or clean up, each other's namespaces).
fn owner_file(k: u8) -> PathBuf {
    PathBuf::from(format!("/run/jepsen-jp{k}.pid"))
}

/// Prefix `k` belongs to a harness that is still running (not this one).
fn owned_by_live_harness(k: u8) -> bool {
    std::fs::read_to_string(owner_file(k))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .is_some_and(|pid| pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists())
}

/// Take prefix `k` for this process: create its owner file exclusively (a stale one, of a
/// dead harness, is replaced).
fn claim(k: u8) -> bool {
    let path = owner_file(k);
    let write = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| {
                use std::io::Write;
                write!(f, "{}", std::process::id())
            })
    };
    if write().is_ok() {
        return true;
    }
    if owned_by_live_harness(k) {
        return false;
    }
    let _ = std::fs::remove_file(&path);
    write().is_ok()
}

/// Remove every namespace of every prefix no running harness owns, killing the processes
/// inside them first.
pub fn cleanup_all() -> usize {
    let mut removed = 0;
    for name in ns_names() {
        let prefix = name
            .strip_prefix("jp")
            .and_then(|r| r.split_once('-'))
            .and_then(|(k, _)| k.parse::<u8>().ok())
            .filter(|k| *k < PREFIXES);
        let Some(k) = prefix else {
            continue;
        };
        if owned_by_live_harness(k) {
            println!("jepsen: leaving {name}: a running harness owns it");
            continue;
        }
        kill_ns_pids(&name);
        if sh(&["ip", "netns", "del", &name]).is_ok() {
            removed += 1;
        }
    }
    for k in (0..PREFIXES).filter(|k| !owned_by_live_harness(*k)) {
        let _ = sh(&["ip", "link", "del", &format!("jp{k}h")]);
        let _ = std::fs::remove_file(owner_file(k));
    }
    removed
}

/// KILL the processes in a namespace this harness made (they are ours by construction).
fn kill_ns_pids(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = sh(&["kill", "-CONT", pid]);
        let _ = sh(&["kill", "-KILL", pid]);
    }
}

impl Cluster {
    /// Make the network and the slots (nothing is started yet).
    pub fn create(
        dir: &Path,
        n: usize,
        ticketd: PathBuf,
        extra_args: Vec<String>,
        loopback: bool,
    ) -> anyhow::Result<Cluster> {
        let no_netns = std::env::var("JEPSEN_NO_NETNS").is_ok_and(|v| v == "1");
        let net = if loopback {
            Net::Loopback
        } else if no_netns || !is_root() {
            println!(
                "jepsen: {}: no network namespaces; nodes run on 127.0.0.x behind the fault-injecting TCP proxy",
                if no_netns {
                    "JEPSEN_NO_NETNS=1"
                } else {
                    "not root"
                }
            );
            Net::Proxy
        } else {
            ensure_tools()?;
            let taken = ns_names();
            let k = (0..PREFIXES)
                .find(|k| {
                    !owned_by_live_harness(*k)
                        && !taken.iter().any(|t| t.starts_with(&format!("jp{k}-")))
                        && claim(*k)
                })
                .ok_or_else(|| {
                    anyhow!("all {PREFIXES} namespace prefixes are in use: run `jepsen cleanup`")
                })?;
            Net::Namespaces { k }
        };
        let ports = client::dev::free_ports(4 * n)?;
        let mut slots = Vec::new();
        for i in 1..=n {
            let (ip, http, grpc) = match &net {
                Net::Namespaces { k } => {
                    let ip = format!("10.231.{k}.{}", 10 + i);
                    (ip.clone(), format!("{ip}:8080"), format!("{ip}:9090"))
                }
                Net::Loopback => (
                    "127.0.0.1".to_string(),
                    format!("127.0.0.1:{}", ports[4 * (i - 1)]),
                    format!("127.0.0.1:{}", ports[4 * (i - 1) + 1]),
                ),
                Net::Proxy => {
                    let ip = format!("127.0.0.{}", 10 + i);
                    (
                        ip.clone(),
                        format!("{ip}:{}", ports[4 * (i - 1)]),
                        format!("{ip}:{}", ports[4 * (i - 1) + 1]),
                    )
                }
            };
            let advertise = matches!(net, Net::Proxy).then(|| {
                (
                    format!("{ip}:{}", ports[4 * (i - 1) + 2]),
                    format!("{ip}:{}", ports[4 * (i - 1) + 3]),
                )
            });
            let sdir = dir.join("nodes").join(format!("n{i}"));
            std::fs::create_dir_all(&sdir)?;
            slots.push(Slot {
                slot: i,
                id: i as u64,
                ip,
                http,
                grpc,
                dir: sdir,
                clock_offset_ms: 0,
                advertise,
            });
        }
        let cluster = Cluster {
            net: net.clone(),
            ticketd,
            admin_key: format!("jepsen-admin-{}", client::new_idempotency_key()),
            extra_args,
            slots: Mutex::new(slots),
            children: Mutex::new(HashMap::new()),
            paused: Mutex::new(BTreeSet::new()),
            starts: Mutex::new(Vec::new()),
            faketime: Mutex::new(None),
            proxy: matches!(net, Net::Proxy).then(crate::proxy::Proxy::default),
            torn_down: std::sync::atomic::AtomicBool::new(false),
        };
        if let Some(p) = &cluster.proxy {
            for s in cluster.slots() {
                let (g, h) = s.advertise.clone().expect("proxy slots advertise");
                let parse = |a: &str| -> anyhow::Result<std::net::SocketAddr> {
                    a.parse().with_context(|| format!("address {a}"))
                };
                p.serve(parse(&g)?, parse(&s.grpc)?, s.slot)?;
                p.serve(parse(&h)?, parse(&s.http)?, s.slot)?;
            }
        }
        if let Net::Namespaces { k } = cluster.net {
            cluster.make_namespaces(k, n)?;
        }
        Ok(cluster)
    }

    fn make_namespaces(&self, k: u8, n: usize) -> anyhow::Result<()> {
        let sw = format!("jp{k}-sw");
        let host = format!("jp{k}h");
        sh(&["ip", "netns", "add", &sw])?;
        let in_sw = |args: &[&str]| {
            let mut a = vec!["ip", "netns", "exec", sw.as_str()];
            a.extend_from_slice(args);
            sh(&a)
        };
        in_sw(&["ip", "link", "set", "lo", "up"])?;
        in_sw(&["ip", "link", "add", "br0", "type", "bridge"])?;
        in_sw(&["ip", "link", "set", "br0", "up"])?;
        sh(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", "host", "netns", &sw,
        ])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.231.{k}.1/24"),
            "dev",
            &host,
        ])?;
        sh(&["ip", "link", "set", &host, "up"])?;
        in_sw(&["ip", "link", "set", "dev", "host", "master", "br0"])?;
        in_sw(&["ip", "link", "set", "dev", "host", "up"])?;
        for i in 1..=n {
            let ns = format!("jp{k}-n{i}");
            let port = format!("n{i}");
            sh(&["ip", "netns", "add", &ns])?;
            sh(&[
                "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ])?;
            in_sw(&["ip", "link", "set", &port, "master", "br0"])?;
            in_sw(&["ip", "link", "set", &port, "up"])?;
            let addr = format!("10.231.{k}.{}/24", 10 + i);
            for args in [
                vec!["ip", "link", "set", "lo", "up"],
                vec!["ip", "addr", "add", addr.as_str(), "dev", "eth0"],
                vec!["ip", "link", "set", "eth0", "up"],
            ] {
                let mut a = vec!["ip", "netns", "exec", ns.as_str()];
                a.extend(args);
                sh(&a)?;
            }
        }
        Ok(())
    }

    pub fn namespaced(&self) -> bool {
        matches!(self.net, Net::Namespaces { .. })
    }

    /// Partitions and slow links can be made (namespaces or the proxy).
    pub fn network_faults(&self) -> bool {
        !matches!(self.net, Net::Loopback)
    }

    fn ns(&self, slot: usize) -> Option<String> {
        match self.net {
            Net::Namespaces { k } => Some(format!("jp{k}-n{slot}")),
            Net::Loopback | Net::Proxy => None,
        }
    }

    fn in_ns(&self, slot: usize, args: &[&str]) -> anyhow::Result<()> {
        let ns = self
            .ns(slot)
            .ok_or_else(|| anyhow!("network faults need namespaces (root)"))?;
        let mut a = vec!["ip", "netns", "exec", ns.as_str()];
        a.extend_from_slice(args);
        sh(&a)
    }

    pub fn slots(&self) -> Vec<Slot> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn slot(&self, slot: usize) -> Slot {
        self.slots()[slot - 1].clone()
    }

    pub fn len(&self) -> usize {
        self.slots().len()
    }

    pub fn slot_of_id(&self, id: u64) -> Option<usize> {
        self.slots().iter().find(|s| s.id == id).map(|s| s.slot)
    }

    pub fn set_slot(&self, slot: usize, f: impl FnOnce(&mut Slot)) {
        let mut g = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g[slot - 1]);
    }

    /// A client of every node with the admin key.
    pub fn admin(&self) -> Client {
        Client::new(self.slots().iter().map(|s| s.http.clone())).with_key(self.admin_key.clone())
    }

    pub fn node_url(&self, slot: usize) -> String {
        self.slot(slot).http
    }

    /// Start the process of one slot on its data directory.
    pub fn start(&self, slot: usize) -> anyhow::Result<()> {
        let s = self.slot(slot);
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = children.get_mut(&slot)
            && matches!(c.try_wait(), Ok(None))
        {
            bail!("node slot {slot} is already running");
        }
        let data = s.dir.join("data");
        std::fs::create_dir_all(&data)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(s.dir.join("ticketd.log"))?;
        let mut cmd = match self.ns(slot) {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns]).arg(&self.ticketd);
                c
            }
            None => Command::new(&self.ticketd),
        };
        cmd.args(["--id", &s.id.to_string(), "--data-dir"])
            .arg(&data)
            .args(["--http-addr", &s.http, "--grpc-addr", &s.grpc])
            .args(&self.extra_args);
        if let Some((g, h)) = &s.advertise {
            cmd.args(["--advertise-grpc", g, "--advertise-http", h]);
        }
        if s.clock_offset_ms != 0 {
            cmd.arg(format!("--clock-offset-ms={}", s.clock_offset_ms));
        }
        if let Some(lib) = self
            .faketime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            let file = s.dir.join("faketime");
            if !file.exists() {
                std::fs::write(&file, "+0\n")?;
            }
            // Only the wall clock moves: timers (monotonic) stay true, as with an NTP step.
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME_TIMESTAMP_FILE", &file)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_CACHE_DURATION", "1");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.ticketd.display()))?;
        if let Some(p) = &self.proxy {
            p.set_pid(slot, Some(child.id()));
        }
        children.insert(slot, child);
        self.starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((slot, Instant::now()));
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&slot);
        Ok(())
    }

    fn pid(&self, slot: usize) -> Option<u32> {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        let c = children.get_mut(&slot)?;
        matches!(c.try_wait(), Ok(None)).then(|| c.id())
    }

    /// Preload libfaketime into every node started from now on (installing it from apt when
    /// missing). Returns the library's path.
    pub fn enable_faketime(&self) -> anyhow::Result<PathBuf> {
        let find = || {
            [
                "/usr/lib/x86_64-linux-gnu",
                "/usr/lib/aarch64-linux-gnu",
                "/usr/lib",
            ]
            .iter()
            .map(|d| PathBuf::from(d).join("faketime/libfaketimeMT.so.1"))
            .find(|p| p.is_file())
        };
        let lib = match find() {
            Some(l) => l,
            None => {
                if !is_root() {
                    bail!("libfaketime is not installed (apt-get install libfaketime, as root)");
                }
                println!("jepsen: installing libfaketime from apt (for the jump nemesis)");
                sh(&["apt-get", "install", "-y", "libfaketime"])?;
                find().ok_or_else(|| anyhow!("libfaketime installed but not found"))?
            }
        };
        *self.faketime.lock().unwrap_or_else(|e| e.into_inner()) = Some(lib.clone());
        Ok(lib)
    }

    /// Jump one node's wall clock to real time + `offset_ms`, live (libfaketime re-reads
    /// the file within a second).
    pub fn set_fake_offset(&self, slot: usize, offset_ms: i64) -> anyhow::Result<()> {
        if self
            .faketime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            bail!("libfaketime is not preloaded");
        }
        let s = self.slot(slot);
        let tmp = s.dir.join("faketime.tmp");
        std::fs::write(&tmp, format!("{:+.3}\n", offset_ms as f64 / 1000.0))?;
        std::fs::rename(&tmp, s.dir.join("faketime"))?;
        Ok(())
    }

    /// (slot, µs after `t0`) of every process start since `t0`.
    pub fn starts_since(&self, t0: Instant) -> Vec<(usize, u64)> {
        self.starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, at)| *at >= t0)
            .map(|(s, at)| (*s, (*at - t0).as_micros() as u64))
            .collect()
    }

    /// Slots whose process exited by itself, with how: `kill` forgets the processes it kills,
    /// so these are exits the harness did not ask for (ticketd exits when its Raft core
    /// stops, or refuses to start on damaged data).
    pub fn exited(&self) -> Vec<(usize, std::process::ExitStatus)> {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = children
            .iter_mut()
            .filter_map(|(s, c)| Some((*s, c.try_wait().ok().flatten()?)))
            .collect();
        out.sort_unstable_by_key(|(s, _)| *s);
        out
    }

    pub fn running(&self, slot: usize) -> bool {
        self.pid(slot).is_some()
    }

    /// `kill -9` and reap.
    pub fn kill(&self, slot: usize) -> anyhow::Result<()> {
        let Some(pid) = self.pid(slot) else {
            return Ok(());
        };
        let _ = sh(&["kill", "-KILL", &pid.to_string()]);
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = children.remove(&slot) {
            let _ = c.wait();
        }
        if let Some(p) = &self.proxy {
            p.set_pid(slot, None);
        }
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&slot);
        Ok(())
    }

    pub fn pause(&self, slot: usize) -> anyhow::Result<()> {
        let pid = self
            .pid(slot)
            .ok_or_else(|| anyhow!("slot {slot} is not running"))?;
        sh(&["kill", "-STOP", &pid.to_string()])?;
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot);
        Ok(())
    }

    pub fn resume(&self, slot: usize) -> anyhow::Result<()> {
        if let Some(pid) = self.pid(slot) {
            sh(&["kill", "-CONT", &pid.to_string()])?;
        }
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&slot);
        Ok(())
    }

    /// Drop every packet between the two slots of each pair (both directions).
    pub fn partition(&self, cut: &[(usize, usize)]) -> anyhow::Result<()> {
        if let Some(p) = &self.proxy {
            p.partition(cut);
            return Ok(());
        }
        for &(a, b) in cut {
            for (from, to) in [(a, b), (b, a)] {
                let peer = self.slot(to).ip;
                self.in_ns(
                    from,
                    &["iptables", "-w", "-A", "INPUT", "-s", &peer, "-j", "DROP"],
                )?;
                self.in_ns(
                    from,
                    &["iptables", "-w", "-A", "OUTPUT", "-d", &peer, "-j", "DROP"],
                )?;
            }
        }
        Ok(())
    }

    pub fn heal_partition(&self) -> anyhow::Result<()> {
        if let Some(p) = &self.proxy {
            p.heal_partition();
        }
        if !self.namespaced() {
            return Ok(());
        }
        for s in 1..=self.len() {
            self.in_ns(s, &["iptables", "-w", "-F", "INPUT"])?;
            self.in_ns(s, &["iptables", "-w", "-F", "OUTPUT"])?;
        }
        Ok(())
    }

    /// Delay, jitter (which reorders) and loss on everything one slot sends, with `tc netem`.
    /// A kernel without `sch_netem` gets the closest this harness can make: a slow link
    /// (`tbf` at 2 Mbit/s with up to `delay_ms` of queueing) and random loss by iptables.
    /// Returns what was applied.
    pub fn netem(
        &self,
        slot: usize,
        delay_ms: u32,
        jitter_ms: u32,
        loss_pct: u32,
    ) -> anyhow::Result<String> {
        if let Some(p) = &self.proxy {
            p.slow(slot, delay_ms, jitter_ms, loss_pct);
            return Ok(format!(
                "proxy: delay {delay_ms}ms±{jitter_ms}ms, {loss_pct}% of chunks held {} ms (loss)",
                crate::proxy::LOSS_PENALTY_MS
            ));
        }
        let (d, j, l) = (
            format!("{delay_ms}ms"),
            format!("{jitter_ms}ms"),
            format!("{loss_pct}%"),
        );
        let netem = self.in_ns(
            slot,
            &[
                "tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &d, &j, "loss",
                &l,
            ],
        );
        match netem {
            Ok(()) => Ok(format!("netem delay {d}±{j} loss {l}")),
            Err(e) if e.to_string().contains("unknown") => {
                let latency = format!("{}ms", delay_ms.max(50));
                self.in_ns(
                    slot,
                    &[
                        "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "2mbit",
                        "burst", "16kbit", "latency", &latency,
                    ],
                )?;
                let p = format!("{:.3}", f64::from(loss_pct) / 100.0);
                for chain in ["INPUT", "OUTPUT"] {
                    self.in_ns(
                        slot,
                        &[
                            "iptables",
                            "-w",
                            "-A",
                            chain,
                            "-m",
                            "statistic",
                            "--mode",
                            "random",
                            "--probability",
                            &p,
                            "-j",
                            "DROP",
                        ],
                    )?;
                }
                Ok(format!(
                    "no sch_netem in this kernel: tbf 2mbit (queueing up to {latency}) and {l} random loss"
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// Remove every slot's qdisc and loss rules (faults run one at a time, so the firewall
    /// rules flushed here are the loss rules).
    pub fn heal_netem(&self) {
        if let Some(p) = &self.proxy {
            p.heal_slow();
        }
        if !self.namespaced() {
            return;
        }
        for s in 1..=self.len() {
            let _ = self.in_ns(s, &["tc", "qdisc", "del", "dev", "eth0", "root"]);
        }
        let _ = self.heal_partition();
    }

    /// Wait until a slot answers /healthz.
    pub async fn wait_healthy(&self, slot: usize, deadline: Duration) -> anyhow::Result<()> {
        let c = Client::new([self.node_url(slot)]).with_deadline(Duration::from_secs(1));
        let start = Instant::now();
        loop {
            if let Ok((st, _)) = c.raw(0, reqwest::Method::GET, "/healthz", None).await
                && st.is_success()
            {
                return Ok(());
            }
            if !self.running(slot) {
                bail!(
                    "node slot {slot} exited; see {}",
                    self.slot(slot).dir.join("ticketd.log").display()
                );
            }
            if start.elapsed() > deadline {
                bail!("node slot {slot} did not answer /healthz within {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The leader every answering node agrees on, within the deadline.
    pub async fn wait_leader(&self, deadline: Duration) -> anyhow::Result<u64> {
        let start = Instant::now();
        let c = self.admin().with_deadline(Duration::from_secs(2));
        loop {
            if let Ok(s) = c.status().await
                && let Some(l) = s.leader
            {
                return Ok(l);
            }
            if start.elapsed() > deadline {
                bail!("no leader within {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Start every slot, initialize on slot 1, add the others as learners and promote them.
    pub async fn bootstrap(&self) -> anyhow::Result<()> {
        for s in 1..=self.len() {
            self.start(s)?;
        }
        for s in 1..=self.len() {
            self.wait_healthy(s, HEALTHY_DEADLINE).await?;
        }
        let first = Client::new([self.node_url(1)])
            .with_key(self.admin_key.clone())
            .with_deadline(Duration::from_secs(20));
        first
            .init(&self.admin_key)
            .await
            .context("initializing the cluster")?;
        self.wait_leader(Duration::from_secs(20)).await?;
        let admin = self.admin().with_deadline(Duration::from_secs(30));
        for s in self.slots().iter().skip(1) {
            admin
                .add_learner(s.id, s.peer_grpc(), s.peer_http())
                .await
                .with_context(|| format!("adding node {} as a learner", s.id))?;
        }
        admin
            .change_membership(self.slots().iter().map(|s| s.id).collect())
            .await
            .context("promoting the learners")?;
        self.wait_leader(Duration::from_secs(20)).await?;
        Ok(())
    }

    /// The current leader's slot, if the cluster names one.
    pub async fn leader_slot(&self) -> Option<usize> {
        let s = self
            .admin()
            .with_deadline(Duration::from_secs(2))
            .status()
            .await
            .ok()?;
        self.slot_of_id(s.leader?)
    }

    /// Heal everything: resume paused nodes, start stopped ones, drop partitions and netem.
    pub fn heal_all(&self) -> anyhow::Result<()> {
        let paused: Vec<usize> = self
            .paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        for s in paused {
            self.resume(s)?;
        }
        self.heal_partition()?;
        self.heal_netem();
        Ok(())
    }

    /// Kill every process and remove the namespaces (also run on drop).
    pub fn teardown(&self) {
        if self
            .torn_down
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        for s in 1..=self.len() {
            let _ = self.resume(s);
            let _ = self.kill(s);
        }
        if let Some(p) = &self.proxy {
            p.shutdown();
        }
        if let Net::Namespaces { k } = self.net {
            for name in ns_names() {
                if name.starts_with(&format!("jp{k}-")) {
                    kill_ns_pids(&name);
                    let _ = sh(&["ip", "netns", "del", &name]);
                }
            }
            let _ = sh(&["ip", "link", "del", &format!("jp{k}h")]);
            let _ = std::fs::remove_file(owner_file(k));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}
