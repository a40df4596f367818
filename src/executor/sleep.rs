//! `sleep`: the synthetic workload for demos, tests and benchmarks. Each
//! item sleeps `duration_ms` in `steps` steps and saves its step number as
//! a checkpoint between steps, so an immediate pause or a crash resumes it
//! mid-item.
//!
//! Params:
//! - `duration_ms`: work per item in milliseconds (default 100; 0 allowed).
//! - `steps`: steps per item, 1 to 10,000 (default 10). A checkpoint is
//!   saved after every step but the last (the item's completion records
//!   that one).
//! - `fail_pattern`: a regex; items that match fail on every attempt.
//! - `panic_pattern`: a regex; items that match panic half-way through
//!   their first attempt (after the checkpoint of step `steps / 2`).

use super::{Executor, ItemContext, ItemError, ItemHandler, Params, PrepareError};
use crate::domain::FieldViolation;
use async_trait::async_trait;
use regex::Regex;
use std::{collections::BTreeMap, sync::Arc, time::Duration};

const KNOWN: &[&str] = &["duration_ms", "steps", "fail_pattern", "panic_pattern"];
const MAX_DURATION_MS: u64 = 24 * 3600 * 1000;
const MAX_STEPS: u32 = 10_000;

/// The `sleep` executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct SleepExecutor;

/// A job's parsed `sleep` params.
#[derive(Debug, Clone)]
pub struct Sleep {
    pub duration: Duration,
    pub steps: u32,
    pub fail: Option<Regex>,
    pub panic: Option<Regex>,
}

impl Sleep {
    /// Parses the params of a job.
    pub fn parse(params: &BTreeMap<String, String>) -> Result<Sleep, Vec<FieldViolation>> {
        let mut p = Params::new(params, KNOWN);
        let duration_ms: u64 = p.parse_or("duration_ms", 100, "a whole number of milliseconds");
        if duration_ms > MAX_DURATION_MS {
            p.invalid("duration_ms", format!("must be at most {MAX_DURATION_MS}"));
        }
        let steps: u32 = p.parse_or("steps", 10, "a whole number");
        if steps == 0 || steps > MAX_STEPS {
            p.invalid("steps", format!("must be between 1 and {MAX_STEPS}"));
        }
        let mut regex = |key: &str| {
            let raw = p.get(key)?;
            match Regex::new(raw) {
                Ok(r) => Some(r),
                Err(e) => {
                    p.invalid(key, format!("is not a valid regex: {e}"));
                    None
                }
            }
        };
        let fail = regex("fail_pattern");
        let panic = regex("panic_pattern");
        p.finish()?;
        Ok(Sleep {
            duration: Duration::from_millis(duration_ms),
            steps,
            fail,
            panic,
        })
    }

    /// The step an item starts at: its checkpoint, or 0.
    fn start_step(ctx: &ItemContext) -> Result<u32, ItemError> {
        let Some(raw) = ctx.checkpoint() else {
            return Ok(0);
        };
        std::str::from_utf8(raw)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ItemError::Permanent(format!("unreadable checkpoint {raw:?}")))
    }
}

impl Executor for SleepExecutor {
    fn prepare(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        Ok(Arc::new(Sleep::parse(params)?))
    }
}

#[async_trait]
impl ItemHandler for Sleep {
    async fn run(&self, ctx: &mut ItemContext) -> Result<(), ItemError> {
        if self
            .fail
            .as_ref()
            .is_some_and(|r| r.is_match(ctx.payload()))
        {
            return Err(ItemError::Retryable(format!(
                "item {:?} matches fail_pattern",
                ctx.payload()
            )));
        }
        let will_panic = ctx.attempt() == 1
            && self
                .panic
                .as_ref()
                .is_some_and(|r| r.is_match(ctx.payload()));
        let step_time = self.duration / self.steps;
        let mut step = Self::start_step(ctx)?;
        while step < self.steps {
            if ctx.stop_requested() {
                return Err(ItemError::Interrupted);
            }
            if !step_time.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(step_time) => {}
                    _ = ctx.stopped() => return Err(ItemError::Interrupted),
                }
            }
            step += 1;
            ctx.set_progress(step as f32 / self.steps as f32);
            if step < self.steps {
                ctx.save_checkpoint(step.to_string().into_bytes())
                    .await
                    .map_err(|_| ItemError::Interrupted)?;
            }
            if will_panic && step == (self.steps / 2).max(1) {
                panic!("item {:?} matches panic_pattern", ctx.payload());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let s = Sleep::parse(&params(&[])).unwrap();
        assert_eq!(s.duration, Duration::from_millis(100));
        assert_eq!(s.steps, 10);
    }

    #[test]
    fn names_each_bad_param() {
        let err = Sleep::parse(&params(&[
            ("duration_ms", "-1"),
            ("steps", "0"),
            ("fail_pattern", "("),
            ("colour", "red"),
        ]))
        .unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "params[colour]",
                "params[duration_ms]",
                "params[steps]",
                "params[fail_pattern]"
            ]
        );
        assert!(err[0].description.contains("duration_ms, steps"));
    }

    struct NoSink;

    #[async_trait::async_trait]
    impl crate::executor::CheckpointSink for NoSink {
        async fn save(&self, _data: Vec<u8>) -> Result<(), crate::executor::CheckpointError> {
            Ok(())
        }
    }

    /// An item's own stop signal (CancelItems) interrupts it at once, as a
    /// cancel, while the job's signal asks nothing.
    #[tokio::test]
    async fn an_item_stopped_alone_is_interrupted_as_cancelled() {
        use crate::executor::StopReason;
        use tokio::sync::watch;
        let sleep = Sleep::parse(&params(&[("duration_ms", "60000"), ("steps", "2")])).unwrap();
        let (_job_stop, job_rx) = watch::channel(None);
        let (item_stop, item_rx) = watch::channel(false);
        let mut ctx = ItemContext::new(
            crate::domain::JobId::new(),
            3,
            "x".into(),
            1,
            None,
            job_rx,
            Arc::new(NoSink),
        )
        .with_item_stop(item_rx);
        assert_eq!(ctx.stop_reason(), None);
        let started = std::time::Instant::now();
        let stop = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            item_stop.send_replace(true);
        };
        let (result, ()) = tokio::join!(sleep.run(&mut ctx), stop);
        assert!(matches!(result, Err(ItemError::Interrupted)), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(ctx.observed_stop(), Some(StopReason::Cancel));
        assert!(ctx.stop_requested());
        assert_eq!(ctx.stop_reason(), Some(StopReason::Cancel));
    }
}
