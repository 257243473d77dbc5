//! The fault-injecting TCP proxy, for when network namespaces cannot be made (not root, or
//! `JEPSEN_NO_NETNS=1`): every node listens on its own loopback address `127.0.0.(10+slot)`
//! and advertises a proxy address in front of it, so every byte one node sends another goes
//! through this proxy. The proxy knows which node opened a connection by the socket's owner:
//! it finds the connecting socket in `/proc/net/tcp` and the node process holding it in
//! `/proc/<pid>/fd` (the harness started every node, so it knows their pids). Connections from
//! anyone else (the harness's clients) pass untouched.
//!
//! Faults, per pair of nodes and per sending node:
//! - a partition stalls every byte between the two nodes in both directions, and new
//!   connections between them are accepted but not forwarded, until it heals (as packets
//!   dropped by iptables: TCP retransmits once the link is back, or the peers time out);
//! - a slow link delays every chunk a node sends by `delay ± jitter` (order kept: a TCP byte
//!   stream cannot reorder) without limiting throughput;
//! - loss: each chunk is held back, with that probability, by an extra 200 ms (a
//!   retransmission timeout, which is what TCP makes of a lost segment).

use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What a retransmission costs a chunk that was "lost".
pub const LOSS_PENALTY_MS: u64 = 200;
const LOSS_PENALTY: Duration = Duration::from_millis(LOSS_PENALTY_MS);

#[derive(Default)]
struct Rules {
    /// Unordered pairs of slots that cannot talk.
    cut: HashSet<(usize, usize)>,
    /// Per sending slot: (delay ms, jitter ms, loss %).
    slow: HashMap<usize, (u32, u32, u32)>,
}

#[derive(Clone, Default)]
pub struct Proxy {
    rules: Arc<Mutex<Rules>>,
    /// Slot → pid of its node process (kept current by the cluster).
    pids: Arc<Mutex<HashMap<usize, u32>>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Proxy {
    pub fn set_pid(&self, slot: usize, pid: Option<u32>) {
        let mut g = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        match pid {
            Some(p) => g.insert(slot, p),
            None => g.remove(&slot),
        };
    }

    pub fn partition(&self, cut: &[(usize, usize)]) {
        let mut g = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        g.cut.extend(cut.iter().map(|&(a, b)| pair(a, b)));
    }

    pub fn heal_partition(&self) {
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cut
            .clear();
    }

    pub fn slow(&self, slot: usize, delay_ms: u32, jitter_ms: u32, loss_pct: u32) {
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .slow
            .insert(slot, (delay_ms, jitter_ms, loss_pct));
    }

    pub fn heal_slow(&self) {
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .slow
            .clear();
    }

    fn is_cut(&self, a: usize, b: usize) -> bool {
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cut
            .contains(&pair(a, b))
    }

    /// The delay for one chunk sent by `from`.
    fn delay(&self, from: usize) -> Duration {
        let g = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&(d, j, loss)) = g.slow.get(&from) else {
            return Duration::ZERO;
        };
        drop(g);
        let mut rng = rand::rng();
        let ms = i64::from(d) + rng.random_range(-i64::from(j)..=i64::from(j));
        let mut out = Duration::from_millis(ms.max(0) as u64);
        if loss > 0 && rng.random_range(0..100) < loss {
            out += LOSS_PENALTY;
        }
        out
    }

