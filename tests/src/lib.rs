//! Harness of the integration tests: temporary directories, child processes, servers.
