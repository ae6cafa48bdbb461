//! The response body the proxy sends: the backend's body streamed frame by frame (never buffered
//! whole), or a short page of the proxy's own (421, 502, 504). It holds the request's in-flight
//! mark until the body ends, so a long SSE stream or long poll is never counted as idle.

use crate::limits::InFlight;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A response body.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    _inflight: Option<InFlight>,
}

#[derive(Debug)]
enum Kind {
    Stream(Incoming),
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// The backend's body, streamed.
    pub fn stream(body: Incoming) -> Self {
        Self {
            kind: Kind::Stream(body),
            _inflight: None,
        }
    }

    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            _inflight: None,
        }
    }

    /// No body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// Holds `inflight` until the body is done.
    pub fn holding(mut self, inflight: InFlight) -> Self {
        self._inflight = Some(inflight);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Stream(body) => Pin::new(body).poll_frame(cx),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        if matches!(polled, Poll::Ready(None)) {
            this._inflight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Stream(body) => body.is_end_stream(),
            Kind::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Stream(body) => body.size_hint(),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
