//! Time as the mapping table counts it: milliseconds on a monotonic clock.
//!
//! The table takes `now` as an argument so that a capture file is replayed on its own
//! timestamps (entries expire by capture time) and a live capture on the monotonic clock.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since an arbitrary origin.
pub type Millis = u64;

/// Milliseconds since the first call in this process, on the monotonic clock.
pub fn monotonic_millis() -> Millis {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as Millis
}
