//! Executors the tests register next to the built-ins, through the public
//! `Executor` trait:
//! - `recording`: the real `sleep` executor, with every execution recorded
//!   (item, attempt, the checkpoint it started from, how it ended);
//! - `gate`: items wait until the test opens the gate (or a stop is
//!   requested), so a test controls exactly what is in flight;
//! - `panicky`: every attempt panics.

use jobvisor::{
    domain::FieldViolation,
    executor::{Executor, ItemContext, ItemError, ItemHandler, PrepareError, sleep::Sleep},
};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};
use tokio::sync::watch;

/// One execution of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    pub index: u32,
    pub attempt: u32,
    /// The step the item started from (its checkpoint), or 0.
    pub from_step: u32,
    /// How it ended: "ok", "interrupted", "failed"; None while running.
    pub outcome: Option<&'static str>,
    /// When it started.
    pub started: std::time::Instant,
}

/// The log of executions, shared between the executors and the test.
#[derive(Debug, Clone, Default)]
pub struct Executions(Arc<Mutex<Vec<Execution>>>);

impl Executions {
    fn begin(&self, ctx: &ItemContext) -> usize {
        let from_step = ctx
            .checkpoint()
            .and_then(|c| std::str::from_utf8(c).ok()?.parse().ok())
            .unwrap_or(0);
        let mut log = self.0.lock().unwrap();
        log.push(Execution {
            index: ctx.index(),
            attempt: ctx.attempt(),
            from_step,
            outcome: None,
            started: std::time::Instant::now(),
        });
        log.len() - 1
    }

    fn end(&self, at: usize, result: &Result<(), ItemError>) {
        self.0.lock().unwrap()[at].outcome = Some(match result {
            Ok(()) => "ok",
            Err(ItemError::Interrupted) => "interrupted",
            Err(_) => "failed",
        });
    }

    pub fn all(&self) -> Vec<Execution> {
        self.0.lock().unwrap().clone()
    }

    pub fn of(&self, index: u32) -> Vec<Execution> {
        self.all()
            .into_iter()
            .filter(|e| e.index == index)
            .collect()
    }

    pub fn started(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn running(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.outcome.is_none())
            .count()
    }
}

/// `sleep`, recorded.
pub struct Recording {
    log: Executions,
}

impl Recording {
    pub fn new(log: Executions) -> Self {
        Recording { log }
    }
}

struct RecordingHandler {
    inner: Sleep,
    log: Executions,
}

impl Executor for Recording {
    fn prepare(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        Ok(Arc::new(RecordingHandler {
            inner: Sleep::parse(params)?,
            log: self.log.clone(),
        }))
    }
}

#[async_trait::async_trait]
impl ItemHandler for RecordingHandler {
    async fn run(&self, ctx: &mut ItemContext) -> Result<(), ItemError> {
        let at = self.log.begin(ctx);
        let result = self.inner.run(ctx).await;
        self.log.end(at, &result);
        result
    }
}

/// Items block until the gate opens.
#[derive(Clone)]
pub struct Gate {
    open: Arc<watch::Sender<bool>>,
    log: Executions,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            open: Arc::new(watch::channel(false).0),
            log: Executions::default(),
        }
    }
}

impl Gate {
    pub fn with_log(mut self, log: Executions) -> Self {
        self.log = log;
        self
    }

    /// Lets every waiting and future item finish.
    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

impl Executor for Gate {
    fn prepare(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        if let Some(key) = params.keys().next() {
            return Err(vec![FieldViolation::new(
                format!("params[{key}]"),
                "gate takes no params",
            )]
            .into());
        }
        Ok(Arc::new(self.clone()))
    }
}

#[async_trait::async_trait]
impl ItemHandler for Gate {
    async fn run(&self, ctx: &mut ItemContext) -> Result<(), ItemError> {
        let at = self.log.begin(ctx);
        let mut open = self.open.subscribe();
        let result = tokio::select! {
            _ = open.wait_for(|o| *o) => Ok(()),
            _ = ctx.stopped() => Err(ItemError::Interrupted),
        };
        self.log.end(at, &result);
        result
    }
}

/// Panics on every attempt.
pub struct Panicky;

struct PanickyHandler;

impl Executor for Panicky {
    fn prepare(
        &self,
        _params: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        Ok(Arc::new(PanickyHandler))
    }
}

#[async_trait::async_trait]
impl ItemHandler for PanickyHandler {
    async fn run(&self, ctx: &mut ItemContext) -> Result<(), ItemError> {
        panic!("item {} always panics", ctx.index());
    }
}

/// Items listed as broken fail (retryably) until the test fixes them.
#[derive(Clone, Default)]
pub struct Flaky {
    broken: Arc<Mutex<std::collections::HashSet<String>>>,
    log: Executions,
}

impl Flaky {
    pub fn with_log(mut self, log: Executions) -> Self {
        self.log = log;
        self
    }

    pub fn break_items(&self, items: &[&str]) {
        let mut broken = self.broken.lock().unwrap();
        broken.extend(items.iter().map(|s| s.to_string()));
    }

    pub fn fix_all(&self) {
        self.broken.lock().unwrap().clear();
    }
}

impl Executor for Flaky {
    fn prepare(
        &self,
        _params: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        Ok(Arc::new(self.clone()))
    }
}

#[async_trait::async_trait]
impl ItemHandler for Flaky {
    async fn run(&self, ctx: &mut ItemContext) -> Result<(), ItemError> {
        let at = self.log.begin(ctx);
        let broken = self.broken.lock().unwrap().contains(ctx.payload());
        let result = if broken {
            Err(ItemError::Retryable(format!("{} is broken", ctx.payload())))
        } else {
            ctx.set_result(format!("done {}", ctx.payload()));
            Ok(())
        };
        self.log.end(at, &result);
        result
    }
}
