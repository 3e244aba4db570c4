//! A TCP stream the connection actor can cut.
//!
//! russh owns the stream once `run_stream` has it, and a client that stops reading keeps russh
//! from ever processing our disconnect (see PITFALLS). The forced path therefore needs a way to
//! end the stream from outside: [`CutSwitch::cut`] makes every pending and future read and write
//! fail with `ConnectionAborted`, which ends russh's session loop, which drops (closes) the
//! socket.
//!
//! It also ends the session as soon as our goodbye is on the wire. After SSH_MSG_DISCONNECT,
//! russh shuts down its sending side (FIN after the message) and then reads until the client
//! closes too, so a kill would wait one round trip through the client, however slow or busy it
//! is. Once our side is shut down the connection has nothing left to say or hear: reads end
//! there (end of stream), russh's loop ends, the socket is closed (which sends the FIN: the
//! socket itself is never shut down, one system call less). The client still receives the
//! disconnect and the FIN, in order, from its own buffers.
//!
//! And it can hold a goodbye together ([`CutSwitch::cork`]): russh flushes each message its
//! loop wakes for on its own, so the channel EOFs queued just before a DISCONNECT would go out
//! in writes of their own, each a packet the client wakes for. Corked, what russh writes is
//! kept until it shuts down after the DISCONNECT, and then goes out in one write. The cork
//! lasts [`CORK_LIMIT`] at most: russh leaves queued messages alone during a key exchange, and
//! a rekey's packets kept back would leave both sides waiting for each other; past the limit,
//! the next wake of russh's loop (its read is always pending) writes what was kept, and so does
//! its next write. Its timer is armed only when russh waits in that read with something kept:
//! a goodbye that goes out at once, the usual case, registers none (a new earliest deadline
//! wakes tokio's driver, a system call and a parked worker's wake per kill). That read writes to
//! the socket: russh drives both halves of the stream from
//! its one session task, so the write-readiness wake it registers reaches that task (with the
//! halves in two tasks, the writer is woken too, to register again). If russh's loop ends in an
//! error before its shutdown, what was kept is dropped with the connection, the DISCONNECT
//! with it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a corked stream keeps what russh writes, at most.
pub const CORK_LIMIT: std::time::Duration = std::time::Duration::from_millis(20);

/// The shared switch that cuts one [`CuttableStream`].
#[derive(Debug, Default)]
pub struct CutSwitch {
    cut: AtomicBool,
    /// Our sending side was shut down (the goodbye went out): reads end.
    shut: AtomicBool,
    /// Writes are kept until the shutdown (a goodbye in several messages is coming).
    corked: AtomicBool,
    read_waker: AtomicWaker,
    write_waker: AtomicWaker,
    /// Whoever waits for the cut outside the stream ([`CutSwitch::cut_off`]).
    cut_waker: AtomicWaker,
}

impl CutSwitch {
    /// A new, uncut switch.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Cuts the stream: wakes whoever waits on it so they see the error at once.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.read_waker.wake();
        self.write_waker.wake();
        self.cut_waker.wake();
    }

    /// Resolves once the stream is cut: what bounds a russh callback's wait for an actor's
    /// answer (see `SshHandler`). One waiter at a time (russh runs one callback at a time).
    pub fn cut_off(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.is_cut() {
                return Poll::Ready(());
            }
            self.cut_waker.register(cx.waker());
            if self.is_cut() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Whether the stream was cut.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Keeps everything written from now on until the shutdown, which writes it at once: for
    /// a goodbye of several messages that ends with russh's shutdown after the DISCONNECT.
    pub fn cork(&self) {
        self.corked.store(true, Ordering::SeqCst);
    }
}

