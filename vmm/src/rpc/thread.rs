//! The `api` thread: the socket server, with each request logged and counted, forwarding
//! actions to the VMM thread through [`super::api_handler`].

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use api_socket::{ApiServer, Request, Response};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::bridge::{api_handler, ApiRequest};
use super::routes::ROUTES;
use crate::metrics;

/// Stack of the `api` thread. It parses request bodies, and a body may nest as deep as
/// serde_json allows (128 levels) in a field kept as a JSON value (`vsock_override`): parsed,
/// compared with what serde read and dropped, that touches 240 KiB in a debug build (measured
/// with 127 levels; release: 68 KiB). 512 KiB: twice the worst case, a quarter of Rust's
/// default.
pub const API_STACK_SIZE: usize = 512 << 10;

/// Runs first on the `api` thread, before any request is read (its seccomp filter).
pub use crate::builder::ThreadStartHook;

/// Errors while starting the API thread.
#[derive(Debug, thiserror::Error)]
pub enum ApiThreadError {
    #[error("cannot create the API eventfds: {0}")]
    EventFd(std::io::Error),
    #[error("cannot start the api thread: {0}")]
    Spawn(std::io::Error),
    #[error("the api thread failed to start: {0}")]
    Hook(String),
}

/// The metrics key of a request: its method and route template's fixed part
/// (`PUT /drives`, `GET /vm/config`); `other` for paths xenia does not serve.
pub fn route_key(request: &Request) -> String {
    let mut segments = request.path.trim_start_matches('/').split('/');
    let first = segments.next().unwrap_or("");
    let second = segments.next().unwrap_or("");
    let route = if first == "vm" && second == "config" {
        "/vm/config".to_owned()
    } else {
        format!("/{first}")
    };
    let served = ROUTES.iter().any(|(method, template)| {
        let fixed = match template.rsplit_once("/{") {
            Some((fixed, _)) => fixed,
            None => template,
        };
        *method == request.method && fixed == route
    });
    if served {
        format!("{} {route}", request.method)
    } else {
        "other".to_owned()
    }
}

/// Wraps `handler` so that each request is timed, counted in the metrics and logged: one
/// Info line per request; 5xx answers (the VMM's own faults) at Error. A 4xx is the client's
/// business and stays at Info, so a misbehaving client cannot flood a Warning-level log.
pub fn instrumented(
    mut handler: impl FnMut(Request) -> Response,
) -> impl FnMut(Request) -> Response {
    move |request: Request| {
        let started = Instant::now();
        let method = request.method;
        let path = request.path.clone();
        let key = route_key(&request);
        let response = handler(request);
        let elapsed = started.elapsed();
        let failed = response.status >= 400;
        metrics::global().record_api(&key, elapsed, failed);
        let fault = if failed {
            response
                .body
                .as_deref()
                .map(|b| format!(": {}", String::from_utf8_lossy(b)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let us = elapsed.as_micros();
        if response.status >= 500 {
            log::error!(
                "API {method} {path} -> {} in {us} us{fault}",
                response.status
            );
        } else {
            log::info!(
                "API {method} {path} -> {} in {us} us{fault}",
                response.status
            );
        }
        response
    }
}

/// The running `api` thread and the VMM thread's ends of its channel.
#[derive(Debug)]
pub struct ApiThread {
    /// Requests for the VMM thread.
    pub requests: Receiver<ApiRequest>,
    /// Readable when requests are queued.
    pub wake: EventFd,
    shutdown: EventFd,
    done: Receiver<()>,
    thread: JoinHandle<()>,
}

impl ApiThread {
    /// Starts the `api` thread serving `server`; `on_start` runs on it first. Returns once
    /// the hook has run, with its error if it failed.
    pub fn spawn(server: ApiServer, on_start: ThreadStartHook) -> Result<Self, ApiThreadError> {
        let wake = EventFd::new(EFD_NONBLOCK).map_err(ApiThreadError::EventFd)?;
        let shutdown = EventFd::new(EFD_NONBLOCK).map_err(ApiThreadError::EventFd)?;
        let (to_vmm, requests) = channel();
        let (started_tx, started) = channel();
        let (done_tx, done) = channel();
        let thread_wake = wake.try_clone().map_err(ApiThreadError::EventFd)?;
        let thread_shutdown = shutdown.try_clone().map_err(ApiThreadError::EventFd)?;
        let thread = std::thread::Builder::new()
            .name("api".into())
            .stack_size(API_STACK_SIZE)
            .spawn(move || {
                crate::usage::register_current(crate::usage::ThreadRole::Api);
                serve(
                    server,
                    on_start,
                    to_vmm,
                    thread_wake,
                    thread_shutdown,
                    started_tx,
                );
                let _ = done_tx.send(());
            })
            .map_err(ApiThreadError::Spawn)?;
        match started.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ApiThreadError::Hook(e)),
            Err(_) => return Err(ApiThreadError::Hook("the thread ended early".into())),
        }
        Ok(Self {
            requests,
            wake,
            shutdown,
            done,
            thread,
        })
    }

    /// Stops the server (which removes the socket file) and waits up to `timeout` for it.
    /// Dropping `self.requests` first (done here) releases a request waiting on the VMM.
    pub fn stop(self, timeout: Duration) -> bool {
        let Self {
            requests,
            shutdown,
            done,
            thread,
            ..
        } = self;
        drop(requests);
        if let Err(e) = shutdown.write(1) {
            log::warn!("cannot stop the api thread: {e}");
            return false;
        }
        match done.recv_timeout(timeout) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
        }
    }
}

