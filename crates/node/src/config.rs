//! Configuration: flags, `TICKETLEDGER_*` environment variables, or a TOML file, in that
//! order of precedence, then defaults.

use anyhow::{Context, bail};
use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug, Default)]
#[command(
    name = "ticketd",
    version,
    about = "A ticketledger node: one replica of the on-sale ledger."
)]
pub struct Cli {
    /// This node's Raft id (a positive integer, unique in the cluster).
    #[arg(long, env = "TICKETLEDGER_ID")]
    pub id: Option<u64>,
    /// Where the Raft log, snapshots and metadata live.
    #[arg(long, env = "TICKETLEDGER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP/JSON API listener (host:port).
    #[arg(long, env = "TICKETLEDGER_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// gRPC listener for node-to-node Raft traffic (host:port).
    #[arg(long, env = "TICKETLEDGER_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Address other nodes use to reach this node's gRPC listener (default: --grpc-addr).
    #[arg(long, env = "TICKETLEDGER_ADVERTISE_GRPC")]
    pub advertise_grpc: Option<String>,
    /// Address clients and other nodes use to reach this node's HTTP listener (default: --http-addr).
    #[arg(long, env = "TICKETLEDGER_ADVERTISE_HTTP")]
    pub advertise_http: Option<String>,
    /// A TOML file with any of these settings (`http_addr = "0.0.0.0:8080"`).
    #[arg(long, env = "TICKETLEDGER_CONFIG")]
    pub config: Option<PathBuf>,
    /// `text` or `json`.
    #[arg(long, env = "TICKETLEDGER_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// A tracing filter, e.g. `info` or `node=debug,openraft=warn`.
    #[arg(long, env = "TICKETLEDGER_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Per-request deadline in milliseconds (writes and linearizable reads).
    #[arg(long, env = "TICKETLEDGER_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Raft heartbeat interval in milliseconds (elections time out at 3–6× this).
    #[arg(long, env = "TICKETLEDGER_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Take a snapshot (and purge the log behind it) every this many applied entries.
    #[arg(long, env = "TICKETLEDGER_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Most client writes in flight on this node before it answers 503 `overloaded`.
    #[arg(long, env = "TICKETLEDGER_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,
    /// Batches (Raft entries of writes proposed together) the leader has proposed but not yet
    /// applied, at most (default 2): writes arriving meanwhile wait for the next batch.
    #[arg(long, env = "TICKETLEDGER_PROPOSALS_IN_FLIGHT")]
    pub proposals_in_flight: Option<usize>,
    /// Test only: add this many milliseconds to this node's clock (clock-skew experiments).
    #[arg(long, env = "TICKETLEDGER_CLOCK_OFFSET_MS", allow_hyphen_values = true)]
    pub clock_offset_ms: Option<i64>,
    /// Argon2id memory per password hash, KiB (default 19456, OWASP's minimum; lower only
    /// for demos and tests).
    #[arg(long, env = "TICKETLEDGER_ARGON2_MEMORY_KIB")]
    pub argon2_memory_kib: Option<u32>,
    /// Argon2id passes per password hash (default 2).
    #[arg(long, env = "TICKETLEDGER_ARGON2_ITERATIONS")]
    pub argon2_iterations: Option<u32>,
    /// Lifetime of a login token, seconds (default 3600).
    #[arg(long, env = "TICKETLEDGER_TOKEN_TTL_SECS")]
    pub token_ttl_secs: Option<u64>,
    /// HTTP requests per second one principal (API key or user) may make to this node;
    /// 0 (the default) is off. Over it: 429 `rate_limited` with Retry-After.
    #[arg(long, env = "TICKETLEDGER_RATE_LIMIT_PER_PRINCIPAL")]
    pub rate_limit_per_principal: Option<u32>,
    /// HTTP requests per second one client IP address (IPv6: its /64) may make to this node;
    /// 0 (the default) is off.
    #[arg(long, env = "TICKETLEDGER_RATE_LIMIT_PER_ADDRESS")]
    pub rate_limit_per_address: Option<u32>,
    /// Requests a rate-limit bucket holds (a burst above the rate); default one second's worth.
    #[arg(long, env = "TICKETLEDGER_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// This node's certificate chain (PEM). With --tls-key and --tls-ca, both listeners
    /// (HTTP and gRPC) serve TLS only, and node-to-node gRPC is mutual TLS.
    #[arg(long, env = "TICKETLEDGER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TICKETLEDGER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA (PEM): peers' certificates must chain to it, both ways (this node
    /// verifies the peers it calls, and Raft calls to this node need a client certificate
    /// signed by it). Clients of the public API need no certificate.
    #[arg(long, env = "TICKETLEDGER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    data_dir: Option<PathBuf>,
    http_addr: Option<SocketAddr>,
    grpc_addr: Option<SocketAddr>,
    advertise_grpc: Option<String>,
    advertise_http: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
    request_timeout_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
    snapshot_every: Option<u64>,
    max_inflight: Option<usize>,
    proposals_in_flight: Option<usize>,
    clock_offset_ms: Option<i64>,
    argon2_memory_kib: Option<u32>,
    argon2_iterations: Option<u32>,
    token_ttl_secs: Option<u64>,
    rate_limit_per_principal: Option<u32>,
    rate_limit_per_address: Option<u32>,
    rate_limit_burst: Option<u32>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
}

