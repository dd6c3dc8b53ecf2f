//! Shared harness for the integration tests: starting controller clusters on loopback.
