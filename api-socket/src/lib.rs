//! The API thread: HTTP/1.1 on a Unix socket, turned into typed messages for the VMM thread.
