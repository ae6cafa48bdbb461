//! The plugin's outbound frame queue, bounded where plugin code could fill it without limit.
//!
//! Every frame goes through one ordered queue (so a request's streamed items always precede its
//! response). Frames that plugin code can produce in unbounded numbers — streamed items
//! (`$/item`), `host/publish` requests and progress — first take a permit from a fixed budget
//! ([`BUDGET`] frames); the permit is released once the writer has written the frame and asks for
//! the next one. `emit` and `publish` wait for a permit; progress is dropped (and counted) when the
//! budget is spent. Responses, cancellations, the handshake and everything else never wait, so a
//! slow host reader can delay a stream but never the answers to its own requests.

use koi_protocol::frame::FrameQueue;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Frames that may wait in the queue on the budget at once.
pub(crate) const BUDGET: usize = 1024;

/// One encoded frame and, for budgeted frames, the permit it holds until written.
type Frame = (Vec<u8>, Option<OwnedSemaphorePermit>);

/// The sending side, held by `Shared`.
pub(crate) struct Outbound {
    tx: mpsc::UnboundedSender<Frame>,
    budget: Arc<Semaphore>,
    /// Frames queued and not yet taken by the writer (all lanes).
    queued: Arc<AtomicUsize>,
    /// Progress notifications dropped because the budget was spent.
    dropped_progress: AtomicU64,
    /// Set at shutdown: the writer writes what is queued, then stops.
    closing: CancellationToken,
}

/// The writer's side, a [`FrameQueue`] for `koi_protocol::frame::write_frames`.
pub(crate) struct Inbox {
    rx: mpsc::UnboundedReceiver<Frame>,
    queued: Arc<AtomicUsize>,
    /// The permit of the frame handed out last: released when the writer asks for the next one,
    /// that is once it has written this one.
    held: Option<OwnedSemaphorePermit>,
    closing: CancellationToken,
}

/// A new queue with a budget of `budget` frames.
pub(crate) fn channel(budget: usize) -> (Outbound, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let closing = CancellationToken::new();
    let outbound = Outbound {
        tx,
        budget: Arc::new(Semaphore::new(budget)),
        queued: queued.clone(),
        dropped_progress: AtomicU64::new(0),
        closing: closing.clone(),
    };
    let inbox = Inbox {
        rx,
        queued,
        held: None,
        closing,
    };
    (outbound, inbox)
}

impl Outbound {
    /// Queues a frame that never waits (responses, cancellations, the handshake, host calls).
    pub(crate) fn send(&self, body: Vec<u8>) {
        self.push(body, None);
    }

    /// Queues a budgeted frame, waiting for a permit. Returns false at once (dropping the frame)
    /// if the queue is closed: the host is gone.
    pub(crate) async fn send_budgeted(&self, body: Vec<u8>) -> bool {
        match self.budget.clone().acquire_owned().await {
            Ok(permit) => {
                self.push(body, Some(permit));
                true
            }
            Err(_) => false,
        }
    }

    /// Queues a budgeted frame if a permit is free; otherwise drops it and counts the drop.
    pub(crate) fn try_send_budgeted(&self, body: Vec<u8>) {
        match self.budget.clone().try_acquire_owned() {
            Ok(permit) => self.push(body, Some(permit)),
            Err(_) => {
                let before = self.dropped_progress.fetch_add(1, Ordering::Relaxed);
                if before.is_power_of_two() || before == 0 {
                    tracing::debug!(
                        dropped = before + 1,
                        "progress dropped: the host is reading slowly"
                    );
                }
            }
        }
    }

    /// Frames queued and not yet taken by the writer.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Progress notifications dropped so far because the host read slowly.
    #[cfg(test)]
    pub(crate) fn dropped_progress(&self) -> u64 {
        self.dropped_progress.load(Ordering::Relaxed)
    }

    /// Shutdown: the writer writes what is queued and stops; waiting senders give up.
    pub(crate) fn close(&self) {
        self.budget.close();
        self.closing.cancel();
    }

