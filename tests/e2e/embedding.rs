//! The embedding example (`examples/embed.rs`): its registry, with its own
//! executor, served by the library, used through the generated client;
//! and where an embedded executor's code runs.

#[path = "../../examples/embed.rs"]
#[allow(dead_code)]
mod embed;

use jobvisor::{
    executor::{Executor, ItemContext, ItemError, ItemHandler, PrepareError, Registry},
    pb::{self, job_service_client::JobServiceClient},
    server::{ServerConfig, serve},
};
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};
use tonic::transport::Channel;

/// A server on a fresh embedded store, and a client of it.
struct Served {
    client: JobServiceClient<Channel>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(registry: Registry, configure: impl FnOnce(&mut ServerConfig)) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::embedded(dir.path().join("jobvisor.db"));
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(config, registry, listener, async {
            let _ = stopped.await;
        }));
        let endpoint = format!("http://{addr}");
        let channel = loop {
            if let Ok(c) = tonic::transport::Endpoint::from_shared(endpoint.clone())
                .unwrap()
                .connect()
                .await
            {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Served {
            client: JobServiceClient::new(channel),
            stop,
            server,
            endpoint,
            _dir: dir,
        }
    }

    /// Starts a job, waiting while the server is still starting.
    async fn start_job(&mut self, request: pb::StartJobRequest) -> pb::Job {
        loop {
            match self.client.start_job(request.clone()).await {
                Ok(job) => break job.into_inner(),
                // The port is bound before the store is ready.
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(s) => panic!("{s:?}"),
            }
        }
    }

    /// Waits (at most 10 s) for the job's end; returns it and its items.
    async fn finished(&mut self, id: &str) -> (pb::Job, Vec<pb::Item>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let job = loop {
            let j = self
                .client
                .get_job(pb::GetJobRequest { job_id: id.into() })
                .await
                .unwrap()
                .into_inner();
            if j.end_time.is_some() {
                break j;
            }
            assert!(Instant::now() < deadline, "the job did not end: {j:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let items = self
            .client
            .list_job_items(pb::ListJobItemsRequest {
                job_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .items;
        (job, items)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
    }
}

#[tokio::test]
async fn the_embedded_executor_runs_next_to_the_built_ins() {
    let mut served = Served::start(embed::registry(), |_| {}).await;
    let job = served
        .start_job(pb::StartJobRequest {
            name: "shout".into(),
            executor: "uppercase".into(),
            items: vec!["hello".into(), "wörld".into()],
            params: [("chunk".to_string(), "2".to_string())].into(),
            ..Default::default()
        })
        .await;
    let (done, items) = served.finished(&job.id).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    let results: Vec<&str> = items.iter().map(|i| i.result.as_str()).collect();
    assert_eq!(results, ["HELLO", "WÖRLD"]);
    let client = &mut served.client;
    // Its params are checked like the built-ins'.
    let status = client
        .start_job(pb::StartJobRequest {
            name: "bad".into(),
            executor: "uppercase".into(),
            items: vec!["x".into()],
            params: [("chunk".to_string(), "0".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("params[chunk]"),
        "{}",
        status.message()
    );
    // The built-ins are still there.
    client
        .start_job(pb::StartJobRequest {
            name: "also".into(),
            executor: "sleep".into(),
            items: vec!["x".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    served.stop().await;
}

/// An executor without params whose jobs all run the same handler.
struct Fixed(Arc<dyn ItemHandler>);

impl Executor for Fixed {
    fn prepare(
        &self,
        _params: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        Ok(self.0.clone())
    }
}

/// Reports the name of the thread its item runs on.
struct WhereAmI;

#[async_trait::async_trait]
impl ItemHandler for WhereAmI {
    async fn run(&self, ctx: &mut ItemContext) -> Result<(), ItemError> {
        let thread = std::thread::current();
        ctx.set_result(thread.name().unwrap_or("unnamed").to_string());
        Ok(())
    }
}

/// The engine runs on a runtime of its own (`--engine-threads`), not on
/// the one serving gRPC: here the caller's is this test's single thread,
/// and every item runs on one of the engine's two.
#[tokio::test]
async fn items_run_on_the_engines_own_runtime() {
    let registry = Registry::with_builtins().with("where", Fixed(Arc::new(WhereAmI)));
    let mut served = Served::start(registry, |c| c.engine_threads = Some(2)).await;
    let caller = std::thread::current().name().map(str::to_string);
    let job = served
        .start_job(pb::StartJobRequest {
            name: "where".into(),
            executor: "where".into(),
            items: (0..8).map(|i| format!("item-{i}")).collect(),
            concurrency: 4,
            ..Default::default()
        })
        .await;
    let (done, items) = served.finished(&job.id).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    assert_eq!(items.len(), 8);
    for item in &items {
        assert_eq!(
            item.result, "jobvisor-engine",
            "caller's thread: {caller:?}"
        );
    }
    served.stop().await;
}

/// Blocks its thread for 13 s, as an executor must not.
struct Blocker;

#[async_trait::async_trait]
impl ItemHandler for Blocker {
    async fn run(&self, _ctx: &mut ItemContext) -> Result<(), ItemError> {
        std::thread::sleep(Duration::from_secs(13));
        Ok(())
    }
}

/// Liveness watches the engine's runtime too: an executor that blocks the
/// engine's only thread turns it NOT_SERVING after 10 s, while the gRPC
/// side keeps answering; it is SERVING again once the thread is free.
#[tokio::test]
async fn liveness_fails_while_the_engine_is_wedged() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let registry = Registry::with_builtins().with("block", Fixed(Arc::new(Blocker)));
    let mut served = Served::start(registry, |c| c.engine_threads = Some(1)).await;
    let mut health = HealthClient::new(
        tonic::transport::Endpoint::from_shared(served.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut liveness = async || {
        health
            .check(HealthCheckRequest {
                service: jobvisor::server::LIVENESS.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status()
    };
    assert_eq!(liveness().await, ServingStatus::Serving);
    let job = served
        .start_job(pb::StartJobRequest {
            name: "block".into(),
            executor: "block".into(),
            items: vec!["x".into()],
            ..Default::default()
        })
        .await;
    let started = Instant::now();
    let mut wedged_after = None;
    while started.elapsed() < Duration::from_secs(25) {
        let status = liveness().await;
        match wedged_after {
            None if status == ServingStatus::NotServing => {
                wedged_after = Some(started.elapsed());
                // The gRPC side still answers.
                served
                    .client
                    .get_job(pb::GetJobRequest {
                        job_id: job.id.clone(),
                    })
                    .await
                    .unwrap();
            }
            Some(_) if status == ServingStatus::Serving => break,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wedged_after = wedged_after.expect("liveness never turned NOT_SERVING");
    assert!(
        wedged_after >= Duration::from_secs(8),
        "NOT_SERVING after {wedged_after:?}: a runtime is allowed 10 s between beats"
    );
    assert_eq!(liveness().await, ServingStatus::Serving, "alive again");
    let (done, _) = served.finished(&job.id).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    served.stop().await;
}
