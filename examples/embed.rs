//! Running jobvisor as a library, with an executor of your own registered
//! next to the built-ins. Your code runs in-process for every item, with
//! checkpoints, stop requests and results, under the same guarantees.
//!
//!     cargo run --example embed
//!     jobvisor start --name shout --executor uppercase --item hello --item world --watch
//!
//! The test `tests/e2e/embedding.rs` runs this very file's `registry()`.

use jobvisor::{
    executor::{Executor, ItemContext, ItemError, ItemHandler, Params, PrepareError, Registry},
    server::{ServerConfig, serve},
};
use std::{collections::BTreeMap, sync::Arc};

/// Uppercases each item, a character at a time, with a checkpoint every
/// `chunk` characters so a paused or crashed item resumes where it was.
struct Uppercase;

struct UppercaseJob {
    chunk: usize,
}

impl Executor for Uppercase {
    fn prepare(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        let mut p = Params::new(params, &["chunk"]);
        let chunk: usize = p.parse_or("chunk", 4, "a number of characters");
        if chunk == 0 {
            p.invalid("chunk", "must be at least 1");
        }
        p.finish()?;
        Ok(Arc::new(UppercaseJob { chunk }))
    }
}

#[async_trait::async_trait]
impl ItemHandler for UppercaseJob {
    async fn run(&self, ctx: &mut ItemContext) -> Result<(), ItemError> {
        let text: Vec<char> = ctx.payload().chars().collect();
        // The checkpoint is what is done so far.
        let mut done: String = ctx
            .checkpoint()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .unwrap_or_default();
        if done.chars().count() > text.len() {
            return Err(ItemError::Permanent(
                "checkpoint longer than the item".into(),
            ));
        }
        for c in text[done.chars().count()..].iter() {
            if ctx.stop_requested() {
                return Err(ItemError::Interrupted);
            }
            done.extend(c.to_uppercase());
            if done.chars().count().is_multiple_of(self.chunk) {
                ctx.save_checkpoint(done.clone().into_bytes())
                    .await
                    .map_err(|_| ItemError::Interrupted)?;
            }
        }
        ctx.set_result(done);
        Ok(())
    }
}

/// The built-in executors plus ours.
pub fn registry() -> Registry {
    Registry::with_builtins().with("uppercase", Uppercase)
}

#[tokio::main]
#[allow(dead_code)]
async fn main() -> anyhow::Result<()> {
    jobvisor::telemetry::init(jobvisor::telemetry::LogFormat::Text)?;
    let config = ServerConfig::embedded("./jobvisor-data/embed.db");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(config, registry(), listener, shutdown).await
}