    fn push(&self, body: Vec<u8>, permit: Option<OwnedSemaphorePermit>) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send((body, permit)).is_err() {
            // The writer is gone (the host closed the pipe); nobody is left to tell.
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Inbox {
    fn take(&mut self, frame: Option<Frame>) -> Option<Vec<u8>> {
        let (body, permit) = frame?;
        self.queued.fetch_sub(1, Ordering::Relaxed);
        self.held = permit;
        Some(body)
    }
}

impl FrameQueue for Inbox {
    async fn next(&mut self) -> Option<Vec<u8>> {
        self.held = None;
        let received = tokio::select! {
            biased;
            f = self.rx.recv() => Some(f),
            _ = self.closing.cancelled() => None,
        };
        // Once closing, only what is already queued is written.
        let frame = received.unwrap_or_else(|| self.rx.try_recv().ok());
        self.take(frame)
    }

    fn ready(&mut self) -> Option<Vec<u8>> {
        self.held = None;
        let frame = self.rx.try_recv().ok();
        self.take(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// 200,000 items emitted as fast as possible towards a host that reads slowly: the queue never
    /// holds more than the budget, and every item still arrives. With an unbounded queue (no
    /// permit taken) the producer runs far ahead and the queue grows to most of the 200,000.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fast_stream_to_a_slow_reader_keeps_at_most_the_budget_queued() {
        const ITEMS: usize = 200_000;
        let (outbound, inbox) = channel(BUDGET);
        let outbound = Arc::new(outbound);
        // A small pipe: the writer blocks as soon as the reader falls behind.
        let (writer_end, mut reader_end) = tokio::io::duplex(4096);
        let writer = tokio::spawn(koi_protocol::frame::write_frames(writer_end, inbox));
        let producer = tokio::spawn({
            let outbound = outbound.clone();
            async move {
                for i in 0..ITEMS {
                    let body = format!(r#"{{"jsonrpc":"2.0","method":"$/item","params":{i}}}"#);
                    outbound.send_budgeted(body.into_bytes()).await;
                }
                outbound.close();
            }
        });
        let sampler = tokio::spawn({
            let outbound = outbound.clone();
            async move {
                let mut most = 0;
                while !outbound.closing.is_cancelled() {
                    most = most.max(outbound.queued());
                    tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                }
                most
            }
        });
        let mut lines = 0;
        let mut chunk = [0_u8; 512];
        loop {
            // Slow: a small read, then a pause now and then.
            let n = reader_end.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            lines += chunk[..n].iter().filter(|b| **b == b'\n').count();
            if lines % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        producer.await.expect("producer");
        writer.await.expect("writer");
        let most = sampler.await.expect("sampler");
        assert_eq!(lines, ITEMS, "every item reached the host");
        assert!(
            most <= BUDGET,
            "at most {BUDGET} frames may wait, but {most} did"
        );
    }

    #[tokio::test]
    async fn progress_is_dropped_and_counted_when_the_budget_is_spent_and_responses_still_go() {
        let (outbound, mut inbox) = channel(2);
        outbound.try_send_budgeted(b"p1".to_vec());
        outbound.try_send_budgeted(b"p2".to_vec());
        outbound.try_send_budgeted(b"p3".to_vec());
        outbound.send(b"response".to_vec());
        assert_eq!(outbound.dropped_progress(), 1);
        assert_eq!(inbox.next().await.as_deref(), Some(&b"p1"[..]));
        assert_eq!(inbox.ready().as_deref(), Some(&b"p2"[..]));
        assert_eq!(inbox.ready().as_deref(), Some(&b"response"[..]));
        // p2's permit is released once the writer asks for more.
        assert_eq!(inbox.ready(), None);
        outbound.try_send_budgeted(b"p4".to_vec());
        assert_eq!(outbound.dropped_progress(), 1);
    }
}
