//! The gRPC API v1 (`proto/ticketledger.proto`, package `ticketledger.v1`), compiled once here
//! so that `ticketd` and the Rust client share one set of generated types.

tonic::include_proto!("ticketledger.v1");

/// The encoded file descriptor set of `ticketledger.v1`, for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("ticketledger_descriptor");

/// Metadata key of the stable error code on every error status (`seat_unavailable`, …).
pub const CODE_METADATA: &str = "x-ticketledger-code";
/// Metadata key of the HTTP status the same failure has over HTTP (`409`, …).
pub const STATUS_METADATA: &str = "x-ticketledger-status";
/// Metadata key of the seconds to wait before retrying (503, 429), as HTTP's `Retry-After`.
pub const RETRY_AFTER_METADATA: &str = "retry-after";
