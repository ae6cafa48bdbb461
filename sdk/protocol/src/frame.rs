//! Newline-delimited frames with a hard size limit, over tokio streams.
//!
//! A frame is one JSON-RPC message followed by `\n` (a preceding `\r` is tolerated). The reader
//! refuses to buffer more than the limit: a longer line is reported as [`FrameError::TooLarge`]
//! before it is fully read, so a misbehaving peer cannot make the other side allocate without bound.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// Why reading or writing a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer sent (or we were about to send) a frame over the limit.
    #[error("frame of at least {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Bytes seen so far (a lower bound on the frame's size).
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The pipe failed.
    #[error("pipe error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the next frame into `buf` (cleared first, newline stripped). Returns `Ok(false)` at end of
/// stream; a final unterminated line is returned as a frame.
pub async fn read_frame<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<bool, FrameError> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(!buf.is_empty());
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], true),
            None => (available, false),
        };
        if buf.len() + chunk.len() > limit {
            return Err(FrameError::TooLarge {
                size: buf.len() + chunk.len(),
                limit,
            });
        }
        buf.extend_from_slice(chunk);
        let consumed = chunk.len() + usize::from(done);
        reader.consume(consumed);
        if done {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(true);
        }
    }
}

/// Writes one frame (body plus `\n`) and flushes, refusing bodies over `limit`.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: &[u8],
    limit: usize,
) -> Result<(), FrameError> {
    if body.len() > limit {
        return Err(FrameError::TooLarge {
            size: body.len(),
            limit,
        });
    }
    writer.write_all(body).await?;
    writer.write_all(b"\n").await?;
    writer.flush().await?;
    Ok(())
}

/// A queue of encoded frames for [`write_frames`] (bounded or unbounded tokio channels).
pub trait FrameQueue: Send {
    /// Waits for the next frame; `None` once every sender is gone.
    fn next(&mut self) -> impl std::future::Future<Output = Option<Vec<u8>>> + Send;
    /// The next frame if one is already queued.
    fn ready(&mut self) -> Option<Vec<u8>>;
}

impl FrameQueue for tokio::sync::mpsc::Receiver<Vec<u8>> {
    fn next(&mut self) -> impl std::future::Future<Output = Option<Vec<u8>>> + Send {
        self.recv()
    }
    fn ready(&mut self) -> Option<Vec<u8>> {
        self.try_recv().ok()
    }
}

impl FrameQueue for tokio::sync::mpsc::UnboundedReceiver<Vec<u8>> {
    fn next(&mut self) -> impl std::future::Future<Output = Option<Vec<u8>>> + Send {
        self.recv()
    }
    fn ready(&mut self) -> Option<Vec<u8>> {
        self.try_recv().ok()
    }
}

/// Writes queued frame bodies (each followed by `\n`) until the queue closes, flushing whenever it
/// is momentarily empty (so bursts are batched); then shuts the writer down, which the peer reads
/// as end-of-file. Stops early if the pipe breaks.
pub async fn write_frames<W: AsyncWrite + Unpin, Q: FrameQueue>(writer: W, mut queue: Q) {
    let mut out = tokio::io::BufWriter::with_capacity(64 * 1024, writer);
    while let Some(first) = queue.next().await {
        let mut next = Some(first);
        while let Some(body) = next {
            if out.write_all(&body).await.is_err() || out.write_all(b"\n").await.is_err() {
                return;
            }
            next = queue.ready();
        }
        if out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_and_enforces_the_limit() {
        let data: &[u8] = b"{\"a\":1}\r\n{\"b\":2}\ntoo-long-line\n";
        let mut reader = tokio::io::BufReader::with_capacity(4, data);
        let mut buf = Vec::new();
        assert!(read_frame(&mut reader, &mut buf, 8).await.expect("first"));
        assert_eq!(buf, b"{\"a\":1}");
        assert!(read_frame(&mut reader, &mut buf, 8).await.expect("second"));
        assert_eq!(buf, b"{\"b\":2}");
        let err = read_frame(&mut reader, &mut buf, 8)
            .await
            .expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { limit: 8, .. }));
    }

    #[tokio::test]
    async fn end_of_stream_and_unterminated_tail() {
        let mut reader = tokio::io::BufReader::new(&b"tail"[..]);
        let mut buf = Vec::new();
        assert!(read_frame(&mut reader, &mut buf, 100).await.expect("tail"));
        assert_eq!(buf, b"tail");
        assert!(!read_frame(&mut reader, &mut buf, 100).await.expect("eof"));
    }

    #[tokio::test]
    async fn writer_refuses_oversized_bodies() {
        let mut out = Vec::new();
        assert!(write_frame(&mut out, b"12345", 4).await.is_err());
        write_frame(&mut out, b"1234", 4).await.expect("fits");
        assert_eq!(out, b"1234\n");
    }
}
