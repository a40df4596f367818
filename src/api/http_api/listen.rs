//! The HTTP API's listener: HTTP/1.1 and HTTP/2, in TLS when the gRPC
//! port is (the same certificate and client CA), until told to stop.
//!
//! Each request carries its connection's address and, under TLS, the
//! client's certificates, as tonic's connections do: the guard reads the
//! caller from them the same way on both ports.

use axum::Router;
use http::Extensions;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use std::{sync::Arc, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected as _, TcpConnectInfo, TlsConnectInfo};
use tower::ServiceExt as _;

/// Serves `router` on `listener` until `stop` is cancelled; then stops
/// accepting, lets each connection finish the answers under way (an
/// events stream ends when the engine stops) and returns.
/// `handshake_timeout` bounds a connection's TLS handshake and the time
/// an HTTP/1.1 client takes to send a request's headers.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    handshake_timeout: Duration,
    stop: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout);
    let builder = Arc::new(builder);
    let mut connections = JoinSet::new();
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, say: wait a little.
                    tracing::warn!(error = %e, "HTTP API: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let connection = Connection {
            router: router.clone(),
            builder: builder.clone(),
            stop: stop.clone(),
        };
        connections.spawn(connection.run(tcp, tls.clone(), handshake_timeout));
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

struct Connection {
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: CancellationToken,
}

impl Connection {
    async fn run(self, tcp: TcpStream, tls: Option<TlsAcceptor>, timeout: Duration) {
        let Some(acceptor) = tls else {
            let info = tcp.connect_info();
            return self.serve(tcp, info).await;
        };
        match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                let info = tls.connect_info();
                self.serve(tls, info).await;
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "HTTP API: TLS handshake failed"),
            Err(_) => tracing::debug!(?timeout, "HTTP API: no TLS handshake in time"),
        }
    }

    async fn serve<I, C>(self, io: I, info: C)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        C: Clone + Send + Sync + 'static,
    {
        let router = self.router;
        let service = hyper::service::service_fn(move |mut request: http::Request<_>| {
            request.extensions_mut().insert(info.clone());
            router.clone().oneshot(request)
        });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => {}
            () = self.stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    }
}

/// Copies what the guard reads of a connection (address, client
/// certificates) from an HTTP request to the gRPC call made for it.
pub fn copy_connection(from: &Extensions, to: &mut Extensions) {
    if let Some(tcp) = from.get::<TcpConnectInfo>() {
        to.insert(tcp.clone());
    }
    if let Some(tls) = from.get::<TlsConnectInfo<TcpConnectInfo>>() {
        to.insert(tls.clone());
    }
}

/// The gRPC port's TLS configuration for HTTP clients: the same
/// certificate and client CA, offering HTTP/1.1 beside HTTP/2.
pub fn tls_for_http(grpc: &TlsAcceptor) -> TlsAcceptor {
    let mut config = (**grpc.config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}
