//! A stream whose incoming bytes are shown to an observer as they pass,
//! with no second buffer or copy: how the idle watchdog and TCP forwarding
//! count what a connection reads (`downstream.rs`), and how the HTTP/2 pool
//! reads the peer's SETTINGS (`cluster/peer_settings.rs`). Writes pass
//! through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Sees what a stream reads.
pub trait ReadObserver {
    /// Bytes just read, never empty.
    fn read(&mut self, bytes: &[u8]);

    /// The stream ended (end of file, or a read error).
    fn ended(&mut self) {}
}

pin_project! {
    pub struct Observed<T, O> {
        #[pin]
        io: T,
        observer: O,
    }
}

impl<T, O> Observed<T, O> {
    pub fn new(io: T, observer: O) -> Self {
        Observed { io, observer }
    }
}

impl<T: AsyncRead, O: ReadObserver> AsyncRead for Observed<T, O> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let result = ready!(this.io.poll_read(cx, buf));
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            this.observer.read(new);
        }
        // An error, or nothing read into room for something: the end.
        if result.is_err() || (new.is_empty() && had_room) {
            this.observer.ended();
        }
        Poll::Ready(result)
    }
}

impl<T: AsyncWrite, O> AsyncWrite for Observed<T, O> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
