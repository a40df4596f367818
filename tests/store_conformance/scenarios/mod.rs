//! The scenarios, grouped by the part of the `Store` contract they hold
//! each store to. Every scenario is `async fn(Arc<dyn Store>)` and knows
//! nothing of which store it runs on.

pub mod cancelling;
pub mod claims;
pub mod control;
pub mod counting;
pub mod deletion;
pub mod growing;
pub mod in_batch;
pub mod jobs;
pub mod listing;
pub mod pausing;
pub mod recovery;
pub mod retries;
pub mod runs;
pub mod transitions;
pub mod writes;
