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
}

/// A free loopback port (bound and released; the race with other processes is acceptable
/// for development and tests, which retry start-up on a bind failure).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// `ticketd` next to this executable, else `$TICKETD_BIN`, else on PATH.
pub fn find_ticketd() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("TICKETD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // Tests run from target/debug/deps; binaries are in target/debug.
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("ticketd");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Ok(PathBuf::from("ticketd"))
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

    /// A client for every node, with the admin key.
    pub fn client(&self) -> Client {
        Client::new(self.nodes.iter().map(|n| n.http.clone())).with_key(self.admin_key.clone())
    }

    /// A client that talks to one node only.
    pub fn node_client(&self, id: u64) -> anyhow::Result<Client> {
        Ok(Client::new([self.node(id)?.http.clone()]).with_key(self.admin_key.clone()))
    }

    pub fn pid(&self, id: u64) -> Option<i32> {
        std::fs::read_to_string(pid_file(&self.dir, id))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Start (or restart) one node's process on its data directory.
    pub fn start(&self, id: u64) -> anyhow::Result<i32> {
        let node = self.node(id)?;
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
        Ok(pid)
    }

    /// Send a signal (`KILL`, `STOP`, `CONT`, `TERM`) to one node by its pid file.
    pub fn signal(&self, id: u64, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .pid(id)
            .ok_or_else(|| anyhow!("node {id} has no pid file"))?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed (is node {id} running?)");
        }
        if signal == "KILL" || signal == "9" {
            wait_exit(pid, Duration::from_secs(5));
            let _ = std::fs::remove_file(pid_file(&self.dir, id));
        }
        Ok(())
    }

    pub fn alive(&self, id: u64) -> bool {
        self.pid(id)
            .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(p))
    }

    /// Wait until a node answers /healthz, or fail with the tail of its log.
    pub async fn wait_healthy(&self, id: u64, deadline: Duration) -> anyhow::Result<()> {
        let node = self.node(id)?;
        let url = format!("http://{}/healthz", node.http);
        let http = reqwest::Client::new();
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
            if !self.alive(id) || start.elapsed() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.join(id.to_string()).join("ticketd.log"))
                        .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                bail!(
                    "node {id} did not become healthy at {url}; last log lines:\n{}",
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

    /// Start N nodes, initialize the cluster on node 1, add the others as learners and
    /// promote them. Returns once every node is a voter and a leader is known.
    pub async fn up(dir: &Path, n: u64, extra_args: Vec<String>) -> anyhow::Result<DevCluster> {
        if !(1..=9).contains(&n) {
            bail!("--nodes must be 1..=9");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if dir.join("cluster.json").exists() {
            bail!(
                "{} already holds a dev cluster; run `ticketctl dev down --dir {}` or pick another --dir",
                dir.display(),
                dir.display()
            );
        }
        let mut nodes = Vec::new();
        for id in 1..=n {
            nodes.push(DevNode {
                id,
                http: format!("127.0.0.1:{}", free_port()?),
                grpc: format!("127.0.0.1:{}", free_port()?),
                extra_args: extra_args.clone(),
            });
        }
        let cluster = DevCluster {
            dir: dir.canonicalize()?,
            ticketd: find_ticketd()?,
            admin_key: format!("dev-admin-{}", crate::new_idempotency_key()),
            nodes,
        };
        cluster.save()?;
        for node in &cluster.nodes {
            cluster.start(node.id)?;
        }
        for node in &cluster.nodes {
            cluster
                .wait_healthy(node.id, Duration::from_secs(30))
                .await?;
        }
        let first = cluster
            .node_client(1)?
            .with_deadline(Duration::from_secs(20));
        first
            .init(&cluster.admin_key)
            .await
            .context("initializing the cluster on node 1")?;
        for node in cluster.nodes.iter().skip(1) {
            first
                .add_learner(node.id, &node.grpc, &node.http)
                .await
                .with_context(|| format!("adding node {} as a learner", node.id))?;
        }
        if n > 1 {
            first
                .change_membership((1..=n).collect())
                .await
                .context("promoting the learners")?;
        }
        cluster.wait_leader(Duration::from_secs(20)).await?;
        Ok(cluster)
    }

    /// Add a node to a running dev cluster as a learner (it is not promoted).
    pub async fn add_node(&mut self, extra_args: Vec<String>) -> anyhow::Result<u64> {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        self.nodes.push(DevNode {
            id,
            http: format!("127.0.0.1:{}", free_port()?),
            grpc: format!("127.0.0.1:{}", free_port()?),
            extra_args,
        });
        self.save()?;
        self.start(id)?;
        self.wait_healthy(id, Duration::from_secs(30)).await?;
        let node = self.node(id)?.clone();
        self.client()
            .with_deadline(Duration::from_secs(60))
            .add_learner(id, &node.grpc, &node.http)
            .await?;
        Ok(id)
    }

    /// TERM every node, wait, then KILL what is left; remove pid files.
    pub fn down(&self) -> anyhow::Result<()> {
        for n in &self.nodes {
            if let Some(pid) = self.pid(n.id) {
                let _ = Command::new("kill")
                    .arg("-CONT")
                    .arg(pid.to_string())
                    .status();
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
            }
        }
        for n in &self.nodes {
            if let Some(pid) = self.pid(n.id) {
                if !wait_exit(pid, Duration::from_secs(10)) {
                    let _ = Command::new("kill")
                        .arg("-KILL")
                        .arg(pid.to_string())
                        .status();
                    wait_exit(pid, Duration::from_secs(5));
                }
                let _ = std::fs::remove_file(pid_file(&self.dir, n.id));
            }
        }
        let _ = std::fs::remove_file(self.dir.join("cluster.json"));
        Ok(())
    }
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

/// Kills a test's cluster when dropped, whatever happened.
pub struct Guard(pub DevCluster);

impl Drop for Guard {
    fn drop(&mut self) {
        for n in &self.0.nodes {
            if let Some(pid) = self.0.pid(n.id) {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }
}
