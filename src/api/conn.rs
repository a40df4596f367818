//! The server's TCP connections: what HTTP/2 writes is gathered and
//! written by a task of the connection's own, once per burst instead of
//! once per frame.
//!
//! h2 writes a DATA frame of 256 bytes or more by pointing at its payload,
//! and hands it to the connection (a `writev`, and a flush) before it
//! takes the next frame. On a plain `TcpStream` each such frame is a
//! system call. A watch stream's batch is usually a few hundred bytes, and
//! a thousand streams each get one per window: `bench watchers` made about
//! one write per frame (16,000 per connection over a run), and the client
//! woke once per segment.
//!
//! Here a write copies the bytes into the connection's buffer and wakes
//! its writer task, and a flush returns at once: the bytes are the
//! writer's, which writes them without being asked again. The writer lets
//! the tasks that are ready run first (`yield_now`, until a turn passes in
//! which nothing more came), so the frames of the streams woken together
//! leave together: about 1,000 writes per connection over the same run
//! (`sendto` calls counted with `perf stat`). A lone answer waits one
//! turn of the scheduler, microseconds on an idle server.
//!
//! An idle connection holds no buffer and one task.
//!
//! Writes wait (return `Pending`) while [`LIMIT`] bytes are waiting, so a
//! client that does not read still holds the connection back as a full
//! socket would. A failed write fails every later write, flush and
//! shutdown. Shutdown waits until the writer has written everything and
//! shut the socket's write side. A connection dropped without a shutdown
//! still gets what it was handed, for at most [`DROP_GRACE`].

use bytes::BytesMut;
use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::Notify,
    task::JoinHandle,
};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes that may wait for the writer before writes wait too.
pub const LIMIT: usize = 256 * 1024;
/// How many turns of the scheduler the writer lets pass at most while
/// more keeps coming.
const TURNS: usize = 16;
/// How long the writer of a connection dropped without a shutdown may
/// take to write what it was handed.
pub const DROP_GRACE: Duration = Duration::from_secs(5);

/// A TCP connection whose writes a task of its own gathers (see the
/// module docs). Callers see the same connection info as for a plain
/// `TcpStream`.
#[derive(Debug)]
pub struct GatheringStream {
    read: OwnedReadHalf,
    shared: Arc<Shared>,
    info: TcpConnectInfo,
    writer: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer.
    more: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes handed in, not yet taken by the writer.
    pending: BytesMut,
    /// Why the writer stopped: every later call gets it.
    failed: Option<(io::ErrorKind, String)>,
    /// Shutdown asked for: the writer writes what is left, then shuts the
    /// write side.
    closing: bool,
    /// The write side is shut (or the writer failed).
    closed: bool,
    /// The connection's task, waiting for room or for the shutdown.
    waiter: Option<Waker>,
}

impl State {
    fn failure(&self) -> Option<io::Error> {
        self.failed
            .as_ref()
            .map(|(kind, message)| io::Error::new(*kind, message.clone()))
    }

    fn wait(&mut self, cx: &Context<'_>) {
        match &self.waiter {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => self.waiter = Some(cx.waker().clone()),
        }
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waiter.take() {
            waker.wake();
        }
    }

    fn fail(&mut self, e: &io::Error) {
        self.failed = Some((e.kind(), e.to_string()));
        self.closed = true;
        self.wake();
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("connection state lock")
    }
}

