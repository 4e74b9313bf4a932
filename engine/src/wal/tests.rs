//! WAL tests (placeholder while the WAL compiles).
