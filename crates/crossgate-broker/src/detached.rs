//! A request's work that outlives its caller.
//!
//! A client that hangs up mid-call cancels its wait, not the work: every
//! decision and delivery already under way still reaches its receivers and
//! the audit log (and a fetch the provider answered still gets its entry).
//! The work is polled in the call's own task while the caller waits; only if
//! the call is dropped first is what is left of it spawned to finish alone.
//! A call that completes, nearly all of them, costs no task of its own: a
//! spawned task per call cost a wake-up and a hop between workers each.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use tokio_util::task::TaskTracker;
use tonic::Status;

/// `work`, finished even if the returned future is dropped first. What is
/// left of it then runs tracked by `leftovers`, which a stop waits for.
pub(crate) fn detached<T, F>(leftovers: &TaskTracker, work: F) -> Detached<F>
where
    F: Future<Output = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    Detached {
        work: Some(Box::pin(work)),
        leftovers: leftovers.clone(),
    }
}

pub(crate) struct Detached<F: Future + Send + 'static> {
    /// `None` once it has finished (or panicked).
    work: Option<Pin<Box<F>>>,
    leftovers: TaskTracker,
}

impl<T, F> Future for Detached<F>
where
    F: Future<Output = Result<T, Status>> + Send + 'static,
{
    type Output = Result<T, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(work) = self.work.as_mut() else {
            return Poll::Ready(Err(Status::internal(
                "the request failed inside the broker",
            )));
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(answer)) => {
                self.work = None;
                Poll::Ready(answer)
            }
            Err(_) => {
                self.work = None;
                Poll::Ready(Err(panicked()))
            }
        }
    }
}

impl<F: Future + Send + 'static> Drop for Detached<F> {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else { return };
        // Outside a runtime nothing can run it: said, not silent, since
        // what is lost may be an entry of the log.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(self.leftovers.track_future(async move {
                    if AssertUnwindSafe(work).catch_unwind().await.is_err() {
                        panicked();
                    }
                }));
            }
            Err(_) => tracing::error!(
                "a request's work was left unfinished: its caller went away outside the runtime"
            ),
        }
    }
}

/// Neither the caller nor the log gets a panic's words: they may quote a
/// record.
fn panicked() -> Status {
    tracing::error!(panicked = true, "a request failed inside the broker");
    Status::internal("the request failed inside the broker")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn a_call_that_waits_gets_the_answer() {
        let answer = detached(&TaskTracker::new(), async {
            tokio::task::yield_now().await;
            Ok::<_, Status>(7)
        })
        .await;
        assert_eq!(answer.unwrap(), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_goes_on_after_its_caller_hangs_up() {
        let (go, gate) = oneshot::channel::<()>();
        let (done, finished) = oneshot::channel::<()>();
        let started = Arc::new(AtomicBool::new(false));
        let call = {
            let started = started.clone();
            detached(&TaskTracker::new(), async move {
                started.store(true, Ordering::SeqCst);
                let _ = gate.await;
                let _ = done.send(());
                Ok::<_, Status>(())
            })
        };
        // The caller waits a moment (the work starts), then hangs up.
        let hung_up = tokio::time::timeout(Duration::from_millis(20), call).await;
        assert!(
            hung_up.is_err(),
            "the work cannot finish before the gate opens"
        );
        assert!(started.load(Ordering::SeqCst));
        go.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), finished)
            .await
            .expect("the work finished after its caller hung up")
            .expect("the work ran to its end, not dropped");
    }

    #[tokio::test]
    async fn work_not_yet_started_still_runs_when_dropped() {
        let (done, finished) = oneshot::channel::<()>();
        drop(detached(&TaskTracker::new(), async move {
            let _ = done.send(());
            Ok::<_, Status>(())
        }));
        tokio::time::timeout(Duration::from_secs(5), finished)
            .await
            .expect("the work ran")
            .expect("the work ran to its end");
    }

    #[tokio::test]
    async fn work_that_panicked_is_never_run_again() {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut call = Box::pin(detached(&TaskTracker::new(), {
            let polls = polls.clone();
            std::future::poll_fn(move |_| {
                polls.fetch_add(1, Ordering::SeqCst);
                panic!("record 110105198405049582");
                #[allow(unreachable_code)]
                Poll::<Result<(), Status>>::Pending
            })
        }));
        let status = std::future::poll_fn(|cx| call.as_mut().poll(cx))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
        // Dropped after its panic: nothing is spawned to poll it again.
        drop(call);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_panic_is_an_internal_error_without_its_words() {
        let answer = detached(&TaskTracker::new(), async {
            tokio::task::yield_now().await;
            if true {
                panic!("record 110105198405049582");
            }
            Ok::<(), Status>(())
        })
        .await;
        let status = answer.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("110105"), "{status:?}");
    }
}