/// The PEM files of `--tls-cert`, `--tls-key` and `--tls-ca`, read and checked at start-up.
#[derive(Clone)]
pub struct Tls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub ca_pem: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Tls")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .field("ca_pem_bytes", &self.ca_pem.len())
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// All three flags or none: half a TLS setup is refused rather than guessed at.
    fn load(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> anyhow::Result<Option<Tls>> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (cert, key, ca) = match (cert, key, ca) {
            (None, None, None) => return Ok(None),
            (Some(c), Some(k), Some(a)) => (c, k, a),
            _ => bail!(
                "TLS needs --tls-cert, --tls-key and --tls-ca together (the CA verifies the \
                 other nodes, which talk to each other over mutual TLS)"
            ),
        };
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).with_context(|| format!("reading {what} {}", p.display()))
        };
        let tls = Tls {
            cert_pem: read(&cert, "--tls-cert")?,
            key_pem: read(&key, "--tls-key")?,
            ca_pem: read(&ca, "--tls-ca")?,
        };
        for (pem, flag, path) in [
            (&tls.cert_pem, "--tls-cert", &cert),
            (&tls.ca_pem, "--tls-ca", &ca),
        ] {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{flag} {}: not PEM certificates", path.display()))?;
            if certs.is_empty() {
                bail!("{flag} {}: no CERTIFICATE in it", path.display());
            }
        }
        PrivateKeyDer::from_pem_slice(&tls.key_pem)
            .with_context(|| format!("--tls-key {}: no PEM private key in it", key.display()))?;
        Ok(Some(tls))
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub id: u64,
    pub data_dir: PathBuf,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub advertise_grpc: String,
    pub advertise_http: String,
    pub log_json: bool,
    pub log_level: String,
    pub request_timeout: Duration,
    pub heartbeat_ms: u64,
    pub snapshot_every: u64,
    pub max_inflight: usize,
    pub proposals_in_flight: usize,
    pub clock_offset_ms: i64,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub token_ttl: Duration,
    /// Requests per second; 0 is off (crate::ratelimit).
    pub rate_limit_per_principal: u32,
    pub rate_limit_per_address: u32,
    pub rate_limit_burst: Option<u32>,
    /// TLS on both listeners and mutual TLS between nodes; `None` is plain text.
    pub tls: Option<Tls>,
}

