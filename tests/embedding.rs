//! The embedding example (`examples/embed.rs`): its registry, with its own
//! executor, served by the library, used through the generated client.

#[path = "../examples/embed.rs"]
#[allow(dead_code)]
mod embed;

use jobvisor::{
    pb::{self, job_service_client::JobServiceClient},
    server::{ServerConfig, serve},
};
use std::time::{Duration, Instant};

#[tokio::test]
async fn the_embedded_executor_runs_next_to_the_built_ins() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::embedded(dir.path().join("jobvisor.db"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(config, embed::registry(), listener, async {
        let _ = stopped.await;
    }));
    let channel = loop {
        if let Ok(c) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut client = JobServiceClient::new(channel);
    let job = loop {
        let request = pb::StartJobRequest {
            name: "shout".into(),
            executor: "uppercase".into(),
            items: vec!["hello".into(), "wörld".into()],
            params: [("chunk".to_string(), "2".to_string())].into(),
            ..Default::default()
        };
        match client.start_job(request).await {
            Ok(job) => break job.into_inner(),
            // The port is bound before the store is ready.
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(s) => panic!("{s:?}"),
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        let j = client
            .get_job(pb::GetJobRequest {
                job_id: job.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if j.end_time.is_some() {
            break j;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    let items = client
        .list_job_items(pb::ListJobItemsRequest {
            job_id: job.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    let results: Vec<&str> = items.iter().map(|i| i.result.as_str()).collect();
    assert_eq!(results, ["HELLO", "WÖRLD"]);
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
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}
