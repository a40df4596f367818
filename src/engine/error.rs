//! Why an engine call failed: one enum for the layer, which the API maps to
//! gRPC statuses in one place (`api::status`).

use crate::{
    domain::{FieldViolation, JobId, Refusal},
    store::StoreError,
};
use std::time::Duration;

/// Why an engine call failed. The API maps each to a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid request")]
    InvalidArgument(Vec<FieldViolation>),
    /// Well-formed, but not allowed on this server.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("request id {0:?} was already used for a different request")]
    RequestIdReused(String),
    /// An exclusive job's name is held by a live exclusive job.
    #[error("a live exclusive job is named {name:?}")]
    NameTaken { name: String, job: JobId },
    /// The store cannot be reached; the caller may retry.
    #[error("the job store is unavailable")]
    StoreUnavailable(#[source] StoreError),
    /// The server is shutting down; the message says what the caller does
    /// next (call again, or watch again from its last sequence).
    #[error("{0}")]
    ShuttingDown(&'static str),
    /// The job's runner did not take the change in time, or there was none
    /// to take it; the change itself is committed. The message says what
    /// the store holds.
    #[error("{0}")]
    NotApplied(String),
    /// Too many concurrent changes to one job; the caller may retry.
    #[error("job {0} is changing too fast; retry")]
    Contended(JobId),
    /// A WatchJob stream's client took nothing for `stalled` while newer
    /// events were stored; everything up to sequence `sent` went out.
    #[error("watch stream fell behind after sequence {sent}")]
    Lagging { sent: u64, stalled: Duration },
    /// A store failure that is no fault of the caller's and will not pass
    /// by retrying.
    #[error("the job store failed")]
    Store(#[source] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => EngineError::NotFound(id),
            StoreError::RequestIdReused(key) => EngineError::RequestIdReused(key),
            StoreError::NameTaken { name, job } => EngineError::NameTaken { name, job },
            // A page that would take its job past the item limit: the
            // caller's `items` are the problem.
            StoreError::TooManyItems {
                total,
                adding,
                limit,
            } => EngineError::InvalidArgument(vec![FieldViolation::new(
                "items",
                format!(
                    "holds {adding} items, and the job holds {total}: a job may hold at most \
                     {limit}"
                ),
            )]),
            // CancelItems named an item the job does not hold.
            StoreError::NoSuchItem {
                field,
                index,
                total,
            } => EngineError::InvalidArgument(vec![
                crate::domain::CancelRefusal::OutOfRange {
                    field,
                    index,
                    total,
                }
                .into(),
            ]),
            unavailable @ StoreError::Unavailable(_) => EngineError::StoreUnavailable(unavailable),
            other => EngineError::Store(other),
        }
    }
}
