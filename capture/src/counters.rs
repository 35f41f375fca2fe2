//! Event counters: cheap relaxed atomics on the hot path, read as a plain snapshot.
//!
//! Owns the counter type and the macro that declares a counter set together with its
//! snapshot, so a counter can never be added to one and forgotten in the other.

use std::sync::atomic::{AtomicU64, Ordering};

/// One monotonically increasing event count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Counts one event.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` events.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Declares a set of [`Counter`]s and a serialisable snapshot struct with the same fields.
#[macro_export]
macro_rules! counter_set {
    (
        $(#[$meta:meta])* $vis:vis struct $name:ident => $snap:ident {
            $( $(#[$fmeta:meta])* $field:ident ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $( $(#[$fmeta])* pub $field: $crate::counters::Counter, )*
        }

        #[doc = concat!("A point-in-time copy of [`", stringify!($name), "`].")]
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
        $vis struct $snap {
            $( $(#[$fmeta])* pub $field: u64, )*
        }

        impl $name {
            /// Reads every counter (each one atomically, not the set as a whole).
            pub fn snapshot(&self) -> $snap {
                $snap { $( $field: self.$field.get(), )* }
            }
        }

        impl $snap {
            /// `(name, value)` pairs in declaration order, for text and metrics output.
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($field), self.$field), )* ]
            }
        }
    };
}
