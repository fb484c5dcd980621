//! Several broker replicas behind one client: each call goes to the next
//! replica in turn, skipping for a few seconds one whose last call failed
//! at the transport (refused, reset, unreachable) or was answered
//! `UNAVAILABLE` (a replica draining before it stops), so that a replica
//! that goes away costs one failed call, not every other one. A call that
//! fails is not sent again here: its caller sees `UNAVAILABLE` and may
//! repeat it (a Publish is recognised as a repeat by whichever replica
//! takes it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::Channel;

/// How long a replica whose call failed at the transport is left out.
const LEFT_OUT: Duration = Duration::from_secs(3);

/// Broker replicas, as one `tonic` client transport.
#[derive(Clone)]
pub struct Replicas {
    channels: Arc<[Channel]>,
    /// Per replica: left out until this many ms after `epoch` (0: in).
    left_out_until: Arc<[AtomicU64]>,
    next: Arc<AtomicUsize>,
    epoch: Instant,
}

impl From<Channel> for Replicas {
    fn from(channel: Channel) -> Self {
        Replicas::new(vec![channel])
    }
}

impl Replicas {
    /// At least one channel; an empty list is given a channel that never connects.
    pub fn new(channels: Vec<Channel>) -> Self {
        let n = channels.len();
        Replicas {
            channels: channels.into(),
            left_out_until: (0..n).map(|_| AtomicU64::new(0)).collect(),
            next: Arc::new(AtomicUsize::new(0)),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The next replica in turn that is not left out (or the next in turn
    /// when all are).
    fn pick(&self) -> usize {
        let n = self.channels.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = self.now_ms();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.left_out_until[i].load(Ordering::Relaxed) <= now)
            .unwrap_or(start)
    }
}

impl tonic::codegen::Service<http::Request<Body>> for Replicas {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call readies the channel it picks.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The calling span's traceparent, for the broker's span of this call.
        crossgate_telemetry::inject_headers(request.headers_mut());
        let i = self.pick();
        let mut channel = self.channels[i].clone();
        let me = self.clone();
        Box::pin(async move {
            let result = async {
                std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(request).await
            }
            .await;
            // UNAVAILABLE, answered at once (trailers only): the replica
            // is draining or cannot serve.
            let unavailable = result.as_ref().is_ok_and(|r| {
                r.headers()
                    .get("grpc-status")
                    .is_some_and(|s| s.as_bytes() == b"14")
            });
            if result.is_err() || unavailable {
                let until = me.now_ms() + LEFT_OUT.as_millis() as u64;
                me.left_out_until[i].store(until, Ordering::Relaxed);
            }
            result
        })
    }
}
