//! The one place that maps an error kind to a gRPC code and an HTTP status.
//!
//! Services build a [`ServiceError`] saying how the caller should react and
//! never pick a `tonic::Code` themselves, so the same failure looks the same
//! from every service and from the HTTP side.

use eventlog::LogError;

/// A failure as a caller of a toxaudit service sees it.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is wrong and retrying it unchanged will fail again.
    /// `details` is an encoded proto message put in the status details
    /// (e.g. `toxaudit.v1.RefusedEvents`).
    #[error("{message}")]
    InvalidArgument {
        message: String,
        details: Option<Vec<u8>>,
    },
    /// It conflicts with what is stored (an event id with other content).
    #[error("{message}")]
    AlreadyExists {
        message: String,
        details: Option<Vec<u8>>,
    },
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// No valid token.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token that may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A dependency (the log, NATS) cannot be reached now: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Someone else wrote first: re-read and retry.
    #[error("{0}")]
    Aborted(String),
    /// A bug or damaged data.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ServiceError::InvalidArgument {
            message: message.into(),
            details: None,
        }
    }

    /// The gRPC status for this error.
    pub fn into_status(self) -> tonic::Status {
        use tonic::Code;
        let (code, message, details) = match self {
            ServiceError::InvalidArgument { message, details } => {
                (Code::InvalidArgument, message, details)
            }
            ServiceError::AlreadyExists { message, details } => {
                (Code::AlreadyExists, message, details)
            }
            ServiceError::NotFound(message) => (Code::NotFound, message, None),
            ServiceError::Unauthenticated(message) => (Code::Unauthenticated, message, None),
            ServiceError::PermissionDenied(message) => (Code::PermissionDenied, message, None),
            ServiceError::Unavailable(message) => (Code::Unavailable, message, None),
            ServiceError::Aborted(message) => (Code::Aborted, message, None),
            ServiceError::Internal(message) => (Code::Internal, message, None),
        };
        match details {
            Some(details) => tonic::Status::with_details(code, message, details.into()),
            None => tonic::Status::new(code, message),
        }
    }

    /// The HTTP status for this error (for the HTTP side of `toxaudit up`).
    pub fn http_status(&self) -> u16 {
        match self {
            ServiceError::InvalidArgument { .. } => 400,
            ServiceError::Unauthenticated(_) => 401,
            ServiceError::PermissionDenied(_) => 403,
            ServiceError::NotFound(_) => 404,
            ServiceError::AlreadyExists { .. } | ServiceError::Aborted(_) => 409,
            ServiceError::Unavailable(_) => 503,
            ServiceError::Internal(_) => 500,
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(error: ServiceError) -> Self {
        error.into_status()
    }
}

impl From<LogError> for ServiceError {
    fn from(error: LogError) -> Self {
        match error {
            LogError::KeyConflict { .. } => ServiceError::AlreadyExists {
                message: error.to_string(),
                details: None,
            },
            LogError::WrongExpectedVersion { .. } => ServiceError::Aborted(error.to_string()),
            LogError::Invalid(_) => ServiceError::invalid(error.to_string()),
            LogError::Unavailable(_) => ServiceError::Unavailable(error.to_string()),
            LogError::Corrupt(_) | LogError::Io(_) | LogError::Configuration(_) => {
                ServiceError::Internal(error.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_codes() {
        assert_eq!(
            ServiceError::invalid("x").into_status().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            ServiceError::PermissionDenied("x".into())
                .into_status()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(ServiceError::Unauthenticated("x".into()).http_status(), 401);
        let conflict: ServiceError = LogError::KeyConflict {
            key: "e-1".into(),
            position: 3,
        }
        .into();
        assert_eq!(conflict.into_status().code(), tonic::Code::AlreadyExists);
    }
}
