//! A remote worker: your executor, written against the same embedding API
//! as `examples/embed.rs`, running the items of a server's remote executor
//! in a process of its own (on another machine, in another image).
//!
//!     jobvisor serve --remote-executor uppercase
//!     cargo run --example remote_worker -- http://127.0.0.1:50051
//!     jobvisor start --name shout --executor uppercase --item hello --item world --watch
//!
//! Ctrl-C drains: the items in flight stop at their next checkpoint and go
//! back to the server, which gives them to another worker.

use jobvisor::{
    executor::{Executor, ItemContext, ItemError, ItemHandler, Params, PrepareError},
    worker::{Connect, Worker},
};
use std::{collections::BTreeMap, sync::Arc, time::Duration};

/// Uppercases each item a character at a time (slowly, as real work is),
/// saving what is done every `chunk` characters.
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
        let mut done: Vec<char> = ctx
            .checkpoint()
            .map(|c| String::from_utf8_lossy(c).chars().collect())
            .unwrap_or_default();
        if done.len() > text.len() {
            return Err(ItemError::Permanent(
                "checkpoint longer than the item".into(),
            ));
        }
        for c in text[done.len()..].iter() {
            if ctx.stop_requested() {
                return Err(ItemError::Interrupted);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            done.extend(c.to_uppercase());
            ctx.set_progress(done.len() as f32 / text.len().max(1) as f32);
            if done.len().is_multiple_of(self.chunk) {
                ctx.save_checkpoint(done.iter().collect::<String>().into_bytes())
                    .await
                    .map_err(|_| ItemError::Interrupted)?;
            }
        }
        ctx.set_result(done.into_iter().collect());
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let mut server = Connect::from_url(&url)?;
    if let Ok(token) = std::env::var("JOBVISOR_TOKEN") {
        server = server.with_token(&token)?;
    }
    Worker::new(server, "uppercase", Arc::new(Uppercase))
        .slots(4)
        .on_status(|status| eprintln!("{status:?}"))
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
