//! The snapshot format: a fixed header, then the postcard encoding of [`State`].
//!
//! ```text
//! magic "TLSNAP\r\n" | format version u32 LE | body length u64 LE | blake3(body) 32 B | body
//! ```
//!
//! Decoding never trusts the bytes: header, length and checksum first, then the body's
//! structure (every reference resolves, every index is in range), then every invariant. A
//! snapshot that passes is as good as a ledger that never stopped; anything else is an error.

use crate::invariants::InvariantViolation;
use crate::ledger::Ledger;
use crate::limits::MAX_QUEUE_LENGTH;
use crate::state::*;
use std::collections::BTreeSet;

pub const SNAPSHOT_MAGIC: &[u8; 8] = b"TLSNAP\r\n";
/// Bump when `State`'s encoding changes; older versions get a migration, newer are refused.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;
pub const SNAPSHOT_HEADER_LEN: usize = 8 + 4 + 8 + 32;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is {len} bytes, shorter than its {SNAPSHOT_HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("not a ticketledger snapshot (bad magic bytes)")]
    BadMagic,
    #[error(
        "snapshot format version {found} is newer than this build supports ({supported}); upgrade ticketd"
    )]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("snapshot body is {actual} bytes but its header says {declared}: truncated or padded")]
    LengthMismatch { declared: u64, actual: usize },
    #[error("snapshot checksum mismatch: the file is corrupted")]
    ChecksumMismatch,
    #[error("snapshot body does not decode: {0}")]
    Decode(String),
    #[error("snapshot body is malformed: {0}")]
    Malformed(String),
    #[error(transparent)]
    Invariant(#[from] InvariantViolation),
}

impl Ledger {
    /// The whole ledger as a self-checking, versioned byte string.
    pub fn snapshot(&self) -> Vec<u8> {
        // The body is encoded in place after the header (the length and hash are filled in
        // after): a large ledger is one buffer, not an encoding copied behind a header.
        let mut out = Vec::with_capacity(1 << 16);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&[0; 8 + 32]);
        let mut out = postcard::to_extend(&self.s, out).expect("the state always encodes");
        let body_len = (out.len() - SNAPSHOT_HEADER_LEN) as u64;
        let hash = *blake3::hash(&out[SNAPSHOT_HEADER_LEN..]).as_bytes();
        out[12..20].copy_from_slice(&body_len.to_le_bytes());
        out[20..SNAPSHOT_HEADER_LEN].copy_from_slice(&hash);
        out
    }

    /// Rebuild a ledger from [`Ledger::snapshot`]'s output, checking everything.
    pub fn restore(bytes: &[u8]) -> Result<Ledger, SnapshotError> {
        if bytes.len() < SNAPSHOT_HEADER_LEN {
            return Err(SnapshotError::TooShort { len: bytes.len() });
        }
        if &bytes[..8] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotError::UnsupportedVersion {
                found: version,
                supported: SNAPSHOT_FORMAT_VERSION,
            });
        }
        let declared = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let body = &bytes[SNAPSHOT_HEADER_LEN..];
        if declared != body.len() as u64 {
            return Err(SnapshotError::LengthMismatch {
                declared,
                actual: body.len(),
            });
        }
        if blake3::hash(body).as_bytes() != &bytes[20..52] {
            return Err(SnapshotError::ChecksumMismatch);
        }
        Ledger::restore_body(body)
    }

    /// Restore a backup into another cluster's log: the ledger as the backup had it, now at
    /// `log_index` of the new log (the change feed, which named the old log's indices, starts
    /// empty). Used by the operator's restore, never by replication.
    pub fn restore_backup_at(bytes: &[u8], log_index: u64) -> Result<Ledger, SnapshotError> {
        let mut ledger = Ledger::restore(bytes)?;
        ledger.s.last_index = log_index;
        ledger.s.feed.clear();
        ledger.check_invariants()?;
        Ok(ledger)
    }

    /// Whether nothing but accounts exists yet (a backup may be restored over it).
    pub fn has_no_catalog(&self) -> bool {
        self.s.venues.is_empty() && self.s.events.is_empty() && self.s.performances.is_empty()
    }

    /// Decode a snapshot body without the header (exposed for the fuzzer, which cannot forge
    /// checksums and must still reach the decoder).
    #[doc(hidden)]
    pub fn restore_body(body: &[u8]) -> Result<Ledger, SnapshotError> {
        let state: State =
            postcard::from_bytes(body).map_err(|e| SnapshotError::Decode(e.to_string()))?;
        validate_structure(&state).map_err(SnapshotError::Malformed)?;
        let ledger = Ledger::from_state(state);
        ledger.check_invariants_of_fresh_indexes()?;
        Ok(ledger)
    }

    /// A digest of the whole state: replicas that applied the same log agree on it. The
    /// encoding streams into the hasher (no copy of the state in memory: at a million
    /// accounts the encoding is hundreds of megabytes); it is the blake3 of the postcard
    /// encoding of the state.
    pub fn state_hash(&self) -> [u8; 32] {
        let hasher = postcard::serialize_with_flavor(&self.s, HashFlavor(blake3::Hasher::new()))
            .expect("the state always encodes");
        *hasher.finalize().as_bytes()
    }
}

/// A postcard output that hashes what it is given instead of storing it.
struct HashFlavor(blake3::Hasher);

