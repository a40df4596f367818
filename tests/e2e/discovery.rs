//! What a client with no .proto file sees: reflection (v1 and v1alpha)
//! and health.

use super::harness::spawn_app;
use tonic_reflection::pb::{v1, v1alpha};

#[tokio::test]
async fn reflection_lists_and_describes_the_service() {
    let app = spawn_app().await;
    let channel = super::harness::connect(app.addr).await;

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = stream.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("unexpected answer {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["jobvisor.v1.JobService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }

    // v1alpha (older grpcurl) resolves the service's file, and the error
    // detail types are resolvable too.
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    for symbol in ["jobvisor.v1.JobService", "google.rpc.BadRequest"] {
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                    symbol.into(),
                ),
            ),
        };
        let mut stream = alpha
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let answer = stream.message().await.unwrap().unwrap();
        assert!(
            matches!(
                answer.message_response,
                Some(
                    v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_)
                )
            ),
            "{symbol}: {answer:?}"
        );
    }
    app.stop().await;
}
