//! Cancellation of running operations (scenario runs): [`Cancels`], by operation id, and the
//! future an operation waits on to learn it was cancelled.

/// Operations of this process that can be cancelled, by id: `Some(sender)` while running,
/// `None` once a cancel was requested (the entry goes when the operation ends).
#[derive(Default)]
pub struct Cancels(std::sync::Mutex<std::collections::HashMap<String, Option<CancelTx>>>);

type CancelTx = tokio::sync::oneshot::Sender<String>;

/// What [`Cancels::cancel`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The operation was told to stop.
    Requested,
    /// A cancel had already been requested; it is on its way.
    AlreadyRequested,
    /// Not a cancellable operation of this process.
    NotCancellable,
}

/// Completes with the reason when the operation is cancelled; never otherwise.
pub(crate) struct Cancelled(tokio::sync::oneshot::Receiver<String>);

impl Cancelled {
    pub(crate) async fn wait(self) -> String {
        match self.0.await {
            Ok(why) => why,
            Err(_) => std::future::pending().await,
        }
    }
}

impl Cancels {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Option<CancelTx>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn register(&self, id: &str) -> Cancelled {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.lock().insert(id.to_string(), Some(tx));
        Cancelled(rx)
    }

    /// Tells operation `id` to stop, `why` being the reason its report shows.
    pub fn cancel(&self, id: &str, why: &str) -> CancelOutcome {
        match self.lock().get_mut(id) {
            None => CancelOutcome::NotCancellable,
            Some(slot) => match slot.take() {
                Some(tx) => {
                    let _ = tx.send(why.to_string());
                    CancelOutcome::Requested
                }
                None => CancelOutcome::AlreadyRequested,
            },
        }
    }

    /// Whether a cancel of `id` was requested.
    pub(super) fn requested(&self, id: &str) -> bool {
        matches!(self.lock().get(id), Some(None))
    }

    /// Forgets `id`: it ended and its row is written.
    pub(super) fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Cancels every operation; how many were told.
    pub fn cancel_all(&self, why: &str) -> usize {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.iter()
            .filter(|id| self.cancel(id, why) == CancelOutcome::Requested)
            .count()
    }

    /// Cancellable operations whose row is not written yet.
    pub fn running(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancels_reach_the_operation_once_and_are_forgotten_when_it_ends() {
        let c = Cancels::default();
        let a = c.register("a");
        let _b = c.register("b");
        assert_eq!(c.cancel("x", "why"), CancelOutcome::NotCancellable);
        assert_eq!(
            c.cancel("a", "cancelled by alice"),
            CancelOutcome::Requested
        );
        assert_eq!(c.cancel("a", "again"), CancelOutcome::AlreadyRequested);
        assert_eq!(a.wait().await, "cancelled by alice");
        assert!(c.requested("a") && !c.requested("b"));
        assert_eq!(c.running(), 2);
        // Only the one not cancelled yet is told.
        assert_eq!(c.cancel_all("stopping"), 1);
        c.forget("a");
        c.forget("b");
        assert_eq!(c.running(), 0);
        assert_eq!(c.cancel("a", "late"), CancelOutcome::NotCancellable);
    }

    #[tokio::test]
    async fn an_operation_never_cancelled_never_completes_its_cancel_future() {
        let c = Cancels::default();
        let a = c.register("a");
        c.forget("a"); // the sender is dropped
        let r = tokio::time::timeout(std::time::Duration::from_millis(50), a.wait()).await;
        assert!(r.is_err(), "a dropped registration looked like a cancel");
    }
}
