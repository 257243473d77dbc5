//! Structured logs through `tracing`: text for people, JSON for machines.

use crate::config::Config;
use tracing_subscriber::EnvFilter;

pub fn init(cfg: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&cfg.log_level)
        .map_err(|e| anyhow::anyhow!("bad --log-level {:?}: {e}", cfg.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if cfg.log_json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("initializing logs: {e}"))
}