    /// Listen on `listen` in front of slot `to`'s real address `target`.
    pub fn serve(&self, listen: SocketAddr, target: SocketAddr, to: usize) -> anyhow::Result<()> {
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let me = self.clone();
        let task = tokio::spawn(async move {
            let Ok(listener) = TcpListener::from_std(std_listener) else {
                return;
            };
            loop {
                let Ok((inbound, peer)) = listener.accept().await else {
                    continue;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let from = me.owner(peer, listen);
                    me.forward(inbound, target, from, to).await;
                });
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        Ok(())
    }

    /// Stop every listener (the connections end with their peers).
    pub fn shutdown(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }

    async fn wait_uncut(&self, from: Option<usize>, to: usize) {
        if let Some(f) = from {
            while self.is_cut(f, to) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    async fn forward(
        &self,
        inbound: TcpStream,
        target: SocketAddr,
        from: Option<usize>,
        to: usize,
    ) {
        // A connection opened during a partition waits for the heal (a SYN that is dropped
        // and retried), unless the peer gives up first.
        self.wait_uncut(from, to).await;
        let Ok(outbound) = TcpStream::connect(target).await else {
            return;
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let (ri, wi) = inbound.into_split();
        let (ro, wo) = outbound.into_split();
        // Bytes from the connecting node go to `to`; replies come back from `to`.
        let up = self.pump(ri, wo, from, Some(to), from);
        let down = self.pump(ro, wi, Some(to), from, from.map(|_| to));
        tokio::join!(up, down);
    }

    /// Copy one direction: chunks wait out a partition between `a` and `b`, then the
    /// sender's delay, in order. `sender` is the slot whose bytes these are (None: a client).
    async fn pump(
        &self,
        mut r: tokio::net::tcp::OwnedReadHalf,
        mut w: tokio::net::tcp::OwnedWriteHalf,
        a: Option<usize>,
        b: Option<usize>,
        sender: Option<usize>,
    ) {
        let faulty = a.is_some() && b.is_some();
        let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
        let me = self.clone();
        let reader = async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if faulty && let (Some(a), Some(b)) = (a, b) {
                    while me.is_cut(a, b) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                let due = Instant::now() + sender.map(|s| me.delay(s)).unwrap_or_default();
                if tx.send((due, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        };
        let me = self.clone();
        let writer = async move {
            while let Some((due, bytes)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                if faulty && let (Some(a), Some(b)) = (a, b) {
                    while me.is_cut(a, b) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                if w.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = w.shutdown().await;
        };
        tokio::join!(reader, writer);
    }

    /// The slot whose node process owns the socket `peer` connected to `local`.
    fn owner(&self, peer: SocketAddr, local: SocketAddr) -> Option<usize> {
        let inode = socket_inode(peer, local)?;
        let pids: Vec<(usize, u32)> = self
            .pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(s, p)| (*s, *p))
            .collect();
        let want = format!("socket:[{inode}]");
        for (slot, pid) in pids {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == want) {
                    return Some(slot);
                }
            }
        }
        None
    }
}

/// `/proc/net/tcp` writes an IPv4 address as the hex of its bytes in host order, then the
/// port in hex: 127.0.0.1:8080 is `0100007F:1F90` on little-endian machines.
fn proc_addr(a: SocketAddr) -> Option<String> {
    match a {
        SocketAddr::V4(v) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v.ip().octets()),
            v.port()
        )),
        SocketAddr::V6(_) => None,
    }
}

/// The inode of the socket whose local address is `peer` and remote address `local`.
fn socket_inode(peer: SocketAddr, local: SocketAddr) -> Option<u64> {
    let (p, l) = (proc_addr(peer)?, proc_addr(local)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == p && f[2] == l).then(|| f[9].parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy names the process that connected (this test process, registered as slot 7),
    /// forwards bytes, and stalls them while the pair is cut.
    #[tokio::test]
    async fn the_proxy_knows_the_sender_and_stalls_a_cut_pair() {
        let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = backend.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = backend.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1024];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let listen: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let p = Proxy::default();
        p.set_pid(7, Some(std::process::id()));
        p.serve(listen, target, 1).expect("serve");
        let mut c = TcpStream::connect(listen).await.expect("connect");
        let peer = c.local_addr().expect("addr");
        assert_eq!(p.owner(peer, listen), Some(7));
        c.write_all(b"ping").await.expect("write");
        let mut b = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut b))
            .await
            .expect("echo in time")
            .expect("read");
        assert_eq!(&b, b"ping");
        p.partition(&[(7, 1)]);
        c.write_all(b"pong").await.expect("write");
        let stalled = tokio::time::timeout(Duration::from_millis(400), c.read_exact(&mut b)).await;
        assert!(stalled.is_err(), "bytes crossed a partition");
        p.heal_partition();
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut b))
            .await
            .expect("delivered after the heal")
            .expect("read");
        assert_eq!(&b, b"pong");
        p.shutdown();
    }
}
