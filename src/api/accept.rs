//! Accepting connections: TCP, then TLS when configured, then the HTTP/2
//! handshake, all within `--handshake-timeout` of the TCP accept.
//!
//! Neither tonic's TLS nor hyper's HTTP/2 ever give up on a client that
//! opens a connection and then says nothing: each such connection held a
//! socket and a task until the client went away. Here the TLS handshake
//! runs under the deadline (a few at once, beside the accept loop, as
//! tonic ran them), and [`Handshake`] ends the connection if the client's
//! HTTP/2 preface and first SETTINGS frame have not arrived by then. After
//! that the connection is hyper's as before: an idle client that finished
//! its handshake is kept (HTTP/2 keepalive pings find dead ones).

use super::conn::GatheringStream;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    time::{Instant, Sleep},
};
use tokio_rustls::{TlsAcceptor, rustls, server::TlsStream};
use tonic::transport::server::{Connected, TcpIncoming};

/// TLS handshakes under way at once; more connections wait in the
/// listener's backlog until one ends (each within the deadline).
const TLS_HANDSHAKES: usize = 256;

/// What a client sends first on an HTTP/2 connection (RFC 9113, 3.4),
/// before its SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An HTTP/2 frame's header: length (3 bytes), type, flags, stream.
const FRAME_HEADER: usize = 9;

/// The plaintext connections on `listener`, each with `timeout` for its
/// HTTP/2 handshake.
pub fn plain(
    listener: TcpListener,
    timeout: Duration,
) -> impl Stream<Item = io::Result<Handshake<GatheringStream>>> {
    tcp(listener).map_ok(move |tcp| Handshake::new(tcp, Instant::now() + timeout))
}

/// The TLS connections on `listener`, each with `timeout` for its TLS and
/// HTTP/2 handshakes together. A connection whose TLS handshake fails or
/// takes too long is closed and left out.
pub fn tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    timeout: Duration,
) -> impl Stream<Item = io::Result<Handshake<TlsStream<GatheringStream>>>> {
    tcp(listener)
        .map(move |accepted| {
            let acceptor = acceptor.clone();
            async move {
                let tcp = match accepted {
                    Ok(tcp) => tcp,
                    Err(e) => return Some(Err(e)),
                };
                let deadline = Instant::now() + timeout;
                match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => Some(Ok(Handshake::new(tls, deadline))),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(?timeout, "no TLS handshake in time (--handshake-timeout)");
                        None
                    }
                }
            }
        })
        .buffer_unordered(TLS_HANDSHAKES)
        .filter_map(std::future::ready)
}

/// The TCP connections, without Nagle (the builder's `tcp_nodelay`
/// applies only to listeners it binds itself: without it Nagle holds the
/// second frame of each answer until the client's delayed ACK, ~40 ms per
/// call), each gathering its small writes ([`GatheringStream`]).
fn tcp(listener: TcpListener) -> impl Stream<Item = io::Result<GatheringStream>> {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map_ok(GatheringStream::new)
}

/// The TLS server configuration: the certificate chain and key (PEM),
/// client certificates signed by `client_ca` required if given (mTLS), and
/// HTTP/2 offered through ALPN.
pub fn tls_acceptor(
    cert: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the TLS certificate (--tls-cert) is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("the TLS certificate (--tls-cert) holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("the TLS key (--tls-key) is not a PEM private key: {e}"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert =
                    cert.map_err(|e| format!("the client CA (--tls-client-ca) is not PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("the client CA (--tls-client-ca) is not valid: {e}"))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| format!("the client CA (--tls-client-ca) is not usable: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("the TLS certificate and key do not make a pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A connection whose client must finish its HTTP/2 handshake (the preface
/// and its first SETTINGS frame) by a deadline: until then its reads are
/// watched, and past it a read fails, which closes the connection.
pub struct Handshake<S> {
    inner: S,
    /// `None` once the handshake arrived.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The first bytes the client sent, up to the SETTINGS frame's header.
    head: Vec<u8>,
    /// Bytes read so far, while the deadline stands.
    read: usize,
}

impl<S> Handshake<S> {
    fn new(inner: S, deadline: Instant) -> Self {
        Handshake {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            head: Vec::with_capacity(PREFACE.len() + FRAME_HEADER),
            read: 0,
        }
    }

    /// Takes note of what the client sent; whether its handshake is all
    /// there. Bytes that are not an HTTP/2 preface end the watch too:
    /// hyper refuses them and closes the connection itself.
    fn arrived(&mut self, bytes: &[u8]) -> bool {
        self.read += bytes.len();
        let wanted = PREFACE.len() + FRAME_HEADER - self.head.len();
        self.head
            .extend_from_slice(&bytes[..bytes.len().min(wanted)]);
        let preface = self.head.len().min(PREFACE.len());
        if self.head[..preface] != PREFACE[..preface] {
            return true;
        }
        if self.head.len() < PREFACE.len() + FRAME_HEADER {
            return false;
        }
        let header = &self.head[PREFACE.len()..];
        let length =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        self.read >= PREFACE.len() + FRAME_HEADER + length
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Handshake<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(deadline) = &mut this.deadline else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 handshake within --handshake-timeout",
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let got = buf.filled()[before..].to_vec();
        if got.is_empty() || this.arrived(&got) {
            this.deadline = None;
            this.head = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Handshake<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for Handshake<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(payload: usize) -> Vec<u8> {
        let mut frame = vec![0, 0, payload as u8, 4, 0, 0, 0, 0, 0];
        frame.extend(std::iter::repeat_n(0, payload));
        frame
    }

    fn watch() -> Handshake<()> {
        Handshake::new((), Instant::now() + Duration::from_secs(10))
    }

    #[tokio::test]
    async fn the_handshake_is_the_preface_and_a_whole_settings_frame() {
        let mut sent = PREFACE.to_vec();
        sent.extend(settings(12));
        // In any pieces: done only with the frame's last byte.
        for piece in [1, 5, 24, 30, 45] {
            let mut watch = watch();
            let chunks: Vec<&[u8]> = sent.chunks(piece).collect();
            for (n, chunk) in chunks.iter().enumerate() {
                assert_eq!(
                    watch.arrived(chunk),
                    n + 1 == chunks.len(),
                    "pieces of {piece}"
                );
            }
        }
        // Anything else is hyper's to refuse at once.
        assert!(watch().arrived(b"GET / HTTP/1.1\r\n"));
    }
}
