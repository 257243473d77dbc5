//! The payments service: a client of the ledger (through `crates/client`, never node
//! internals) that takes a buyer's hold through checkout at a payment provider, and the
//! simulated provider it is tested against.
//!
//! - [`service`]: the checkout saga, whose state lives in the ledger's checkout records, and
//!   the resume that finishes every open checkout after a restart.
//! - [`provider`]: the [`provider::Provider`] trait and its HTTP implementation.
//! - [`sim`]: the simulated provider, its own HTTP server (latency, declines, timeouts,
//!   duplicate callbacks).
//! - [`http`]: the service's own HTTP API (buyers' checkouts, refunds, provider callbacks).
#![forbid(unsafe_code)]

pub mod http;
pub mod provider;
pub mod service;
pub mod sim;

pub use provider::{HttpProvider, Provider};
pub use service::{Payments, hold_of, payment_ref};
