//! Backend tests that need internals: model-based randomized test, corruption, remap stress.
