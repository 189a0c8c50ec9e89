//! The node-wide bound on request bytes held by client calls (`max_in_flight_request_bytes`):
//! each request's bytes take permits from one semaphore as they arrive and give them back when
//! its call has answered. Taking never waits: a call that would go past the bound is refused
//! (retriable), so calls that each hold part of the budget never wait on one another.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

/// The budget (cheap to clone: the clones share it).
#[derive(Debug, Clone)]
pub struct RequestBudget {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl RequestBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> RequestBudget {
        let limit = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        RequestBudget {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// Takes `bytes` of the budget, held until the permit drops; refused when the calls in
    /// flight already hold too much for them to fit.
    pub fn take(&self, bytes: usize) -> Result<Option<OwnedSemaphorePermit>, Error> {
        if bytes == 0 {
            return Ok(None);
        }
        let refused = || {
            Error::Unavailable(format!(
                "the node holds {} bytes of requests in flight and {bytes} more would pass \
                 max_in_flight_request_bytes ({}); retry later",
                self.in_use(),
                self.limit
            ))
        };
        let n = u32::try_from(bytes).map_err(|_| refused())?;
        self.permits
            .clone()
            .try_acquire_many_owned(n)
            .map(Some)
            .map_err(|_| refused())
    }

    /// Bytes held now.
    pub fn in_use(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_held_until_released_and_a_request_past_the_bound_is_refused() {
        let budget = RequestBudget::new(100);
        let a = budget.take(60).unwrap();
        assert_eq!(budget.in_use(), 60);
        let err = budget.take(50).unwrap_err();
        assert!(
            err.to_string()
                .contains("max_in_flight_request_bytes (100)"),
            "{err}"
        );
        assert_eq!(budget.in_use(), 60, "a refusal holds nothing");
        drop(a);
        let _b = budget.take(100).unwrap();
        assert_eq!(budget.in_use(), 100);
        assert!(budget.take(0).unwrap().is_none());
    }
}
