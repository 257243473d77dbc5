//! `ticketd`: one node of a ticketledger cluster.

use anyhow::Context;
use clap::Parser;
use node::config::{Cli, Config};

/// mimalloc instead of glibc's malloc: allocation was a sixth of the leader's CPU under load
/// (bench/README.md, the hot-path table).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cfg = Config::load(Cli::parse())?;
    node::logging::init(&cfg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(node::run(cfg))
}
