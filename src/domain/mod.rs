//! Pure types and the state machine: no I/O, no async, no database. Every
//! other layer speaks these types.

pub mod cancel;
pub mod counters;
pub mod event;
pub mod ids;
pub mod job;
pub mod machine;
pub mod page;
pub mod runner;
pub mod spec;
pub mod state;

pub use cancel::{CancelRefusal, ItemSelection, NewSelection};
pub use counters::Counters;
pub use event::{EventBody, JobEvent};
pub use ids::JobId;
pub use job::{Backoff, Item, ItemCounts, Job, JobPolicy, PauseRecord, Provenance, RateLimit};
pub use machine::{
    Command, Decision, Effect, Refusal, decide, deletable, growable, items_cancellable,
};
pub use runner::Runner;
pub use spec::{
    FieldViolation, Growth, ItemPage, JobSpec, Limits, NewItems, NewJob, PageRefusal, StartAs,
    check_labels, parse_rate, request_scope,
};
pub use state::{ItemState, JobState, PauseMode};
