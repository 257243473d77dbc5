//! `payments serve`: the payments service. `payments simulate`: the simulated provider.
//! Each prints `listening on http://<addr>` once it accepts connections.

use anyhow::Context;
use clap::{Parser, Subcommand};
use payments::sim::SimConfig;
use payments::{HttpProvider, Payments};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "payments",
    about = "ticketledger's payments service and simulated provider"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the payments service against a ledger cluster and a provider.
    Serve {
        /// Ledger node HTTP addresses (any node; comma-separated or repeated).
        #[arg(long, env = "TICKETLEDGER_URL", value_delimiter = ',', required = true)]
        ledger: Vec<String>,
        /// A service-role API key of the ledger.
        #[arg(long, env = "PAYMENTS_LEDGER_KEY")]
        key: String,
        /// The provider's base URL.
        #[arg(long, env = "PAYMENTS_PROVIDER_URL")]
        provider: String,
        #[arg(long, default_value = "127.0.0.1:7300")]
        listen: String,
        /// The URL the provider posts callbacks to (default: this service's own).
        #[arg(long)]
        callback_url: Option<String>,
        #[arg(long, env = "PAYMENTS_CALLBACK_SECRET", default_value = "sim-secret")]
        callback_secret: String,
        /// How long one provider call may take before it counts as a timeout.
        #[arg(long, default_value_t = 3000)]
        provider_timeout_ms: u64,
        /// How often open checkouts in the ledger are resumed (also once at start).
        #[arg(long, default_value_t = 2)]
        resume_every_secs: u64,
        /// Idle connections kept per ledger node: about the ledger calls in flight at the
        /// busiest (one per checkout being driven), or busy moments open and close
        /// connections all along.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u16).range(1..))]
        ledger_connections: u16,
    },
    /// Run the simulated payment provider.
    Simulate {
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: String,
        #[arg(long, default_value_t = 20)]
        latency_ms: u64,
        #[arg(long, default_value_t = 20)]
        jitter_ms: u64,
        #[arg(long, default_value_t = 0)]
        decline_percent: u32,
        #[arg(long, default_value_t = 0)]
        timeout_percent: u32,
        #[arg(long, default_value_t = 10_000)]
        hang_ms: u64,
        #[arg(long, default_value_t = 0)]
        duplicate_callbacks: u32,
        #[arg(long, env = "PAYMENTS_CALLBACK_SECRET", default_value = "sim-secret")]
        callback_secret: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// mimalloc instead of glibc's malloc, as in ticketd (bench/README.md, the hot-path table).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Serve {
            ledger,
            key,
            provider,
            listen,
            callback_url,
            callback_secret,
            provider_timeout_ms,
            resume_every_secs,
            ledger_connections,
        } => {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            let addr = listener.local_addr()?;
            let callback_url =
                callback_url.unwrap_or_else(|| format!("http://{addr}/v1/provider/callbacks"));
            let reader = client::Client::try_new(ledger.clone())
                .and_then(|c| c.with_idle_connections(usize::from(ledger_connections)))
                .map_err(|e| anyhow::anyhow!("--ledger: {e}"))?;
            let ledger_client = reader
                .clone()
                .with_key(key)
                .with_deadline(Duration::from_secs(10));
            let svc = Arc::new(Payments::new(
                ledger_client,
                HttpProvider::new(provider, Duration::from_millis(provider_timeout_ms)),
                Some(callback_url),
            ));
            let resumer = svc.clone();
            tokio::spawn(async move {
                loop {
                    match resumer.resume(64).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!("resumed {n} open checkouts"),
                        Err(e) => tracing::warn!("resume: {e}"),
                    }
                    tokio::time::sleep(Duration::from_secs(resume_every_secs.max(1))).await;
                }
            });
            println!("listening on http://{addr}");
            axum::serve(
                listener,
                payments::http::router(svc, reader, callback_secret),
            )
            .with_graceful_shutdown(shutdown())
            .await?;
        }
        Cmd::Simulate {
            listen,
            latency_ms,
            jitter_ms,
            decline_percent,
            timeout_percent,
            hang_ms,
            duplicate_callbacks,
            callback_secret,
            seed,
        } => {
            anyhow::ensure!(
                decline_percent + timeout_percent <= 100,
                "--decline-percent + --timeout-percent must be at most 100"
            );
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            println!("listening on http://{}", listener.local_addr()?);
            let cfg = SimConfig {
                latency_ms,
                jitter_ms,
                decline_percent,
                timeout_percent,
                hang_ms,
                duplicate_callbacks,
                callback_secret,
                seed,
            };
            axum::serve(listener, payments::sim::router(cfg))
                .with_graceful_shutdown(shutdown())
                .await?;
        }
    }
    Ok(())
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
