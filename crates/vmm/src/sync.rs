//! Locking shared VMM state: the lowest layer, used by every other.

use std::sync::{Mutex, MutexGuard};

/// Locks shared state, carrying on if another thread panicked while holding
/// it: device and VM state is plain data, and a poisoned lock must not
/// wedge the VM.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
