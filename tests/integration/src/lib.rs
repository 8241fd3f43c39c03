//! Shared helpers for the integration tests: locating binaries and guest artifacts,
//! spawning xenia, reading its console.
