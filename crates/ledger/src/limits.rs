//! Every collection in the ledger has a named maximum (STYLE.md: put a limit on everything).
//! Exceeding one is a `limit_exceeded` rejection that leaves the ledger untouched.

/// Seats in one venue, over all its seated sections.
pub const MAX_SEATS_PER_VENUE: u32 = 200_000;
/// General-admission capacity of one section.
pub const MAX_GA_CAPACITY_PER_SECTION: u32 = 200_000;
/// Sections in one venue.
pub const MAX_SECTIONS_PER_VENUE: usize = 256;
/// Rows in one seated section.
pub const MAX_ROWS_PER_SECTION: usize = 2_000;
/// Seats in one row.
pub const MAX_SEATS_PER_ROW: u32 = 2_000;
/// Upper bound for a performance's `max_seats_per_order` (the per-performance limit).
pub const MAX_SEATS_PER_ORDER: u16 = 50;
/// Seats of a section in which the ledger picks best-available seats (the pick scans the
/// section's seats once, in the apply step; larger sections must name their seats).
pub const MAX_BEST_AVAILABLE_SECTION_SEATS: u32 = 20_000;
/// Default seats per order when a performance does not say.
pub const DEFAULT_SEATS_PER_ORDER: u16 = 10;
/// Live holds one buyer may have on one performance.
pub const MAX_HOLDS_PER_BUYER_PER_PERFORMANCE: u16 = 4;
/// Ticket categories (adult, student, VIP…) per performance.
pub const MAX_CATEGORIES_PER_PERFORMANCE: usize = 16;
/// Queue entries per performance's waiting room.
pub const MAX_QUEUE_LENGTH: u32 = 10_000_000;
/// Entries admitted by one tick, whatever the rate and however long since the last tick.
pub const MAX_ADMISSIONS_PER_TICK: u32 = 100_000;
/// Live holds in the whole ledger.
pub const MAX_LIVE_HOLDS: usize = 2_000_000;
/// Bookings in the whole ledger.
pub const MAX_BOOKINGS: usize = 20_000_000;
/// Users, API keys, venues, events, performances.
pub const MAX_USERS: usize = 50_000_000;
pub const MAX_API_KEYS: usize = 100_000;
pub const MAX_VENUES: usize = 100_000;
pub const MAX_EVENTS: usize = 1_000_000;
pub const MAX_PERFORMANCES: usize = 1_000_000;
pub const MAX_MEDIA_ITEMS_PER_EVENT: usize = 32;
/// Idempotency records one principal may have within the retention window.
pub const MAX_IDEMPOTENCY_RECORDS_PER_PRINCIPAL: usize = 1 << 20;
/// How long an idempotency record is kept, in ledger time.
pub const IDEMPOTENCY_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;
/// How long an ended hold (released, expired, confirmed) stays readable, in ledger time.
pub const ENDED_HOLD_RETENTION_MS: u64 = 60 * 60 * 1000;
/// Ended holds kept for reading; the oldest are forgotten first beyond this.
pub const MAX_ENDED_HOLDS: usize = 2_000_000;
/// Checkouts waiting for their payment outcome (started or captured); a hold in one is kept
/// after it ends, so this bounds what a stopped payments service can pile up.
pub const MAX_OPEN_CHECKOUTS: usize = 1_000_000;
/// Domain events kept in the in-memory change feed; older ones must be read from elsewhere.
pub const MAX_FEED_EVENTS: usize = 1 << 18;
/// Hold time to live bounds.
pub const MIN_HOLD_TTL_MS: u64 = 10_000;
pub const MAX_HOLD_TTL_MS: u64 = 60 * 60 * 1000;
/// Payment grace (one extension of a hold) bound.
pub const MAX_PAYMENT_GRACE_MS: u64 = 60 * 60 * 1000;
/// Admission TTL bounds.
pub const MIN_ADMISSION_TTL_MS: u64 = 10_000;
pub const MAX_ADMISSION_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// Waiting-room admission rate bound (entries per second).
pub const MAX_ADMISSION_RATE_PER_SEC: u32 = 100_000;

/// String lengths (in bytes).
pub const MAX_NAME_LEN: usize = 200;
pub const MAX_EMAIL_LEN: usize = 254;
pub const MAX_DESCRIPTION_LEN: usize = 10_000;
pub const MAX_LABEL_LEN: usize = 16;
pub const MAX_URL_LEN: usize = 2_048;
pub const MAX_REF_LEN: usize = 128;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
pub const MAX_PASSWORD_HASH_LEN: usize = 512;
/// Rejection details are truncated to this many bytes.
pub const MAX_DETAIL_LEN: usize = 256;
