//! Shared test support. TEST FIXTURES ONLY.

pub mod fixture;
