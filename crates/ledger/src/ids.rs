//! Typed identifiers and small value types, each valid once constructed (parse, don't validate).

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, ParseIdError> {
                let digits = s.strip_prefix($prefix).unwrap_or(s);
                digits.parse::<u64>().map($name).map_err(|_| ParseIdError {
                    kind: stringify!($name),
                })
            }
        }
    };
}

id_type!(/// A user account (buyer, organizer, operator or service).
    UserId, "u_");
id_type!(/// An API key.
    ApiKeyId, "k_");
id_type!(/// A venue.
    VenueId, "v_");
id_type!(/// An event (a show that has performances).
    EventId, "e_");
id_type!(/// A performance (one show at a venue and time): the unit of placement.
    PerformanceId, "p_");
id_type!(/// A hold of seats or GA places.
    HoldId, "h_");
id_type!(/// A booking (a confirmed hold).
    BookingId, "b_");
id_type!(/// One ticket of a booking.
    TicketId, "t_");

/// A queue entry: the performance and the entry's join index in its waiting room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueId {
    pub performance: PerformanceId,
    pub join_index: u32,
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "q_{}_{}", self.performance.0, self.join_index)
    }
}

impl std::str::FromStr for QueueId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, ParseIdError> {
        let err = ParseIdError { kind: "QueueId" };
        let rest = s.strip_prefix("q_").ok_or(err.clone())?;
        let (p, j) = rest.split_once('_').ok_or(err.clone())?;
        Ok(QueueId {
            performance: PerformanceId(p.parse().map_err(|_| err.clone())?),
            join_index: j.parse().map_err(|_| err)?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {kind}")]
pub struct ParseIdError {
    pub kind: &'static str,
}

/// A seat's dense index inside its venue (and so inside every performance at that venue).
/// Built from a `"section:row:number"` name once, at the edge, by [`crate::Venue::seat_index`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SeatIdx(pub u32);

/// A section's index inside its venue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SectionIdx(pub u16);

/// A ticket category's index inside a performance (adult, student, VIP…).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CategoryIdx(pub u8);

/// An ISO 4217 currency code: three ASCII upper-case letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(s: &str) -> Option<Currency> {
        let b = s.as_bytes();
        if b.len() == 3 && b.iter().all(|c| c.is_ascii_uppercase()) {
            Some(Currency([b[0], b[1], b[2]]))
        } else {
            None
        }
    }
    pub fn as_str(&self) -> &str {
        // Constructed only from ASCII upper-case letters.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
    /// Whether the value could have come from `parse` (decoders check this).
    pub fn is_valid(&self) -> bool {
        self.0.iter().all(|c| c.is_ascii_uppercase())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of money in minor units (cents) of a currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub amount_minor: u64,
    pub currency: Currency,
}

/// What a principal may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    Buyer,
    Organizer,
    Operator,
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Buyer => "buyer",
            Role::Organizer => "organizer",
            Role::Operator => "operator",
            Role::Service => "service",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "buyer" => Role::Buyer,
            "organizer" => Role::Organizer,
            "operator" => Role::Operator,
            "service" => Role::Service,
            _ => return None,
        })
    }
}

/// Who proposed a command, as authenticated by the node. The ledger authorizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Principal {
    /// The cluster itself: the leader's tick and the bootstrap.
    System,
    User(UserId),
    ApiKey(ApiKeyId),
}

/// A 32-byte digest (password hash material, API key digest, seed commitment).
pub type Digest32 = [u8; 32];
/// An unguessable ticket check-in code, derived from the [`CodeSeed`] of the confirm that
/// made the ticket.
pub type CheckInCode = [u8; 16];
/// Random bytes the proposer of a confirm draws; the ledger derives the tickets' check-in
/// codes from them. One seed, not one code per ticket: the proposer does not need to know how
/// many tickets the hold makes (it would have to read the hold first, and a lagging replica
/// reads a wrong count), and a retried confirm drawn with another seed is the same request.
pub type CodeSeed = [u8; 16];

/// Render bytes as lower-case hex (codes, digests).
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Parse lower- or upper-case hex into exactly `N` bytes.
pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let nib = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nib(b[2 * i])? << 4 | nib(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings() {
        assert_eq!("h_42".parse::<HoldId>(), Ok(HoldId(42)));
        assert_eq!(HoldId(42).to_string(), "h_42");
        assert!("h_x".parse::<HoldId>().is_err());
        let q = QueueId {
            performance: PerformanceId(3),
            join_index: 9,
        };
        assert_eq!(q.to_string().parse::<QueueId>(), Ok(q));
        assert!("q_3".parse::<QueueId>().is_err());
    }

    #[test]
    fn currency_and_hex() {
        assert!(Currency::parse("EUR").is_some());
        assert!(Currency::parse("eur").is_none());
        assert!(Currency::parse("EURO").is_none());
        let b = [0xde, 0xad, 0x01];
        assert_eq!(parse_hex::<3>(&hex(&b)), Some(b));
        assert_eq!(parse_hex::<3>("zz0000"), None);
    }
}
