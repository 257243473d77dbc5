//! A local development cluster of real `ticketd` processes (DESIGN.md §7): data under
//! `DIR/<id>/`, pid in `DIR/<id>/ticketd.pid`, logs in `DIR/<id>/ticketd.log`, launch
//! arguments in `DIR/cluster.json` so a node can be restarted on the same data.

use crate::Client;
use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevNode {
    pub id: u64,
    pub http: String,
    pub grpc: String,
    /// Extra ticketd flags (tests use them for short timeouts and snapshot policy).
    #[serde(default)]
    pub extra_args: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevCluster {
    pub dir: PathBuf,
    pub ticketd: PathBuf,
    pub admin_key: String,
    pub nodes: Vec<DevNode>,
    /// Run every node with TLS (`--tls-cert`, `--tls-key`, `--tls-ca`): the node URLs are
    /// then `https://` and this cluster's clients trust only that CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<DevTls>,
}

/// PEM files for a TLS dev cluster: one CA, and one certificate (valid for 127.0.0.1, with
/// both the serverAuth and clientAuth usages) that every node serves and presents to peers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A free loopback port (bound and released; another process may take it before ticketd
/// binds it, which shows as a node that does not become healthy, with its log's bind error).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `k` distinct free loopback ports: all are held until all are chosen, so they differ.
pub fn free_ports(k: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..k)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// The `k` ports from `base` on, each checked free now.
fn ports_from(base: u16, k: usize) -> anyhow::Result<Vec<u16>> {
    (0..k)
        .map(|i| {
            let port = u16::try_from(base as usize + i)
                .map_err(|_| anyhow!("--base-port {base} + {i} is past 65535"))?;
            std::net::TcpListener::bind(("127.0.0.1", port))
                .with_context(|| format!("port {port} (from --base-port {base}) is taken"))?;
            Ok(port)
        })
        .collect()
}

/// Signals `ticketctl dev kill` may send.
pub const SIGNALS: [&str; 4] = ["KILL", "STOP", "CONT", "TERM"];
/// How long `down` and `signal TERM` wait for a graceful exit before KILL.
const TERM_GRACE: Duration = Duration::from_secs(10);
const HEALTHY_DEADLINE: Duration = Duration::from_secs(30);
const LEADER_DEADLINE: Duration = Duration::from_secs(20);

/// `ticketd` next to this executable, else `$TICKETD_BIN`, else on PATH.
pub fn find_ticketd() -> anyhow::Result<PathBuf> {
    find_binary("ticketd", "TICKETD_BIN")
}

/// The binary `name`: `$env` if set, else next to this executable (tests run from
/// target/debug/deps, binaries are in target/debug), else `name` on PATH.
pub fn find_binary(name: &str, env: &str) -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Ok(PathBuf::from(name))
}

/// The processes this process started, by pid: kept so that an early exit can be reported
/// with its status (and the exited child reaped), which a pid file alone cannot tell.
static CHILDREN: std::sync::Mutex<Vec<std::process::Child>> = std::sync::Mutex::new(Vec::new());

/// How a process this process started ended, if it has (`None` if it runs or is not ours).
fn exit_status(pid: i32) -> Option<std::process::ExitStatus> {
    let mut children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let child = children.iter_mut().find(|c| c.id() as i32 == pid)?;
    child.try_wait().ok().flatten()
}

/// Whether a process this process started still runs (`None` if it is not ours).
fn child_running(pid: i32) -> Option<bool> {
    let mut children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let child = children.iter_mut().find(|c| c.id() as i32 == pid)?;
    Some(matches!(child.try_wait(), Ok(None)))
}

fn pid_file(dir: &Path, id: u64) -> PathBuf {
    dir.join(id.to_string()).join("ticketd.pid")
}

