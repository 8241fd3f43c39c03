//! The API thread: HTTP/1.1 on a Unix socket, turned into typed messages for the VMM thread.
//!
//! This crate knows nothing about VMs. [`ApiServer`] accepts connections on a Unix socket,
//! parses HTTP/1.x requests with `httparse` on its own small epoll loop (non-blocking
//! sockets, per-connection bounded buffers, a deadline for each request and each answer so
//! that no client can hold a connection slot) and hands each complete [`Request`] to a handler,
//! one at a time, in arrival order; the handler's [`Response`] goes back on the wire in the
//! same byte layout Firecracker uses (`HTTP/1.1 204 ` with an empty reason phrase, JSON
//! bodies with `Content-Type` and `Content-Length`).
//!
//! The handler runs on the API thread. The VMM wraps it so that each request travels to the
//! VMM thread over a channel plus an eventfd, and the handler blocks until the answer comes
//! back: that is why the server never calls the handler for two requests at once.

mod connection;
mod http;
mod parse;
mod replay;
mod server;

pub use http::{Method, Request, Response};
pub use replay::serve_stream;
pub use server::{ApiServer, ApiServerError, ServerOptions};
