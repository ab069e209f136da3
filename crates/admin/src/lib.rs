//! The Ravel-rs admin.
