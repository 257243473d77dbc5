//! # ledger
//!
//! The ticketledger domain: seat inventory, holds with expiry, bookings, refunds and the
//! waiting room of an on-sale, as one deterministic state machine.
//!
//! [`Ledger::apply`] is a pure function of the state and a [`Command`]: no I/O, no clock, no
//! randomness. Everything that varies (the leader's time stamp, check-in codes, password hashes,
//! key digests, the waiting room's seed) arrives inside the command, so replicas that apply the
//! same log agree on [`Ledger::state_hash`]. Domain failures are [`Outcome::Rejected`] values
//! with stable [`Code`]s; nothing a client sends can make `apply` panic.
//!
//! Time: the ledger clock is the maximum stamp seen. Before each command the ledger expires
//! every hold and admission whose time has come, so no command ever sees an expired hold as
//! live; `Op::Tick` advances the clock with no other change and admits from waiting rooms.
#![forbid(unsafe_code)]

mod command;
mod ids;
mod invariants;
mod ledger;
pub mod limits;
mod outcome;
mod snapshot;
mod state;
mod views;

pub use command::*;
pub use ids::*;
pub use invariants::InvariantViolation;
pub use ledger::{Ledger, MAX_PRICE_MINOR, prequeue_rank};
pub use outcome::*;
pub use snapshot::{SNAPSHOT_FORMAT_VERSION, SnapshotError};
pub use state::*;
