//! A body that carries on only while the policy allows its exchange. A reload ends tunnels
//! gracefully (`intercept.rs`), but an exchange under way when it comes (an upload or a download
//! that does not end) would run on under the rules it began with: each frame after a reload is
//! passed on only if the exchange is judged allowed again, as it was judged at first.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::watch;

use super::state::PolicyState;
use super::{BoxError, Proxy, ProxyBody};

/// Whether an exchange is still allowed under a (new) policy state.
pub type StillAllowed = Arc<dyn Fn(&PolicyState) -> bool + Send + Sync>;

/// `body`, ended with an error at the first frame after a reload that no longer allows its
/// exchange (`allowed`).
pub fn rejudged(body: ProxyBody, proxy: Arc<Proxy>, reloads: watch::Receiver<u64>, allowed: StillAllowed) -> ProxyBody {
    Rejudged { inner: body, proxy, reloads, allowed }.boxed_unsync()
}

struct Rejudged {
    inner: ProxyBody,
    proxy: Arc<Proxy>,
    reloads: watch::Receiver<u64>,
    allowed: StillAllowed,
}

impl Body for Rejudged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.reloads.has_changed().unwrap_or(false) {
            self.reloads.borrow_and_update();
            let state = self.proxy.state.current();
            if !(self.allowed)(&state) {
                return Poll::Ready(Some(Err("the policy was reloaded and no longer allows this exchange".into())));
            }
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