impl postcard::ser_flavors::Flavor for HashFlavor {
    type Output = blake3::Hasher;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.update(&[data]);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.update(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<blake3::Hasher> {
        Ok(self.0)
    }
}

macro_rules! need {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(format!($($arg)*));
        }
    };
}

/// Every reference resolves and every index is in range, so that the invariant check (and
/// everything after it) can index without panicking.
fn validate_structure(s: &State) -> Result<(), String> {
    for (id, v) in &s.venues {
        need!(
            *id == v.id && !v.sections.is_empty(),
            "venue {id} keyed wrongly or empty"
        );
        let mut next = 0u32;
        for sec in &v.sections {
            if let SectionKind::Seated {
                first_seat,
                seats,
                rows,
            } = &sec.kind
            {
                need!(
                    *first_seat == next && !rows.is_empty(),
                    "venue {id} section {} misplaced",
                    sec.name
                );
                for r in rows {
                    need!(
                        r.first_seat == next && r.seats > 0,
                        "venue {id} row {} misplaced",
                        r.label
                    );
                    next = next.checked_add(r.seats).ok_or("seat count overflows")?;
                }
                need!(
                    next - first_seat == *seats,
                    "venue {id} section {} size differs from its rows",
                    sec.name
                );
            }
        }
        need!(next == v.seats, "venue {id} seat total differs");
    }
    for (id, p) in &s.performances {
        need!(*id == p.id, "performance {id} keyed wrongly");
        let venue = s
            .venues
            .get(&p.venue)
            .ok_or(format!("performance {id} names a missing venue"))?;
        need!(
            s.events.contains_key(&p.event),
            "performance {id} names a missing event"
        );
        need!(
            p.seats.len() == venue.seats as usize,
            "performance {id} seat array size differs"
        );
        need!(
            p.sections.len() == venue.sections.len(),
            "performance {id} section array size differs"
        );
        need!(
            p.seats.iter().all(|c| c.is_canonical()),
            "performance {id} has a malformed seat cell"
        );
        need!(
            p.currency.is_valid() && !p.categories.is_empty(),
            "performance {id} currency or categories"
        );
        need!(
            p.prices
                .iter()
                .all(|x| usize::from(x.section.0) < p.sections.len()
                    && usize::from(x.category.0) < p.categories.len()
                    && x.price.currency == p.currency),
            "performance {id} has a price out of range"
        );
        if let Some(room) = &p.waiting_room {
            let n = room.entries.len();
            need!(
                n <= MAX_QUEUE_LENGTH as usize,
                "performance {id} queue too long"
            );
            need!(
                room.order
                    .iter()
                    .chain(room.prequeue.iter())
                    .all(|&j| (j as usize) < n),
                "performance {id} queue order names a missing entry"
            );
        }
    }
    for (id, h) in &s.holds {
        let p = s
            .performances
            .get(&h.performance)
            .ok_or(format!("hold {id} names a missing performance"))?;
        let venue = &s.venues[&p.venue];
        need!(
            h.seats
                .iter()
                .all(|(seat, c)| (seat.0 as usize) < p.seats.len()
                    && usize::from(c.0) < p.categories.len()),
            "hold {id} names a seat or category out of range"
        );
        if let Some((sec, _, c)) = h.ga {
            let ok = venue
                .sections
                .get(usize::from(sec.0))
                .is_some_and(|s| !s.is_seated());
            need!(
                ok && usize::from(c.0) < p.categories.len(),
                "hold {id} names a bad GA section"
            );
        }
        need!(h.amount.currency.is_valid(), "hold {id} currency");
    }
    for (id, b) in &s.bookings {
        let p = s
            .performances
            .get(&b.performance)
            .ok_or(format!("booking {id} names a missing performance"))?;
        need!(
            b.tickets
                .iter()
                .all(|t| usize::from(t.section.0) < p.sections.len()
                    && t.seat.is_none_or(|seat| (seat.0 as usize) < p.seats.len())),
            "booking {id} has a ticket out of range"
        );
    }
    let room_len = |pid| {
        s.performances
            .get(pid)
            .and_then(|p: &Performance| p.waiting_room.as_ref())
            .map(|r| r.entries.len())
    };
    need!(
        s.admission_expiry
            .iter()
            .all(|(_, q)| room_len(&q.performance).is_some_and(|n| (q.join_index as usize) < n)),
        "an admission names a missing queue entry"
    );
    need!(
        s.rooms_on_sale.iter().all(|p| room_len(p).is_some()),
        "a room on sale does not exist"
    );
    need!(
        s.hold_expiry.iter().all(|(_, h)| s.holds.contains_key(h)),
        "hold expiry names a missing hold"
    );
    need!(
        s.ended_holds.iter().all(|(_, h)| s.holds.contains_key(h)),
        "ended holds name a missing hold"
    );
    let order: BTreeSet<_> = s
        .idempotency_order
        .iter()
        .map(|(_, p, k)| (*p, k.clone()))
        .collect();
    need!(
        order.len() == s.idempotency.len() && s.idempotency.keys().all(|k| order.contains(k)),
        "idempotency order list differs from the records"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_streamed_state_hash_is_the_hash_of_the_encoding() {
        let l = Ledger::default();
        let body = postcard::to_stdvec(&l.s).unwrap();
        assert_eq!(l.state_hash(), *blake3::hash(&body).as_bytes());
    }
}
