//! ringkv's test harness: helpers shared by the system tests in `tests/tests/`.
