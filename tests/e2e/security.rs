//! Security: TLS and mTLS (and the handshake timeout), bearer tokens and
//! permissions, label scopes, token reload on SIGHUP, rate limits, the exec
//! switch, and secrets kept out of logs and the event log. Servers in this
//! process come from the e2e harness (its TLS, guard and registry
//! options); each test dials its own connections, plaintext or TLS, to
//! see what the server lets through.

use super::harness::{Options, TestApp, TestDb, endpoint, spawn_app_with};
use jobvisor::{
    api::{
        auth::{Permission, Tokens, new_token},
        guard::GuardConfig,
    },
    executor::{
        Registry,
        exec::{CommandPolicy, ExecExecutor, ExecSettings},
    },
    pb::{self, job_service_client::JobServiceClient},
    server::TlsFiles,
};
use jobvisor_testkit::process::{ServerProcess, ServerSpec, free_port};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use sqlx::Connection;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

/// A server in this process with this TLS, guard and registry, on a
/// fresh database; `client_tls` is how the harness's own client reaches it
/// when it serves TLS.
async fn start(
    tls: Option<(TlsFiles, ClientTlsConfig)>,
    guard: GuardConfig,
    registry: Registry,
) -> TestApp {
    start_with(tls, guard, registry, Options::default()).await
}

/// [`start`], with the rest of the harness's options from `options`.
async fn start_with(
    tls: Option<(TlsFiles, ClientTlsConfig)>,
    guard: GuardConfig,
    registry: Registry,
    options: Options,
) -> TestApp {
    let (tls, client_tls) = tls.unzip();
    spawn_app_with(Options {
        tls,
        client_tls,
        guard,
        registry: Some(registry),
        ..options
    })
    .await
}

/// Retries until the server answers (it binds before it is ready).
async fn connect(endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A call that works once connected: GetJob of an unknown id (NOT_FOUND).
async fn probe(channel: Channel) -> Code {
    let mut client = JobServiceClient::new(channel);
    match client
        .get_job(pb::GetJobRequest {
            job_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// A test certificate authority (also the remote worker's mTLS test's).
pub(super) struct Pki {
    /// The CA's certificate, for clients and servers to trust.
    pub(super) ca_pem: String,
    /// Signs the leaves.
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub(super) fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate and key for `cn`, valid for localhost.
    pub(super) fn leaf(&self, cn: &str) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

pub(super) fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Reads until the server closes the connection (`true`), or `within`
/// passes with it open (`false`).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 4096];
    let until_closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, until_closed).await.is_ok()
}

#[tokio::test]
async fn tls_connections_that_never_finish_their_handshakes_are_closed() {
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject as _};
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Pki::new("server-ca");
    let (cert, key) = server_ca.leaf("jobvisor");
    let tls = TlsFiles {
        cert: write(&dir, "server.pem", &cert),
        key: write(&dir, "server.key", &key),
        client_ca: None,
    };
    let trusting = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&server_ca.ca_pem))
        .domain_name("localhost");
    let app = start_with(
        Some((tls, trusting.clone())),
        GuardConfig::default(),
        Registry::with_builtins(),
        Options {
            handshake_timeout: Duration::from_secs(1),
            ..Options::default()
        },
    )
    .await;
    let https = format!("https://localhost:{}", app.addr.port());
    let channel = connect(
        Endpoint::from_shared(https)
            .unwrap()
            .tls_config(trusting)
            .unwrap(),
    )
    .await
    .expect("a client trusting the CA connects");
    assert_eq!(probe(channel.clone()).await, Code::NotFound);

    // No TLS handshake at all.
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    // TLS, then no HTTP/2 preface.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            rustls::pki_types::CertificateDer::from_pem_slice(server_ca.ca_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut quiet = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("the TLS handshake");

    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "a connection without a TLS handshake is still open"
    );
    assert!(
        closed_within(&mut quiet, Duration::from_secs(5)).await,
        "a TLS connection without an HTTP/2 handshake is still open"
    );
    // The client that finished its handshakes goes on.
    assert_eq!(probe(channel).await, Code::NotFound);
    app.stop().await;
}