impl Config {
    pub fn load(cli: Cli) -> anyhow::Result<Config> {
        let file: FileConfig = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let id = cli
            .id
            .or(file.id)
            .context("--id (or TICKETLEDGER_ID, or `id` in the config file) is required")?;
        if id == 0 {
            bail!("--id must be a positive integer");
        }
        let data_dir = cli
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(format!("./data/{id}")));
        let http_addr = cli
            .http_addr
            .or(file.http_addr)
            .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("valid"));
        let grpc_addr = cli
            .grpc_addr
            .or(file.grpc_addr)
            .unwrap_or_else(|| "127.0.0.1:9090".parse().expect("valid"));
        let log_format = cli
            .log_format
            .or(file.log_format)
            .unwrap_or_else(|| "text".into());
        let log_json = match log_format.as_str() {
            "json" => true,
            "text" => false,
            other => bail!("--log-format must be `text` or `json`, not {other:?}"),
        };
        let heartbeat_ms = cli.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(100);
        if !(10..=10_000).contains(&heartbeat_ms) {
            bail!("--heartbeat-ms must be 10..=10000");
        }
        let request_timeout_ms = cli
            .request_timeout_ms
            .or(file.request_timeout_ms)
            .unwrap_or(5_000);
        if !(100..=600_000).contains(&request_timeout_ms) {
            bail!("--request-timeout-ms must be 100..=600000");
        }
        let argon2_memory_kib = cli
            .argon2_memory_kib
            .or(file.argon2_memory_kib)
            .unwrap_or(19_456);
        if !(8..=1_048_576).contains(&argon2_memory_kib) {
            bail!("--argon2-memory-kib must be 8..=1048576");
        }
        let argon2_iterations = cli
            .argon2_iterations
            .or(file.argon2_iterations)
            .unwrap_or(2);
        if !(1..=16).contains(&argon2_iterations) {
            bail!("--argon2-iterations must be 1..=16");
        }
        let token_ttl_secs = cli.token_ttl_secs.or(file.token_ttl_secs).unwrap_or(3_600);
        if !(10..=7 * 24 * 3_600).contains(&token_ttl_secs) {
            bail!("--token-ttl-secs must be 10..=604800 (a week)");
        }
        let rate_limit_burst = cli.rate_limit_burst.or(file.rate_limit_burst);
        if rate_limit_burst == Some(0) {
            bail!("--rate-limit-burst must be positive");
        }
        let tls = Tls::load(
            cli.tls_cert.or(file.tls_cert),
            cli.tls_key.or(file.tls_key),
            cli.tls_ca.or(file.tls_ca),
        )?;
        // Under TLS the advertised addresses are https:// URLs, so clients and peers reading
        // them from the cluster status know how to connect.
        let scheme = if tls.is_some() { "https://" } else { "" };
        Ok(Config {
            tls,
            rate_limit_per_principal: cli
                .rate_limit_per_principal
                .or(file.rate_limit_per_principal)
                .unwrap_or(0),
            rate_limit_per_address: cli
                .rate_limit_per_address
                .or(file.rate_limit_per_address)
                .unwrap_or(0),
            rate_limit_burst,
            argon2_memory_kib,
            argon2_iterations,
            token_ttl: Duration::from_secs(token_ttl_secs),
            id,
            data_dir,
            http_addr,
            grpc_addr,
            advertise_grpc: cli
                .advertise_grpc
                .or(file.advertise_grpc)
                .unwrap_or_else(|| format!("{scheme}{grpc_addr}")),
            advertise_http: cli
                .advertise_http
                .or(file.advertise_http)
                .unwrap_or_else(|| format!("{scheme}{http_addr}")),
            log_json,
            log_level: cli
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info,openraft=warn".into()),
            request_timeout: Duration::from_millis(request_timeout_ms),
            heartbeat_ms,
            snapshot_every: cli
                .snapshot_every
                .or(file.snapshot_every)
                .unwrap_or(50_000)
                .max(100),
            max_inflight: cli
                .max_inflight
                .or(file.max_inflight)
                .unwrap_or(16_384)
                .max(1),
            proposals_in_flight: cli
                .proposals_in_flight
                .or(file.proposals_in_flight)
                .unwrap_or(crate::app::MAX_BATCHES_IN_FLIGHT)
                .clamp(1, 64),
            clock_offset_ms: cli.clock_offset_ms.or(file.clock_offset_ms).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = std::env::temp_dir().join(format!("ticketd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            "id = 3\nhttp_addr = \"127.0.0.1:7000\"\nlog_format = \"json\"\n",
        )
        .unwrap();
        let cli = Cli {
            config: Some(path.clone()),
            http_addr: Some("127.0.0.1:7001".parse().unwrap()),
            ..Cli::default()
        };
        let c = Config::load(cli).unwrap();
        assert_eq!(c.id, 3);
        assert_eq!(c.http_addr.port(), 7001);
        assert!(c.log_json);
        assert_eq!(c.advertise_http, "127.0.0.1:7001");
        assert_eq!(c.proposals_in_flight, crate::app::MAX_BATCHES_IN_FLIGHT);
        std::fs::write(&path, "id = 3\nproposals_in_flight = 0\n").unwrap();
        let c = Config::load(Cli {
            config: Some(path.clone()),
            ..Cli::default()
        })
        .unwrap();
        assert_eq!(c.proposals_in_flight, 1, "at least one batch in flight");
        std::fs::write(&path, "idd = 3\n").unwrap();
        let err = Config::load(Cli {
            config: Some(path),
            ..Cli::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    }

    #[test]
    fn half_a_tls_setup_and_unreadable_pem_are_refused() {
        let dir = std::env::temp_dir().join(format!("ticketd-tls-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let cli = |cert: bool, key: bool, ca: bool| Cli {
            id: Some(1),
            tls_cert: cert.then(|| junk.clone()),
            tls_key: key.then(|| junk.clone()),
            tls_ca: ca.then(|| junk.clone()),
            ..Cli::default()
        };
        for (cert, key, ca) in [
            (true, true, false),
            (true, false, true),
            (false, false, true),
        ] {
            let err = Config::load(cli(cert, key, ca)).unwrap_err();
            assert!(err.to_string().contains("together"), "{err:#}");
        }
        let err = Config::load(cli(true, true, true)).unwrap_err();
        assert!(format!("{err:#}").contains("--tls-cert"), "{err:#}");
        let plain = Config::load(cli(false, false, false)).unwrap();
        assert!(plain.tls.is_none());
        assert_eq!(plain.advertise_grpc, "127.0.0.1:9090");
    }

    #[test]
    fn missing_id_is_a_clear_error() {
        let err = Config::load(Cli::default()).unwrap_err();
        assert!(err.to_string().contains("--id"));
    }
}
