//! Locking a mutex that a panicking holder may have poisoned.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`; a lock poisoned by a panicking holder is taken over, since every value kept
/// behind these mutexes stays consistent between statements.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