#[tokio::test]
async fn tls_clients_need_the_right_ca_and_mtls_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Pki::new("server-ca");
    let client_ca = Pki::new("client-ca");
    let (cert, key) = server_ca.leaf("jobvisor");
    let tls = TlsFiles {
        cert: write(&dir, "server.pem", &cert),
        key: write(&dir, "server.key", &key),
        client_ca: None,
    };
    let trusting = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&server_ca.ca_pem))
        .domain_name("localhost");
    let app = start(
        Some((tls.clone(), trusting.clone())),
        GuardConfig::default(),
        Registry::with_builtins(),
    )
    .await;
    let https = format!("https://localhost:{}", app.addr.port());
    let channel = connect(
        Endpoint::from_shared(https.clone())
            .unwrap()
            .tls_config(trusting.clone())
            .unwrap(),
    )
    .await
    .expect("a client trusting the CA connects");
    assert_eq!(probe(channel).await, Code::NotFound);

    // Plaintext against a TLS port fails.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", app.addr.port())).unwrap();
    let failed = match plain.connect().await {
        Err(_) => true,
        Ok(channel) => probe(channel).await != Code::NotFound,
    };
    assert!(failed, "plaintext must not get through");
    // A client trusting another CA fails.
    let stranger = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&client_ca.ca_pem))
        .domain_name("localhost");
    let refused = Endpoint::from_shared(https.clone())
        .unwrap()
        .tls_config(stranger)
        .unwrap()
        .connect()
        .await;
    assert!(
        refused.is_err(),
        "an untrusted server certificate is refused"
    );
    app.stop().await;

    // mTLS: the server wants a certificate from the client CA.
    let tls = TlsFiles {
        client_ca: Some(write(&dir, "client-ca.pem", &client_ca.ca_pem)),
        ..tls
    };
    // The harness's own client has a certificate of its own.
    let (cert, key) = client_ca.leaf("harness");
    let harness = trusting.clone().identity(Identity::from_pem(cert, key));
    let app = start(
        Some((tls, harness)),
        GuardConfig::default(),
        Registry::with_builtins(),
    )
    .await;
    let https = format!("https://localhost:{}", app.addr.port());
    let anonymous = Endpoint::from_shared(https.clone())
        .unwrap()
        .tls_config(trusting.clone())
        .unwrap();
    let rejected = match anonymous.connect().await {
        Err(_) => true,
        Ok(channel) => probe(channel).await != Code::NotFound,
    };
    assert!(rejected, "mTLS rejects a client without a certificate");
    let (cert, key) = client_ca.leaf("alice");
    let identified = trusting.identity(Identity::from_pem(cert, key));
    let channel = connect(
        Endpoint::from_shared(https)
            .unwrap()
            .tls_config(identified)
            .unwrap(),
    )
    .await
    .unwrap();
    let mut client = JobServiceClient::new(channel);
    let job = client
        .start_job(gate_job(&BTreeMap::new()))
        .await
        .unwrap()
        .into_inner();
    let paused = client
        .pause_job(pb::PauseJobRequest {
            job_id: job.id.clone(),
            reason: "mtls".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The certificate subject is who asked.
    assert!(
        paused.pauses[0].requested_by.contains("CN=alice"),
        "{:?}",
        paused.pauses
    );
    app.stop().await;
}

fn gate_job(labels: &BTreeMap<String, String>) -> pb::StartJobRequest {
    pb::StartJobRequest {
        name: "sec".into(),
        executor: "sleep".into(),
        items: (0..5).map(|i| i.to_string()).collect(),
        params: [("duration_ms".to_string(), "60000".to_string())].into(),
        labels: labels.clone().into_iter().collect(),
        ..Default::default()
    }
}

/// One token to put in a file: name, permissions, scope labels.
type TokenSpec<'a> = (&'a str, &'a [Permission], &'a [(&'a str, &'a str)]);

