//! A Ravel-rs replica.