fn serve(
    server: ApiServer,
    on_start: ThreadStartHook,
    to_vmm: Sender<ApiRequest>,
    wake: EventFd,
    shutdown: EventFd,
    started: Sender<Result<(), String>>,
) {
    warm_up();
    if let Err(e) = on_start() {
        let _ = started.send(Err(e));
        return;
    }
    let _ = started.send(Ok(()));
    let handler = instrumented(api_handler(to_vmm, wake));
    if let Err(e) = server.run_until(&shutdown, handler) {
        log::error!("the API server stopped: {e}");
    }
}

/// Canned requests for [`warm_up`]: the two most common first calls, one with a body.
const WARM_UP_INPUT: &[u8] =
    b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n\
PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
Content-Length: 38\r\n\r\n{\"vcpu_count\": 1, \"mem_size_mib\": 128}";

/// Serves the canned requests over an in-memory connection before the thread serves the
/// socket: the first real request then finds this thread's code pages mapped, its heap arena
/// and stack touched and the framing, routing and JSON paths run once (measured: the first
/// request of a process cost ~90 µs more than one after the same idle time, five page faults
/// among it). Nothing reaches the VMM thread. Runs before the seccomp filter: it makes a
/// socket pair, which the serving thread never needs.
fn warm_up() {
    use super::response::{response_for, InstanceInfo, InstanceState, VmmData};
    let mut handler = |request: Request| match super::routes::parse_request(&request) {
        // The answer to `GET /` is serialised here as the real one is (on this thread).
        Ok(_) if request.body.is_empty() => response_for(Ok(VmmData::InstanceInfo(InstanceInfo {
            id: String::new(),
            state: InstanceState::NotStarted,
            vmm_version: String::new(),
            app_name: String::new(),
        }))),
        Ok(_) => Response::no_content(),
        Err(e) => e.into(),
    };
    if let Err(e) = api_socket::serve_stream(
        WARM_UP_INPUT,
        &api_socket::ServerOptions::default(),
        &mut handler,
    ) {
        log::debug!("api thread warm-up skipped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api_socket::Method;

    fn req(method: Method, path: &str) -> Request {
        Request {
            method,
            path: path.into(),
            query: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    #[test]
    fn the_warm_up_requests_parse() {
        let mut answers = Vec::new();
        let mut handler = |request: Request| {
            answers.push(super::super::routes::parse_request(&request).is_ok());
            Response::no_content()
        };
        api_socket::serve_stream(
            WARM_UP_INPUT,
            &api_socket::ServerOptions::default(),
            &mut handler,
        )
        .unwrap();
        assert_eq!(answers, [true, true]);
    }

    #[test]
    fn route_keys_group_by_template() {
        assert_eq!(route_key(&req(Method::Get, "/")), "GET /");
        assert_eq!(route_key(&req(Method::Put, "/drives/root")), "PUT /drives");
        assert_eq!(route_key(&req(Method::Get, "/vm/config")), "GET /vm/config");
        assert_eq!(route_key(&req(Method::Patch, "/vm")), "PATCH /vm");
        assert_eq!(
            route_key(&req(Method::Put, "/machine-config")),
            "PUT /machine-config"
        );
        assert_eq!(route_key(&req(Method::Put, "/bogus")), "other");
        assert_eq!(route_key(&req(Method::Get, "/actions")), "other");
        assert_eq!(route_key(&req(Method::Get, "/vm")), "other");
    }
}