/// A token file with these entries; returns the tokens.
fn token_file(dir: &tempfile::TempDir, entries: &[TokenSpec]) -> (PathBuf, Vec<String>) {
    let mut tokens = Vec::new();
    let mut json = Vec::new();
    for (name, permissions, scope) in entries {
        let scope: BTreeMap<String, String> = scope
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (token, entry) = new_token(name, permissions, &scope);
        tokens.push(token);
        json.push(entry);
    }
    let path = write(
        dir,
        "tokens.json",
        &serde_json::json!({ "tokens": json }).to_string(),
    );
    (path, tokens)
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// ControlJobs' actions, each called by [`every_rpc`] (named by the
/// action: `CONTROL_ACTION_PAUSE`, …).
const BULK_ACTIONS: [pb::ControlAction; 3] = [
    pb::ControlAction::Pause,
    pb::ControlAction::Resume,
    pb::ControlAction::Cancel,
];

/// A ControlJobs call on one job as the code a call on that job alone
/// would have: its outcome's error, or OK.
fn outcome_code(response: &pb::ControlJobsResponse) -> Code {
    let [outcome] = response.outcomes.as_slice() else {
        panic!("one job named, one outcome: {response:?}");
    };
    match outcome.error_code.as_str() {
        "" => Code::Ok,
        "NOT_FOUND" => Code::NotFound,
        "FAILED_PRECONDITION" => Code::FailedPrecondition,
        other => panic!("unexpected outcome {other}: {outcome:?}"),
    }
}

/// Calls every RPC of the service with `token`; returns each one's code.
async fn every_rpc(
    client: &mut JobServiceClient<Channel>,
    token: Option<&str>,
    job: &str,
) -> Vec<(&'static str, Code)> {
    let code = |r: Result<(), tonic::Status>| r.err().map(|s| s.code()).unwrap_or(Code::Ok);
    let id = job.to_string();
    let mut out = Vec::new();
    out.push((
        "StartJob",
        code(
            client
                .start_job(with_token(gate_job(&BTreeMap::new()), token))
                .await
                .map(|_| ()),
        ),
    ));
    // RunJob of a new name starts a job: the start permission.
    out.push((
        "RunJob",
        code(
            client
                .run_job(with_token(
                    pb::RunJobRequest {
                        job: Some(pb::StartJobRequest {
                            name: format!("run-{}", uuid::Uuid::new_v4()),
                            ..gate_job(&BTreeMap::new())
                        }),
                        reason: String::new(),
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        ),
    ));
    // A dry run needs the permission a start does.
    out.push((
        "StartJob",
        code(
            client
                .start_job(with_token(
                    pb::StartJobRequest {
                        validate_only: true,
                        ..gate_job(&BTreeMap::new())
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        ),
    ));
    // Adding items is starting work: the start permission, in scope.
    out.push((
        "AddItems",
        code(
            client
                .add_items(with_token(
                    pb::AddItemsRequest {
                        job_id: id.clone(),
                        items: vec!["late".into()],
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "GetJob",
        code(
            client
                .get_job(with_token(pb::GetJobRequest { job_id: id.clone() }, token))
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "ListJobs",
        code(
            client
                .list_jobs(with_token(pb::ListJobsRequest::default(), token))
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "ListJobItems",
        code(
            client
                .list_job_items(with_token(
                    pb::ListJobItemsRequest {
                        job_id: id.clone(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "WatchJob",
        code(
            client
                .watch_job(with_token(
                    pb::WatchJobRequest {
                        job_id: id.clone(),
                        from_sequence: 0,
                        window: None,
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "PauseJob",
        code(
            client
                .pause_job(with_token(
                    pb::PauseJobRequest {
                        job_id: id.clone(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "ResumeJob",
        code(
            client
                .resume_job(with_token(
                    pb::ResumeJobRequest {
                        job_id: id.clone(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "SetJobRateLimit",
        code(
            client
                .set_job_rate_limit(with_token(
                    pb::SetJobRateLimitRequest {
                        job_id: id.clone(),
                        rate_limit: 100,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "SetJobConcurrency",
        code(
            client
                .set_job_concurrency(with_token(
                    pb::SetJobConcurrencyRequest {
                        job_id: id.clone(),
                        concurrency: 3,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "RetryFailedItems",
        code(
            client
                .retry_failed_items(with_token(
                    pb::RetryFailedItemsRequest {
                        job_id: id.clone(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        ),
    ));
    for action in BULK_ACTIONS {
        let response = client
            .control_jobs(with_token(
                pb::ControlJobsRequest {
                    action: action as i32,
                    job_ids: vec![id.clone()],
                    ..Default::default()
                },
                token,
            ))
            .await;
        out.push((
            action.as_str_name(),
            match response {
                Ok(response) => outcome_code(&response.into_inner()),
                Err(status) => status.code(),
            },
        ));
    }
    out.push((
        "CancelItems",
        code(
            client
                .cancel_items(with_token(
                    pb::CancelItemsRequest {
                        job_id: id.clone(),
                        indexes: vec![0],
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "CancelJob",
        code(
            client
                .cancel_job(with_token(
                    pb::CancelJobRequest {
                        job_id: id.clone(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        ),
    ));
    out.push((
        "DeleteJob",
        code(
            client
                .delete_job(with_token(pb::DeleteJobRequest { job_id: id }, token))
                .await
                .map(|_| ()),
        ),
    ));
    out
}

#[tokio::test]
async fn every_rpc_needs_a_valid_token_with_its_permission() {
    use Permission::*;
    let dir = tempfile::tempdir().unwrap();
    let (path, tokens) = token_file(
        &dir,
        &[
            ("ops", &[Admin], &[]),
            ("reader", &[Read], &[]),
            ("starter", &[Start], &[]),
        ],
    );
    let guard = GuardConfig {
        tokens: Some(Arc::new(Tokens::load(&path).unwrap())),
        ..GuardConfig::default()
    };
    let app = start(None, guard, Registry::with_builtins()).await;
    let channel = connect(endpoint(app.addr)).await.unwrap();
    let mut client = JobServiceClient::new(channel.clone());
    let admin = tokens[0].as_str();
    let job = client
        .start_job(with_token(gate_job(&BTreeMap::new()), Some(admin)))
        .await
        .unwrap()
        .into_inner();

    for (rpc, code) in every_rpc(&mut client, None, &job.id).await {
        assert_eq!(code, Code::Unauthenticated, "{rpc} without a token");
    }
    for (rpc, code) in every_rpc(&mut client, Some("jv_not_a_token"), &job.id).await {
        assert_eq!(code, Code::Unauthenticated, "{rpc} with a wrong token");
    }
    let reads = ["GetJob", "ListJobs", "ListJobItems", "WatchJob"];
    for (rpc, code) in every_rpc(&mut client, Some(&tokens[1]), &job.id).await {
        let expected = if reads.contains(&rpc) {
            Code::Ok
        } else {
            Code::PermissionDenied
        };
        assert_eq!(code, expected, "{rpc} with a read token");
    }
    for (rpc, code) in every_rpc(&mut client, Some(&tokens[2]), &job.id).await {
        let expected = if rpc == "StartJob" || rpc == "RunJob" || rpc == "AddItems" {
            Code::Ok
        } else {
            Code::PermissionDenied
        };
        assert_eq!(code, expected, "{rpc} with a start token");
    }
    for (rpc, code) in every_rpc(&mut client, Some(admin), &job.id).await {
        assert!(
            matches!(code, Code::Ok | Code::FailedPrecondition),
            "{rpc} with admin: {code:?}"
        );
    }
    // Health stays open by default.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no token");
    app.stop().await;
}

#[tokio::test]
async fn scoped_tokens_see_and_touch_only_their_teams_jobs() {
    use Permission::*;
    let dir = tempfile::tempdir().unwrap();
    let (path, tokens) = token_file(
        &dir,
        &[
            ("video-ci", &[Read, Start, Control], &[("team", "video")]),
            ("data-ci", &[Read, Start, Control], &[("team", "data")]),
        ],
    );
    let guard = GuardConfig {
        tokens: Some(Arc::new(Tokens::load(&path).unwrap())),
        ..GuardConfig::default()
    };
    let app = start(None, guard, Registry::with_builtins()).await;
    let channel = connect(endpoint(app.addr)).await.unwrap();
    let mut client = JobServiceClient::new(channel);
    let (video, data) = (Some(tokens[0].as_str()), Some(tokens[1].as_str()));

    let job = client
        .start_job(with_token(gate_job(&BTreeMap::new()), video))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        job.labels.get("team").map(String::as_str),
        Some("video"),
        "the scope label is added"
    );
    let other = [("team".to_string(), "data".to_string())].into();
    let status = client
        .start_job(with_token(gate_job(&other), video))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // The data team neither lists nor finds nor controls it.
    let listed = client
        .list_jobs(with_token(pb::ListJobsRequest::default(), data))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty());
    for (rpc, code) in every_rpc(&mut client, data, &job.id).await {
        if rpc != "StartJob" && rpc != "RunJob" && rpc != "ListJobs" {
            assert_eq!(code, Code::NotFound, "{rpc} across teams");
        }
    }
    // The video team does, and its name is recorded with its calls.
    let listed = client
        .list_jobs(with_token(pb::ListJobsRequest::default(), video))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 1);
    let paused = client
        .pause_job(with_token(
            pb::PauseJobRequest {
                job_id: job.id.clone(),
                reason: "window".into(),
                request_id: "r-1".into(),
                ..Default::default()
            },
            video,
        ))
        .await
        .unwrap()
        .into_inner();
    let record = &paused.pauses[0];
    assert_eq!(
        (
            record.requested_by.as_str(),
            record.reason.as_str(),
            record.request_id.as_str()
        ),
        ("video-ci", "window", "r-1")
    );
    app.stop().await;
}

/// ControlJobs by labels: a scoped token's selector that names another
/// value of a scope label selects nothing, for every action. (The scope
/// used to overwrite the caller's value, so `team=audio` from a video
/// token acted on every video job.)
#[tokio::test]
async fn a_scoped_selector_naming_another_scope_selects_nothing() {
    use Permission::*;
    let dir = tempfile::tempdir().unwrap();
    let (path, tokens) = token_file(
        &dir,
        &[
            ("video-ci", &[Read, Start, Control], &[("team", "video")]),
            ("audio-ci", &[Read, Start, Control], &[("team", "audio")]),
        ],
    );
    let guard = GuardConfig {
        tokens: Some(Arc::new(Tokens::load(&path).unwrap())),
        ..GuardConfig::default()
    };
    let app = start(None, guard, Registry::with_builtins()).await;
    let channel = connect(endpoint(app.addr)).await.unwrap();
    let mut client = JobServiceClient::new(channel);
    let (video, audio) = (Some(tokens[0].as_str()), Some(tokens[1].as_str()));
    let mut jobs = Vec::new();
    for token in [video, audio] {
        let job = client
            .start_job(with_token(gate_job(&BTreeMap::new()), token))
            .await
            .unwrap()
            .into_inner();
        jobs.push((token, job.id));
    }
    let selector = |pairs: &[(&str, &str)]| -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let conflicting = [
        (video, selector(&[("team", "audio")])),
        (video, selector(&[("team", "nonexistent")])),
        (video, selector(&[("team", "audio"), ("env", "prod")])),
        (audio, selector(&[("team", "video")])),
        (audio, selector(&[("team", "nonexistent")])),
    ];
    // Resume first: on a running job it would be refused (an outcome),
    // so each action shows whether anything was selected.
    for action in [
        pb::ControlAction::Resume,
        pb::ControlAction::Pause,
        pb::ControlAction::Cancel,
    ] {
        for (token, labels) in &conflicting {
            let response = client
                .control_jobs(with_token(
                    pb::ControlJobsRequest {
                        action: action as i32,
                        labels: labels.clone(),
                        reason: "probe".into(),
                        ..Default::default()
                    },
                    *token,
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(
                response.outcomes.is_empty(),
                "{} with {labels:?} selected {:?}",
                action.as_str_name(),
                response.outcomes
            );
        }
    }
    for (token, id) in &jobs {
        let job = client
            .get_job(with_token(pb::GetJobRequest { job_id: id.clone() }, *token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(job.state, pb::JobState::Running as i32, "{job:?}");
        assert!(job.pauses.is_empty(), "{:?}", job.pauses);
    }
    // The selector of its own scope still works, and only there.
    let response = client
        .control_jobs(with_token(
            pb::ControlJobsRequest {
                action: pb::ControlAction::Cancel as i32,
                labels: selector(&[("team", "video")]),
                ..Default::default()
            },
            video,
        ))
        .await
        .unwrap()
        .into_inner();
    let cancelled: Vec<&str> = response
        .outcomes
        .iter()
        .map(|o| o.job_id.as_str())
        .collect();
    assert_eq!(cancelled, [jobs[0].1.as_str()]);
    let untouched = client
        .get_job(with_token(
            pb::GetJobRequest {
                job_id: jobs[1].1.clone(),
            },
            audio,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(untouched.state, pb::JobState::Running as i32);
    app.stop().await;
}

/// StartJob's request ids belong to the caller's scope: another team's
/// key is neither refused (which would tell that it exists) nor found.
#[tokio::test]
async fn request_ids_are_not_shared_across_scopes() {
    use Permission::*;
    let dir = tempfile::tempdir().unwrap();
    let (path, tokens) = token_file(
        &dir,
        &[
            ("video-ci", &[Read, Start, Control], &[("team", "video")]),
            ("audio-ci", &[Read, Start, Control], &[("team", "audio")]),
        ],
    );
    let guard = GuardConfig {
        tokens: Some(Arc::new(Tokens::load(&path).unwrap())),
        ..GuardConfig::default()
    };
    let app = start(None, guard, Registry::with_builtins()).await;
    let channel = connect(endpoint(app.addr)).await.unwrap();
    let mut client = JobServiceClient::new(channel);
    let (video, audio) = (Some(tokens[0].as_str()), Some(tokens[1].as_str()));
    let keyed = || pb::StartJobRequest {
        request_id: "nightly-2026-12-07".into(),
        ..gate_job(&BTreeMap::new())
    };
    let mut started = Vec::new();
    for token in [video, audio] {
        let job = client
            .start_job(with_token(keyed(), token))
            .await
            .unwrap_or_else(|s| panic!("each team's first use of the key starts a job: {s:?}"))
            .into_inner();
        started.push(job);
    }
    assert_ne!(started[0].id, started[1].id);
    assert_eq!(
        started[1].labels.get("team").map(String::as_str),
        Some("audio")
    );
    // A retry within each scope is that scope's job.
    for (token, first) in [video, audio].into_iter().zip(&started) {
        let again = client
            .start_job(with_token(keyed(), token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.id, first.id);
    }
    app.stop().await;
}

#[tokio::test]
async fn rate_and_concurrency_limits_trip_and_recover() {
    let guard = GuardConfig {
        rate_per_second: 5,
        rate_burst: 5,
        ..GuardConfig::default()
    };
    let app = start(None, guard, Registry::with_builtins()).await;
    let channel = connect(endpoint(app.addr)).await.unwrap();
    let mut client = JobServiceClient::new(channel);
    let mut limited = None;
    for _ in 0..20 {
        if let Err(s) = client.list_jobs(pb::ListJobsRequest::default()).await
            && s.code() == Code::ResourceExhausted
        {
            limited = Some(s);
            break;
        }
    }
    let status = limited.expect("the rate limit trips");
    use tonic_types::StatusExt;
    let retry = status.get_details_retry_info().and_then(|r| r.retry_delay);
    assert!(retry.is_some(), "RetryInfo says when to retry: {status:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("it recovers");
    app.stop().await;

    // One request at a time per caller: a second one while a big StartJob
    // is being stored is turned away, and accepted once it is done.
    let guard = GuardConfig {
        concurrent_per_caller: 1,
        ..GuardConfig::default()
    };
    let app = start(None, guard, Registry::with_builtins()).await;
    let channel = connect(endpoint(app.addr)).await.unwrap();
    let mut big = gate_job(&BTreeMap::new());
    big.items = (0..200_000).map(|i| i.to_string()).collect();
    let mut starter = JobServiceClient::new(channel.clone());
    let start = tokio::spawn(async move { starter.start_job(big).await.map(|_| ()) });
    // Another connection from the same caller (the same address).
    drop(channel);
    let other = connect(endpoint(app.addr)).await.unwrap();
    let mut client = JobServiceClient::new(other);
    let mut turned_away = false;
    let mut tries = 0;
    while !start.is_finished() {
        tries += 1;
        if let Err(s) = client.list_jobs(pb::ListJobsRequest::default()).await {
            assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
            turned_away = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        turned_away,
        "a second concurrent request is refused ({tries} tries)"
    );
    start
        .await
        .unwrap()
        .expect("the first request went through");
    client
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("accepted again");
    app.stop().await;
}

#[tokio::test]
async fn exec_is_off_unless_enabled_and_limited_to_its_commands() {
    let app = start(None, GuardConfig::default(), Registry::with_builtins()).await;
    let channel = connect(endpoint(app.addr)).await.unwrap();
    let mut client = JobServiceClient::new(channel);
    let exec = |command: &str| pb::StartJobRequest {
        name: "x".into(),
        executor: "exec".into(),
        items: vec!["a".into()],
        params: [("command".to_string(), command.to_string())].into(),
        ..Default::default()
    };
    let status = client.start_job(exec("/bin/true")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("--allow-exec"),
        "{}",
        status.message()
    );
    app.stop().await;

    let registry = Registry::with_builtins().with_exec(
        ExecExecutor::new(&ExecSettings {
            commands: CommandPolicy::Only(vec!["/bin/true".into()]),
            ..ExecSettings::default()
        })
        .unwrap(),
    );
    let app = start(None, GuardConfig::default(), registry).await;
    let channel = connect(endpoint(app.addr)).await.unwrap();
    let mut client = JobServiceClient::new(channel);
    client
        .start_job(exec("/bin/true"))
        .await
        .expect("an allowed command");
    let status = client.start_job(exec("/bin/rm")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("not allowed"),
        "{}",
        status.message()
    );
    app.stop().await;
}

/// Token reload on SIGHUP, with the real binary: a new token works at once,
/// a removed one stops working, and an open WatchJob stream goes on.
#[tokio::test]
async fn sighup_reloads_tokens_without_dropping_streams() {
    use Permission::*;
    let dir = tempfile::tempdir().unwrap();
    let (path, first) = token_file(&dir, &[("ops", &[Admin], &[])]);
    let database = TestDb::create().await;
    let log = dir.path().join("server.log");
    let spec = ServerSpec {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jobvisor")),
        addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
        database_url: database.url.clone(),
        args: vec!["--auth-tokens".into(), path.display().to_string()],
        log: log.clone(),
        env: vec![],
        cwd: None,
    };
    let server = ServerProcess::start(&spec).await.unwrap();
    let channel = connect(endpoint(spec.addr)).await.unwrap();
    let mut client = JobServiceClient::new(channel);
    let ops = Some(first[0].as_str());
    let job = client
        .start_job(with_token(gate_job(&BTreeMap::new()), ops))
        .await
        .unwrap()
        .into_inner();
    let mut stream = client
        .watch_job(with_token(
            pb::WatchJobRequest {
                job_id: job.id.clone(),
                from_sequence: 0,
                window: None,
            },
            ops,
        ))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("snapshot");

    // Replace the file: a new controller, and ops removed.
    let (_, second) = token_file(&dir, &[("oncall", &[Control, Read], &[])]);
    let pid = rustix::process::Pid::from_raw(server.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let oncall = Some(second[0].as_str());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client
            .pause_job(with_token(
                pb::PauseJobRequest {
                    job_id: job.id.clone(),
                    ..Default::default()
                },
                oncall,
            ))
            .await
        {
            Ok(_) => break,
            Err(s) if s.code() == Code::Unauthenticated && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("the new token should work after SIGHUP: {s:?}"),
        }
    }
    let old = client
        .get_job(with_token(
            pb::GetJobRequest {
                job_id: job.id.clone(),
            },
            ops,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        old.code(),
        Code::Unauthenticated,
        "the removed token no longer works"
    );
    // The stream opened before the reload still delivers: the pause.
    let paused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = stream
                .message()
                .await
                .unwrap()
                .expect("the stream is still open");
            if let Some(pb::job_event::Kind::StateChanged(c)) = event.kind
                && c.to == pb::JobState::Pausing as i32
            {
                return c;
            }
        }
    })
    .await
    .expect("the pause reaches the old stream");
    assert_eq!(paused.requested_by, "oncall");
    drop(server);
    database.drop_db().await;
}

/// Secrets never reach the logs or the event log.
#[tokio::test]
async fn passwords_and_tokens_stay_out_of_logs_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let (path, tokens) = token_file(&dir, &[("ops", &[Permission::Admin], &[])]);
    let database = TestDb::create().await;
    let password = "pw-s3cr3t-8842";
    // Trust authentication ignores the password, so it only has to be kept
    // secret, not checked.
    let url = database
        .url
        .replace("postgres@", &format!("postgres:{password}@"));
    let log = dir.path().join("server.log");
    let spec = ServerSpec {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jobvisor")),
        addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
        database_url: url,
        args: vec!["--auth-tokens".into(), path.display().to_string()],
        log: log.clone(),
        env: vec![("RUST_LOG".into(), "debug".into())],
        cwd: None,
    };
    let mut server = ServerProcess::start(&spec).await.unwrap();
    let channel = connect(endpoint(spec.addr)).await.unwrap();
    let mut client = JobServiceClient::new(channel);
    let token = Some(tokens[0].as_str());
    let mut request = gate_job(&BTreeMap::new());
    request.params = [("duration_ms".to_string(), "5".to_string())].into();
    let job = client
        .start_job(with_token(request, token))
        .await
        .unwrap()
        .into_inner();
    let _ = client
        .pause_job(with_token(
            pb::PauseJobRequest {
                job_id: job.id.clone(),
                reason: "r".into(),
                ..Default::default()
            },
            token,
        ))
        .await;
    let _ = client
        .cancel_job(with_token(
            pb::CancelJobRequest {
                job_id: job.id.clone(),
                ..Default::default()
            },
            token,
        ))
        .await;
    // And a failed call with the token in it.
    let _ = client
        .get_job(with_token(
            pb::GetJobRequest {
                job_id: "nope".into(),
            },
            token,
        ))
        .await;
    server.terminate(Duration::from_secs(10)).await.unwrap();

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.len() > 200, "the server logged something: {logs}");
    let mut db = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let events: Vec<String> = sqlx::query_scalar("SELECT body::text FROM job_events")
        .fetch_all(&mut db)
        .await
        .unwrap();
    let events = events.join("\n");
    for secret in [password, tokens[0].as_str()] {
        assert!(!logs.contains(secret), "a secret leaked into the log");
        assert!(
            !events.contains(secret),
            "a secret leaked into the event log"
        );
    }
    drop(db);
    database.drop_db().await;
}