impl DevCluster {
    pub fn load(dir: &Path) -> anyhow::Result<DevCluster> {
        let text = std::fs::read_to_string(dir.join("cluster.json")).with_context(|| {
            format!(
                "no dev cluster in {} (run `ticketctl dev up --dir {}`)",
                dir.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text).context("reading cluster.json")
    }

    fn save(&self) -> anyhow::Result<()> {
        std::fs::write(
            self.dir.join("cluster.json"),
            serde_json::to_vec_pretty(self)?,
        )
        .context("writing cluster.json")
    }

    pub fn node(&self, id: u64) -> anyhow::Result<&DevNode> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| anyhow!("no node {id} in this dev cluster"))
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// A node's HTTP base URL (`https://` under TLS).
    pub fn http_url(&self, node: &DevNode) -> String {
        format!("{}://{}", self.scheme(), node.http)
    }

    /// A node's gRPC URL (`https://` under TLS).
    pub fn grpc_url(&self, node: &DevNode) -> String {
        format!("{}://{}", self.scheme(), node.grpc)
    }

    /// Every node's HTTP base URL.
    pub fn http_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| self.http_url(n)).collect()
    }

    /// A client of these URLs with no key, trusting this cluster's CA under TLS.
    pub fn client_of(&self, urls: Vec<String>) -> Client {
        let c = Client::new(urls);
        match &self.tls {
            None => c,
            Some(t) => {
                let pem = std::fs::read(&t.ca).unwrap_or_default();
                c.with_ca_cert(&pem)
                    .unwrap_or_else(|e| panic!("the dev cluster's CA {}: {e}", t.ca.display()))
            }
        }
    }

    /// A client for every node, with the admin key.
    pub fn client(&self) -> Client {
        self.client_of(self.http_urls())
            .with_key(self.admin_key.clone())
    }

    /// A client that talks to one node only.
    pub fn node_client(&self, id: u64) -> anyhow::Result<Client> {
        let url = self.http_url(self.node(id)?);
        Ok(self.client_of(vec![url]).with_key(self.admin_key.clone()))
    }

    /// The pid of node `id`'s running process: the pid file's, and only while that process
    /// is alive and is a ticketd on this node's data directory (a stale pid file, or a pid
    /// reused by another program, gives `None`, so nothing else is ever signalled).
    pub fn pid(&self, id: u64) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(pid_file(&self.dir, id))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // A process this process started is known without /proc: right after the exec its
        // cmdline can still read empty (the kernel sets it up after waking the parent).
        if let Some(running) = child_running(pid) {
            return running.then_some(pid);
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let data = self.dir.join(id.to_string());
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let ours = args
            .windows(2)
            .any(|w| w[0] == b"--data-dir" && w[1] == data.as_os_str().as_encoded_bytes());
        (ours && !is_zombie(pid)).then_some(pid)
    }

    /// How node `id`'s process ended, if this process started it and it has exited.
    pub fn exit_status(&self, id: u64) -> Option<std::process::ExitStatus> {
        let pid = std::fs::read_to_string(pid_file(&self.dir, id)).ok()?;
        exit_status(pid.trim().parse().ok()?)
    }

    /// Start (or restart) one node's process on its data directory.
    pub fn start(&self, id: u64) -> anyhow::Result<i32> {
        let node = self.node(id)?;
        if let Some(pid) = self.pid(id) {
            bail!("node {id} is already running (pid {pid})");
        }
        let data = self.dir.join(id.to_string());
        std::fs::create_dir_all(&data)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("ticketd.log"))?;
        let child = Command::new(&self.ticketd)
            .args(["--id", &id.to_string(), "--data-dir"])
            .arg(&data)
            .args(["--http-addr", &node.http, "--grpc-addr", &node.grpc])
            .args(self.tls.iter().flat_map(|t| {
                [
                    "--tls-cert".into(),
                    t.cert.clone().into_os_string(),
                    "--tls-key".into(),
                    t.key.clone().into_os_string(),
                    "--tls-ca".into(),
                    t.ca.clone().into_os_string(),
                ]
            }))
            .args(&node.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0) // survives ticketctl; signals reach only it
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it with `cargo build --bins`)",
                    self.ticketd.display()
                )
            })?;
        let pid = child.id() as i32;
        std::fs::write(pid_file(&self.dir, id), pid.to_string())?;
        let mut children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
        // An earlier child with this pid has exited and been reaped: the OS reused its pid.
        children.retain(|c| c.id() != child.id());
        children.push(child);
        Ok(pid)
    }

    /// Send a signal (`KILL`, `STOP`, `CONT` or `TERM`, any case, `SIG` prefix allowed) to
    /// one node by its pid file. After KILL and TERM, waits for the process to exit (TERM:
    /// up to 10 s, then KILL) and removes the pid file.
    pub fn signal(&self, id: u64, signal: &str) -> anyhow::Result<()> {
        self.node(id)?;
        let upper = signal.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        if !SIGNALS.contains(&name) {
            bail!("--signal must be one of KILL, STOP, CONT, TERM, not {signal:?}");
        }
        let pid = self
            .pid(id)
            .ok_or_else(|| anyhow!("node {id} is not running (no live ticketd in its pid file)"))?;
        send_signal(pid, name)?;
        match name {
            "KILL" => {
                wait_exit(pid, Duration::from_secs(5));
            }
            "TERM" => {
                if !wait_exit(pid, TERM_GRACE) {
                    send_signal(pid, "KILL")?;
                    wait_exit(pid, Duration::from_secs(5));
                }
            }
            _ => return Ok(()),
        }
        let _ = std::fs::remove_file(pid_file(&self.dir, id));
        Ok(())
    }

    pub fn alive(&self, id: u64) -> bool {
        self.pid(id).is_some()
    }

    /// Wait until a node answers /healthz, or fail with the tail of its log.
    pub async fn wait_healthy(&self, id: u64, deadline: Duration) -> anyhow::Result<()> {
        let url = format!("{}/healthz", self.http_url(self.node(id)?));
        let mut http = crate::tls::http_builder();
        if let Some(t) = &self.tls {
            let pem = std::fs::read(&t.ca)
                .with_context(|| format!("reading the dev cluster's CA {}", t.ca.display()))?;
            http =
                http.tls_certs_only(crate::tls::ca_certificates(&pem).map_err(anyhow::Error::msg)?);
        }
        let http = http.build().context("building the HTTP client")?;
        let start = Instant::now();
        loop {
            if let Ok(r) = http
                .get(&url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(());
            }
            let started = std::fs::read_to_string(pid_file(&self.dir, id))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            let exited = match started {
                None => Some("has no pid file".to_string()),
                Some(pid) => match exit_status(pid) {
                    Some(status) => Some(format!("(pid {pid}) exited with {status}")),
                    None if !self.alive(id) => Some(format!("(pid {pid}) is gone")),
                    None => None,
                },
            };
            if exited.is_some() || start.elapsed() > deadline {
                let why = exited.unwrap_or_else(|| format!("did not answer within {deadline:?}"));
                let log =
                    std::fs::read_to_string(self.dir.join(id.to_string()).join("ticketd.log"))
                        .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                bail!(
                    "node {id} {why} at {url} ({}); last log lines:\n{}",
                    self.ticketd.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until every listed node reports the same leader, and return it.
    pub async fn wait_leader(&self, deadline: Duration) -> anyhow::Result<u64> {
        let start = Instant::now();
        let c = self.client().with_deadline(Duration::from_secs(2));
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

    /// Start N nodes on free ports, initialize the cluster on node 1, add the others as
    /// learners and promote them. Returns once every node is a voter and a leader is known.
    pub async fn up(dir: &Path, n: u64, extra_args: Vec<String>) -> anyhow::Result<DevCluster> {
        DevCluster::up_with(dir, n, None, extra_args).await
    }

    /// [`DevCluster::up`] with every node on TLS, mutual between nodes (see [`DevTls`]).
    pub async fn up_tls(
        dir: &Path,
        n: u64,
        tls: DevTls,
        extra_args: Vec<String>,
    ) -> anyhow::Result<DevCluster> {
        DevCluster::up_inner(dir, n, None, Some(tls), extra_args).await
    }

    /// [`DevCluster::up`] with node `i` (from 1) on HTTP port `base + 2(i-1)` and gRPC port
    /// `base + 2(i-1) + 1` when `base_port` is given.
    pub async fn up_with(
        dir: &Path,
        n: u64,
        base_port: Option<u16>,
        extra_args: Vec<String>,
    ) -> anyhow::Result<DevCluster> {
        DevCluster::up_inner(dir, n, base_port, None, extra_args).await
    }

    async fn up_inner(
        dir: &Path,
        n: u64,
        base_port: Option<u16>,
        tls: Option<DevTls>,
        extra_args: Vec<String>,
    ) -> anyhow::Result<DevCluster> {
        if !(1..=9).contains(&n) {
            bail!("--nodes must be 1..=9");
        }
        refuse_old_cluster(dir, n)?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ports = match base_port {
            Some(base) => ports_from(base, 2 * n as usize)?,
            None => free_ports(2 * n as usize)?,
        };
        let nodes = (1..=n)
            .zip(ports.chunks(2))
            .map(|(id, p)| DevNode {
                id,
                http: format!("127.0.0.1:{}", p[0]),
                grpc: format!("127.0.0.1:{}", p[1]),
                extra_args: extra_args.clone(),
            })
            .collect();
        let cluster = DevCluster {
            dir: dir.canonicalize()?,
            ticketd: find_ticketd()?,
            admin_key: format!("dev-admin-{}", crate::new_idempotency_key()),
            nodes,
            tls,
        };
        cluster.save()?;
        match cluster.bootstrap().await {
            Ok(()) => Ok(cluster),
            Err(e) => {
                // Leave no orphan processes behind a failed start; keep the logs.
                cluster.kill_all();
                let _ = std::fs::remove_file(cluster.dir.join("cluster.json"));
                Err(e.context(format!(
                    "the dev cluster did not start; logs are in {}/<id>/ticketd.log (remove {} before retrying)",
                    cluster.dir.display(),
                    cluster.dir.display()
                )))
            }
        }
    }

    async fn bootstrap(&self) -> anyhow::Result<()> {
        for node in &self.nodes {
            self.start(node.id)?;
        }
        for node in &self.nodes {
            self.wait_healthy(node.id, HEALTHY_DEADLINE).await?;
        }
        let first = self.node_client(1)?.with_deadline(LEADER_DEADLINE);
        first
            .init(&self.admin_key)
            .await
            .context("initializing the cluster on node 1")?;
        self.wait_leader(LEADER_DEADLINE).await?;
        for node in self.nodes.iter().skip(1) {
            first
                .add_learner(
                    node.id,
                    &self.peer_addr(&node.grpc),
                    &self.peer_addr(&node.http),
                )
                .await
                .with_context(|| format!("adding node {} as a learner", node.id))?;
        }
        if self.nodes.len() > 1 {
            first
                .change_membership(self.nodes.iter().map(|n| n.id).collect())
                .await
                .context("promoting the learners to voters")?;
        }
        self.wait_leader(LEADER_DEADLINE).await?;
        Ok(())
    }

    /// An address as the membership records it: `host:port`, or `https://host:port` under
    /// TLS (what ticketd advertises for itself then).
    fn peer_addr(&self, addr: &str) -> String {
        match self.tls {
            Some(_) => format!("https://{addr}"),
            None => addr.to_string(),
        }
    }

    /// Add a node to a running dev cluster as a learner (it is not promoted).
    pub async fn add_node(&mut self, extra_args: Vec<String>) -> anyhow::Result<u64> {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let ports = free_ports(2)?;
        self.nodes.push(DevNode {
            id,
            http: format!("127.0.0.1:{}", ports[0]),
            grpc: format!("127.0.0.1:{}", ports[1]),
            extra_args,
        });
        self.save()?;
        self.start(id)?;
        self.wait_healthy(id, HEALTHY_DEADLINE).await?;
        let node = self.node(id)?.clone();
        self.client()
            .with_deadline(Duration::from_secs(60))
            .add_learner(id, &self.peer_addr(&node.grpc), &self.peer_addr(&node.http))
            .await?;
        Ok(id)
    }

    /// TERM every node (CONT first, so a paused one can exit), wait up to 10 s, then KILL
    /// what is left; remove the pid files. Data, logs and `cluster.json` stay, so `start`
    /// brings the same cluster back; `purge` removes the whole directory instead.
    pub fn down(&self, purge: bool) -> anyhow::Result<()> {
        let running: Vec<(u64, i32)> = self
            .nodes
            .iter()
            .filter_map(|n| Some((n.id, self.pid(n.id)?)))
            .collect();
        for (_, pid) in &running {
            let _ = send_signal(*pid, "CONT");
            let _ = send_signal(*pid, "TERM");
        }
        let deadline = Instant::now() + TERM_GRACE;
        for (id, pid) in &running {
            if !wait_exit(*pid, deadline.saturating_duration_since(Instant::now())) {
                send_signal(*pid, "KILL")?;
                if !wait_exit(*pid, Duration::from_secs(5)) {
                    bail!("node {id} (pid {pid}) did not exit after KILL");
                }
            }
        }
        for n in &self.nodes {
            let _ = std::fs::remove_file(pid_file(&self.dir, n.id));
        }
        if purge {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
        }
        Ok(())
    }

    /// KILL every running node at once (tests, failed start-up).
    pub fn kill_all(&self) {
        for n in &self.nodes {
            if let Some(pid) = self.pid(n.id) {
                let _ = send_signal(pid, "KILL");
            }
        }
    }
}

/// Refuse to start over an earlier cluster's data: a new cluster on old Raft state would not
/// initialize, and the old data may matter to someone.
fn refuse_old_cluster(dir: &Path, n: u64) -> anyhow::Result<()> {
    let hint = format!(
        "`ticketctl dev start --dir {d}` restarts it; `ticketctl dev down --dir {d} --purge` or another --dir gives a fresh one",
        d = dir.display()
    );
    if dir.join("cluster.json").exists() {
        bail!("{} already holds a dev cluster: {hint}", dir.display());
    }
    for id in 1..=n {
        let data = dir.join(id.to_string());
        let Ok(entries) = std::fs::read_dir(&data) else {
            continue;
        };
        let old = entries.flatten().any(|e| {
            let name = e.file_name();
            name != "ticketd.log" && name != "ticketd.pid"
        });
        if old {
            bail!(
                "{} holds a node's data from an earlier cluster: {hint}",
                data.display()
            );
        }
    }
    Ok(())
}

/// `kill -<name> <pid>` through the `kill` program: no unsafe code for one syscall.
fn send_signal(pid: i32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .context("running `kill`")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed (has the process exited?)");
    }
    Ok(())
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Wait for a process to exit (it is not our child once ticketctl exits, so poll /proc).
fn wait_exit(pid: i32, deadline: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Kills a test's cluster by pid when dropped, whatever happened (a panic included).
pub struct Guard(pub DevCluster);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.kill_all();
    }
}
