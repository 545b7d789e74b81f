//! Clean-up that happens however a test ends.
//!
//! A test that fails panics, and the panic unwinds through the test's locals: a guard's
//! `Drop` is the one place that runs on every way out. `Drop` cannot await, and the test's
//! tokio runtime cannot be used from inside it (a `#[tokio::test]` runtime has one thread,
//! and that thread is the one running the drop), so [`OnDrop`] runs the async clean-up on a
//! thread of its own, with a small runtime of its own, and waits for it: with
//! cargo-nextest every test is a process, which must not exit before its clean-up is done.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// How long a clean-up may take before the drop gives up on it (and says so).
pub const LIMIT: Duration = Duration::from_secs(60);

type Cleanup =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

/// Runs an async clean-up when dropped. A failed clean-up is reported on standard error,
/// never as a panic (a panic while a failed test unwinds would abort the process).
#[must_use = "the clean-up runs when this guard is dropped"]
pub struct OnDrop {
    what: String,
    cleanup: Option<Cleanup>,
}

impl OnDrop {
    /// `what` names the clean-up in error messages ("dropping database ts_test_...").
    pub fn new<F, Fut>(what: impl Into<String>, cleanup: F) -> Self
    where
        F: FnOnce() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self {
            what: what.into(),
            cleanup: Some(Box::new(move || Box::pin(cleanup()))),
        }
    }

    /// The clean-up will not run.
    pub fn disarm(&mut self) {
        self.cleanup = None;
    }
}

impl Drop for OnDrop {
    fn drop(&mut self) {
        let Some(cleanup) = self.cleanup.take() else {
            return;
        };
        let what = std::mem::take(&mut self.what);
        let worker = std::thread::Builder::new()
            .name("test-cleanup".to_owned())
            .spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    tokio::time::timeout(LIMIT, cleanup())
                        .await
                        .map_err(|_| anyhow::anyhow!("not done after {LIMIT:?}"))?
                })
            });
        let outcome = match worker {
            Ok(worker) => worker
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the clean-up panicked"))),
            Err(err) => Err(anyhow::Error::new(err).context("starting the clean-up thread")),
        };
        if let Err(err) = outcome {
            eprintln!("[test-support] {what} failed: {err:#}");
        }
    }
}

impl std::fmt::Debug for OnDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDrop")
            .field("what", &self.what)
            .field("armed", &self.cleanup.is_some())
            .finish()
    }
}
