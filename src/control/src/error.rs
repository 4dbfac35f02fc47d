//! Errors every front end shows: a stable machine code plus a message a person understands.
//! Each code maps to one documented CLI exit code and one HTTP status.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Exit code for success.
pub const EXIT_OK: i32 = 0;
/// Exit code when the CLI cannot reach the node (no socket, connection refused, broken reply).
pub const EXIT_UNREACHABLE: i32 = 7;

/// Stable error codes (serialized in snake_case: `"not_found"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Bad input: a malformed name or size, a missing field, a file that is not a disk image.
    InvalidArgument,
    NotFound,
    /// A name that is already taken.
    AlreadyExists,
    /// The object is in a state that does not allow this (shrink, delete while exported, ...).
    Conflict,
    /// Authenticated, but the role does not allow this request.
    Forbidden,
    /// Not authenticated.
    Unauthorized,
    NoSpace,
    /// A disk carries data that is not ours; it was not touched.
    ForeignData,
    /// Temporarily impossible (draining, rebuilding, shutting down); retry later.
    Busy,
    Io,
    /// Both replicas failed their checksum: no data returned.
    Corrupt,
    /// The node cannot be reached (CLI side) or is not serving yet.
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The documented exit code of the `cairn` CLI for this error:
    ///
    /// | code | meaning |
    /// |---|---|
    /// | 0 | success |
    /// | 1 | internal error |
    /// | 2 | usage error / invalid argument |
    /// | 3 | not found |
    /// | 4 | already exists / conflict / busy |
    /// | 5 | no space |
    /// | 6 | I/O error or corrupt data |
    /// | 7 | cannot reach the node |
    /// | 8 | not allowed (forbidden / unauthorized) |
    /// | 9 | foreign data on a disk (refused, untouched) |
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorCode::Internal => 1,
            ErrorCode::InvalidArgument => 2,
            ErrorCode::NotFound => 3,
            ErrorCode::AlreadyExists | ErrorCode::Conflict | ErrorCode::Busy => 4,
            ErrorCode::NoSpace => 5,
            ErrorCode::Io | ErrorCode::Corrupt => 6,
            ErrorCode::Unavailable => EXIT_UNREACHABLE,
            ErrorCode::Forbidden | ErrorCode::Unauthorized => 8,
            ErrorCode::ForeignData => 9,
        }
    }

    /// The HTTP status the API answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists | ErrorCode::Conflict => 409,
            ErrorCode::ForeignData => 422,
            ErrorCode::Busy | ErrorCode::Unavailable => 503,
            ErrorCode::NoSpace => 507,
            ErrorCode::Io | ErrorCode::Corrupt | ErrorCode::Internal => 500,
        }
    }

    /// The snake_case name used on the wire (`{"error":{"code":"not_found",...}}`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NoSpace => "no_space",
            ErrorCode::ForeignData => "foreign_data",
            ErrorCode::Busy => "busy",
            ErrorCode::Io => "io",
            ErrorCode::Corrupt => "corrupt",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from the control surface. `message` is for people; `code` is for programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub code: ErrorCode,
    pub message: String,
}

impl ControlError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ControlError {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    pub fn exit_code(&self) -> i32 {
        self.code.exit_code()
    }
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_names() {
        for code in [
            ErrorCode::InvalidArgument,
            ErrorCode::NotFound,
            ErrorCode::AlreadyExists,
            ErrorCode::Conflict,
            ErrorCode::Forbidden,
            ErrorCode::Unauthorized,
            ErrorCode::NoSpace,
            ErrorCode::ForeignData,
            ErrorCode::Busy,
            ErrorCode::Io,
            ErrorCode::Corrupt,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_ne!(code.exit_code(), EXIT_OK);
            assert!(code.http_status() >= 400);
        }
        assert_eq!(ErrorCode::NotFound.exit_code(), 3);
        assert_eq!(ErrorCode::Unavailable.exit_code(), EXIT_UNREACHABLE);
        assert_eq!(ErrorCode::NotFound.http_status(), 404);
    }
}
