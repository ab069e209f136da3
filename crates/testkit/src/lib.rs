//! Test harness for Ravel-rs.
