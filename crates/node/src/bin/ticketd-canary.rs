//! `ticketd-canary`: ticketd built with one planted bug (a `canary-*` feature) for jepsen/ to
//! find. Never deploy it; `ticketd` is the node.

use anyhow::Context;
use clap::Parser;
use node::config::{Cli, Config};

fn main() -> anyhow::Result<()> {
    let cfg = Config::load(Cli::parse())?;
    node::logging::init(&cfg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(node::run(cfg))
}