/// Wraps a stream so that a [`CutSwitch`] can make it fail.
#[derive(Debug)]
pub struct CuttableStream<S> {
    inner: S,
    switch: Arc<CutSwitch>,
    /// What was written while corked, from `sent` on not yet written to `inner`.
    kept: Vec<u8>,
    sent: usize,
    /// Since when writes are kept (the first one kept under the cork).
    corked_since: Option<Instant>,
    /// Wakes a read that waits with something kept, at the cork's limit (see [`CORK_LIMIT`]).
    cork_ends: Option<Pin<Box<Sleep>>>,
}

impl<S> CuttableStream<S> {
    /// Wraps `inner`; `switch` cuts it.
    pub fn new(inner: S, switch: Arc<CutSwitch>) -> Self {
        Self {
            inner,
            switch,
            kept: Vec::new(),
            sent: 0,
            corked_since: None,
            cork_ends: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> CuttableStream<S> {
    /// Writes out what was kept while corked.
    fn poll_write_kept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.kept.is_empty() {
            // Every write of a connection that was never corked.
            return Poll::Ready(Ok(()));
        }
        while self.sent < self.kept.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.kept[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.kept = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Whether writes are still kept: corked, and the cork's limit not passed (which ends it).
    /// `waiting`: a read about to wait, which the limit's timer must wake (armed here, once).
    fn still_corked(&mut self, cx: &mut Context<'_>, waiting: bool) -> bool {
        if !self.switch.corked.load(Ordering::SeqCst) {
            return false;
        }
        let since = *self.corked_since.get_or_insert_with(Instant::now);
        let over = since.elapsed() >= CORK_LIMIT
            || (waiting
                && self
                    .cork_ends
                    .as_mut()
                    .is_some_and(|ends| ends.as_mut().poll(cx).is_ready()));
        if over {
            // A later cork gets a limit of its own.
            self.uncork();
            return false;
        }
        if waiting && self.cork_ends.is_none() {
            let mut ends = Box::pin(tokio::time::sleep(CORK_LIMIT));
            // Registers the read's waker; it cannot be over yet.
            let _ = ends.as_mut().poll(cx);
            self.cork_ends = Some(ends);
        }
        true
    }

    fn uncork(&mut self) {
        self.switch.corked.store(false, Ordering::SeqCst);
        self.corked_since = None;
        self.cork_ends = None;
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection cut by sshvisor",
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for CuttableStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.switch.read_waker.register(cx.waker());
        if self.switch.is_cut() {
            return Poll::Ready(Err(aborted()));
        }
        if self.switch.shut.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        // russh's read is always pending: its task, woken at the cork's limit, comes here to
        // write what was kept (the rest, when the socket is full, with its next write or wake).
        if !self.kept.is_empty() && !self.still_corked(cx, true) {
            match self.poll_write_kept(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // Registered the read's waker for write readiness: a writer in another task
                // must register again.
                Poll::Pending => self.switch.write_waker.wake(),
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CuttableStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.switch.write_waker.register(cx.waker());
        if self.switch.is_cut() {
            return Poll::Ready(Err(aborted()));
        }
        if self.still_corked(cx, false) {
            self.kept.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // Kept bytes (the cork's limit passed while the socket was full) go first.
        ready!(self.poll_write_kept(cx))?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.switch.write_waker.register(cx.waker());
        if self.switch.is_cut() {
            return Poll::Ready(Err(aborted()));
        }
        if self.still_corked(cx, false) {
            // Kept for the shutdown.
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_write_kept(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A corked goodbye may wait here on a client that stopped reading: a cut must wake it.
        self.switch.write_waker.register(cx.waker());
        if self.switch.is_cut() {
            return Poll::Ready(Ok(()));
        }
        // A corked goodbye goes out here, in one write.
        ready!(self.poll_write_kept(cx))?;
        // No shutdown(2) of the socket: reads end here, so russh drops the stream at once, and
        // the close that follows sends the FIN after everything written. One system call (and
        // one packet) less for every connection that ends.
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            self.uncork();
            self.switch.shut.store(true, Ordering::SeqCst);
            self.switch.read_waker.wake();
        }
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_wait_for_the_cut_ends_at_the_cut_and_not_before() {
        let switch = CutSwitch::new();
        let waiter = tokio::spawn({
            let switch = switch.clone();
            async move { switch.cut_off().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "ended before the cut");
        switch.cut();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the cut did not end the wait")
            .unwrap();
        // Already cut: at once.
        switch.cut_off().await;
    }

    /// Exactly `len` bytes from `peer`, within `secs` seconds, or the test fails with `what`.
    async fn read_within(
        peer: &mut tokio::io::DuplexStream,
        len: usize,
        secs: u64,
        what: &str,
    ) -> Vec<u8> {
        let mut got = vec![0u8; len];
        tokio::time::timeout(
            std::time::Duration::from_secs(secs),
            peer.read_exact(&mut got),
        )
        .await
        .expect(what)
        .unwrap();
        got
    }

    #[tokio::test]
    async fn a_cut_wakes_a_pending_read_with_connection_aborted() {
        let (a, _b) = tokio::io::duplex(64);
        let switch = CutSwitch::new();
        let mut stream = CuttableStream::new(a, switch.clone());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            stream.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        switch.cut();
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn after_our_shutdown_reads_end_without_waiting_for_the_peer() {
        let (a, mut peer) = tokio::io::duplex(64);
        let switch = CutSwitch::new();
        let stream = CuttableStream::new(a, switch.clone());
        let (mut read, mut write) = tokio::io::split(stream);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            read.read_to_end(&mut got).await.map(|_| got)
        });
        write.write_all(b"bye").await.unwrap();
        write.shutdown().await.unwrap();
        // The peer never closes its side, yet the read ends, and the goodbye reached it.
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("the read ends once we shut down")
            .unwrap()
            .unwrap();
        assert!(got.is_empty());
        let mut said = [0u8; 3];
        peer.read_exact(&mut said).await.unwrap();
        assert_eq!(&said, b"bye");
        assert!(!switch.is_cut());
        // The peer's end of stream comes with the close.
        drop(write);
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    // Paused time in the cork tests: the cork limit is 20 ms, which a loaded machine can
    // lose between two steps of a test.
    #[tokio::test(start_paused = true)]
    async fn a_corked_goodbye_is_kept_until_the_shutdown_then_written_whole() {
        let (a, mut peer) = tokio::io::duplex(1024);
        let switch = CutSwitch::new();
        let mut stream = CuttableStream::new(a, switch.clone());
        stream.write_all(b"before ").await.unwrap();
        switch.cork();
        stream.write_all(b"eof ").await.unwrap();
        stream.flush().await.unwrap();
        stream.write_all(b"disconnect").await.unwrap();
        stream.flush().await.unwrap();
        let mut got = vec![0u8; 64];
        let n = peer.read(&mut got).await.unwrap();
        assert_eq!(
            &got[..n],
            b"before ",
            "nothing corked is written before the shutdown"
        );
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), peer.read(&mut got));
        assert!(
            early.await.is_err(),
            "corked bytes went out before the shutdown"
        );
        stream.shutdown().await.unwrap();
        let n = peer.read(&mut got).await.unwrap();
        assert_eq!(
            &got[..n],
            b"eof disconnect",
            "the goodbye goes out in one write, in order"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cork_lasts_its_limit_when_no_shutdown_comes() {
        // As in a rekey at the moment of a kill: russh writes what the client must answer
        // before it can take the goodbye, and waits in its read.
        let (a, mut peer) = tokio::io::duplex(1024);
        let switch = CutSwitch::new();
        let stream = CuttableStream::new(a, switch.clone());
        let (mut read, mut write) = tokio::io::split(stream);
        switch.cork();
        write.write_all(b"kex reply").await.unwrap();
        write.flush().await.unwrap();
        let started = Instant::now();
        let reader = tokio::spawn(async move {
            let mut got = [0u8; 16];
            read.read(&mut got).await.map(|n| got[..n].to_vec())
        });
        let said = read_within(&mut peer, 9, 5, "what was kept never went out").await;
        assert_eq!(said, b"kex reply");
        assert!(started.elapsed() >= CORK_LIMIT);
        // Uncorked: the peer's answer reaches the pending read, and later writes go straight out.
        peer.write_all(b"answer").await.unwrap();
        let got = reader.await.unwrap().unwrap();
        assert_eq!(got, b"answer");
        write.write_all(b"next").await.unwrap();
        write.flush().await.unwrap();
        let next = read_within(&mut peer, 4, 1, "a write after the cork's limit was kept").await;
        assert_eq!(next, b"next");
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_cork_limit_a_slow_peer_gets_everything_in_order() {
        // The halves in two tasks, the peer's buffer smaller than what was kept: the read
        // drains what it can at the limit, the writer (woken to register again) the rest.
        let (a, mut peer) = tokio::io::duplex(16);
        let switch = CutSwitch::new();
        let (mut read, mut write) = tokio::io::split(CuttableStream::new(a, switch.clone()));
        switch.cork();
        let first: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
        write.write_all(&first).await.unwrap();
        let _reader = tokio::spawn(async move {
            let mut b = [0u8; 8];
            read.read(&mut b).await.map(|_| read)
        });
        tokio::time::sleep(CORK_LIMIT * 3).await;
        let writer = tokio::spawn(async move {
            let second: Vec<u8> = (200..400u32).map(|i| i as u8).collect();
            write.write_all(&second).await.unwrap();
            write.flush().await.unwrap();
        });
        let got = read_within(&mut peer, 400, 5, "a write waited forever on a slow peer").await;
        let want: Vec<u8> = (0..400u32).map(|i| i as u8).collect();
        assert_eq!(got, want);
        writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_cork_gets_a_limit_of_its_own() {
        let (a, mut peer) = tokio::io::duplex(1024);
        let switch = CutSwitch::new();
        let (mut read, mut write) = tokio::io::split(CuttableStream::new(a, switch.clone()));
        switch.cork();
        write.write_all(b"first").await.unwrap();
        write.flush().await.unwrap();
        let mut b = [0u8; 8];
        // The first cork ends at its limit, through the pending read.
        let pending = tokio::time::timeout(CORK_LIMIT * 3, read.read(&mut b)).await;
        assert!(pending.is_err(), "the peer said nothing");
        let mut first = [0u8; 5];
        peer.read_exact(&mut first).await.unwrap();
        switch.cork();
        write.write_all(b"second").await.unwrap();
        write.flush().await.unwrap();
        let _ = tokio::time::timeout(std::time::Duration::from_millis(1), read.read(&mut b)).await;
        let early = tokio::time::timeout(CORK_LIMIT / 4, peer.read(&mut b)).await;
        assert!(early.is_err(), "the second cork ended at once");
    }

    #[tokio::test]
    async fn a_cut_wakes_a_corked_shutdown_blocked_on_a_full_peer() {
        let (a, _peer) = tokio::io::duplex(8);
        let switch = CutSwitch::new();
        let mut stream = CuttableStream::new(a, switch.clone());
        switch.cork();
        stream.write_all(&[0u8; 1024]).await.unwrap();
        let closer = tokio::spawn(async move { stream.shutdown().await });
        tokio::task::yield_now().await;
        switch.cut();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), closer).await;
        assert!(ended.is_ok(), "the cut did not wake the shutdown");
    }

    #[tokio::test]
    async fn a_cut_wakes_a_write_blocked_on_a_full_peer() {
        let (a, _b) = tokio::io::duplex(8);
        let switch = CutSwitch::new();
        let mut stream = CuttableStream::new(a, switch.clone());
        let writer = tokio::spawn(async move { stream.write_all(&[0u8; 1024]).await });
        tokio::task::yield_now().await;
        switch.cut();
        let err = writer.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }
}