impl GatheringStream {
    /// Splits the connection and starts its writer on the current runtime.
    pub fn new(stream: TcpStream) -> GatheringStream {
        let info = stream.connect_info();
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared::default());
        let writer = tokio::spawn(write_out(write, shared.clone()));
        GatheringStream {
            read,
            shared,
            info,
            writer: Some(writer),
        }
    }

    /// Copies what fits into the buffer and wakes the writer.
    fn hand_in(&self, cx: &Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let mut state = self.shared.state();
        if let Some(e) = state.failure() {
            return Poll::Ready(Err(e));
        }
        if state.closing {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if bufs.iter().all(|buf| buf.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        let room = LIMIT.saturating_sub(state.pending.len());
        if room == 0 {
            state.wait(cx);
            return Poll::Pending;
        }
        let mut taken = 0;
        for buf in bufs {
            let n = buf.len().min(room - taken);
            state.pending.extend_from_slice(&buf[..n]);
            taken += n;
            if taken == room {
                break;
            }
        }
        drop(state);
        self.shared.more.notify_one();
        Poll::Ready(Ok(taken))
    }
}

/// The writer: waits to be woken, lets the ready tasks run, writes what was
/// gathered; until a failure or the shutdown.
async fn write_out(mut socket: OwnedWriteHalf, shared: Arc<Shared>) {
    let mut taken = BytesMut::new();
    loop {
        shared.more.notified().await;
        // Until a turn passes in which nothing more was handed in.
        for _ in 0..TURNS {
            let before = shared.state().pending.len();
            tokio::task::yield_now().await;
            if shared.state().pending.len() == before {
                break;
            }
        }
        loop {
            match take(&shared, &mut taken) {
                Next::Write => {}
                Next::Wait => break,
                Next::Shut => {
                    let shut = socket.shutdown().await;
                    let mut state = shared.state();
                    match shut {
                        Ok(()) => {
                            state.closed = true;
                            state.wake();
                        }
                        Err(e) => state.fail(&e),
                    }
                    return;
                }
            }
            let written = socket.write_all(&taken).await;
            taken.clear();
            if let Err(e) = written {
                shared.state().fail(&e);
                return;
            }
        }
    }
}

/// What the writer does next.
enum Next {
    /// Write `taken`.
    Write,
    /// Nothing to write: wait to be woken.
    Wait,
    /// Nothing to write, and shutdown was asked for.
    Shut,
}

/// Takes what was handed in into `taken` (empty), or says why not.
fn take(shared: &Shared, taken: &mut BytesMut) -> Next {
    let mut state = shared.state();
    if state.pending.is_empty() {
        // An idle connection holds no buffer.
        *taken = BytesMut::new();
        state.pending = BytesMut::new();
        return if state.closing {
            Next::Shut
        } else {
            Next::Wait
        };
    }
    std::mem::swap(taken, &mut state.pending);
    // Room again for a write that waits.
    state.wake();
    Next::Write
}

impl Connected for GatheringStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for GatheringStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for GatheringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.hand_in(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.hand_in(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// The bytes are the writer's already (see the module docs): only its
    /// failure is reported here.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.shared.state().failure() {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.state();
        if let Some(e) = state.failure() {
            return Poll::Ready(Err(e));
        }
        if state.closed {
            return Poll::Ready(Ok(()));
        }
        state.wait(cx);
        if !state.closing {
            state.closing = true;
            drop(state);
            self.shared.more.notify_one();
        }
        Poll::Pending
    }
}

impl Drop for GatheringStream {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        if state.closed {
            return;
        }
        state.closing = true;
        drop(state);
        self.shared.more.notify_one();
        // What was handed in still goes out, for a while.
        if let (Some(mut writer), Ok(runtime)) =
            (self.writer.take(), tokio::runtime::Handle::try_current())
            && !writer.is_finished()
        {
            runtime.spawn(async move {
                if tokio::time::timeout(DROP_GRACE, &mut writer).await.is_err() {
                    writer.abort();
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{io::AsyncReadExt as _, net::TcpListener};

    /// A gathering server side and a plain client side of one connection.
    async fn pair() -> (GatheringStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (GatheringStream::new(accepted.unwrap().0), client.unwrap())
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn bytes_arrive_in_order_and_shutdown_ends_them() {
        let (mut server, mut client) = pair().await;
        let data = pattern(3 * LIMIT + 123);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        // Small writes, vectored writes and flushes in between.
        let (mut at, mut step) = (0, 1);
        while at < data.len() {
            let end = (at + step).min(data.len());
            if step % 3 == 0 {
                let mid = at + (end - at) / 2;
                let bufs = [
                    io::IoSlice::new(&data[at..mid]),
                    io::IoSlice::new(&data[mid..end]),
                ];
                let n = server.write_vectored(&bufs).await.unwrap();
                at += n;
            } else {
                server.write_all(&data[at..end]).await.unwrap();
                at = end;
            }
            if step % 5 == 0 {
                server.flush().await.unwrap();
            }
            step = step * 7 % 65_521 + 1;
        }
        server.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), data);
        // Written after the shutdown: refused, nothing else happens.
        let e = server.write_all(b"late").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_holds_writes_back() {
        let (mut server, mut client) = pair().await;
        let data = pattern(64 * 1024 * 1024);
        let writing = {
            let data = data.clone();
            tokio::spawn(async move {
                server.write_all(&data).await.unwrap();
                server
            })
        };
        // The socket's buffers and ours fill up; the rest waits.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!writing.is_finished(), "64 MiB were taken in");
        let reading = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut server = writing.await.unwrap();
        server.shutdown().await.unwrap();
        assert!(
            reading.await.unwrap() == data,
            "the bytes changed on the way"
        );
    }

    #[tokio::test]
    async fn a_failed_write_fails_what_follows() {
        let (mut server, client) = pair().await;
        // Written to after the client closed: its side answers with a reset.
        drop(client);
        let chunk = pattern(64 * 1024);
        let mut failed = None;
        for _ in 0..1_000 {
            if let Err(e) = server.write_all(&chunk).await {
                failed = Some(e);
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let failed = failed.expect("writes to a reset connection kept succeeding");
        assert!(
            matches!(
                failed.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{failed:?}"
        );
        assert_eq!(server.flush().await.unwrap_err().kind(), failed.kind());
        assert_eq!(server.shutdown().await.unwrap_err().kind(), failed.kind());
    }

    #[tokio::test]
    async fn a_dropped_connection_still_sends_what_it_was_handed() {
        let (mut server, mut client) = pair().await;
        let data = pattern(LIMIT);
        server.write_all(&data).await.unwrap();
        drop(server);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
            .await
            .expect("no end of stream after the drop")
            .unwrap();
        assert!(got == data, "the bytes changed on the way");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_connection_whose_client_does_not_read_gives_up() {
        let (mut server, mut client) = pair().await;
        let data = pattern(64 * 1024 * 1024);
        // Until the socket and the buffer are full (the clock is paused:
        // it jumps when nothing can run).
        let mut handed = 0;
        while let Ok(written) =
            tokio::time::timeout(Duration::from_secs(1), server.write(&data[handed..])).await
        {
            handed += written.unwrap();
        }
        drop(server);
        tokio::time::sleep(DROP_GRACE * 2).await;
        // The writer was stopped: the client gets what the socket held,
        // then the end, without the full buffer the writer still had.
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        assert!(
            got.len() <= handed - LIMIT,
            "got {} of the {handed} bytes handed in: the writer went on",
            got.len()
        );
        assert!(data.starts_with(&got), "the bytes changed on the way");
    }

    #[tokio::test]
    async fn an_idle_connection_gives_its_buffers_back() {
        let (mut server, mut client) = pair().await;
        // Two rounds: the writer's two buffers have each held bytes.
        for len in [100_000, 10] {
            server.write_all(&pattern(len)).await.unwrap();
            let mut got = vec![0u8; len];
            client.read_exact(&mut got).await.unwrap();
        }
        for _ in 0..500 {
            if server.shared.state().pending.capacity() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("an idle connection still holds its 100,000-byte buffer");
    }

    #[tokio::test]
    async fn reads_and_connection_info_are_the_sockets() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"ping").await.unwrap();
        let mut request = [0u8; 4];
        server.read_exact(&mut request).await.unwrap();
        assert_eq!(&request, b"ping");
        let info = server.connect_info();
        assert_eq!(info.remote_addr(), Some(client.local_addr().unwrap()));
        assert_eq!(info.local_addr(), Some(client.peer_addr().unwrap()));
    }
}
