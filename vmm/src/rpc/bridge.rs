//! The API thread's handler: parse on the API thread, execute on the VMM thread.
//!
//! Each accepted request becomes an [`ApiRequest`] sent over an mpsc channel; the VMM
//! thread's event loop is woken through an `EventFd`, executes the action and replies on
//! the request's own channel, which the API thread waits on. Requests that do not parse are
//! answered on the API thread without waking the VMM.

use std::sync::mpsc::{channel, Receiver, Sender};

use api_socket::{Request, Response};
use vmm_sys_util::eventfd::EventFd;

use super::response::{response_for, ActionError, VmmData};
use super::routes::{note_deprecations, parse_request};
use super::VmmAction;

/// One action for the VMM thread and where to send its outcome.
#[derive(Debug)]
pub struct ApiRequest {
    pub action: VmmAction,
    pub reply: Sender<Result<VmmData, ActionError>>,
}

/// Builds the handler for [`api_socket::ApiServer::run`]: requests go to `to_vmm`, and
/// `wake` is written after each send so the VMM thread's epoll notices.
pub fn api_handler(to_vmm: Sender<ApiRequest>, wake: EventFd) -> impl FnMut(Request) -> Response {
    move |request: Request| {
        let parsed = match parse_request(&request) {
            Ok(parsed) => parsed,
            Err(e) => {
                log::debug!("API {} {}: {e}", request.method, request.path);
                return e.into();
            }
        };
        note_deprecations(&parsed);
        let deprecated = parsed.is_deprecated();
        let (reply, answer) = channel();
        let sent = to_vmm.send(ApiRequest {
            action: parsed.action,
            reply,
        });
        if sent.is_err() || wake.write(1).is_err() {
            return Response::fault(500, "Internal error: the VMM thread is gone.");
        }
        let response = match answer.recv() {
            Ok(result) => response_for(result),
            Err(_) => Response::fault(500, "Internal error: the VMM thread did not answer."),
        };
        if deprecated {
            response.deprecated()
        } else {
            response
        }
    }
}

/// The VMM-side end: drains every queued request, executing each with `execute`. Call it
/// when the `EventFd` given to [`api_handler`] is readable (after reading the eventfd).
pub fn serve_pending(
    requests: &Receiver<ApiRequest>,
    mut execute: impl FnMut(VmmAction) -> Result<VmmData, ActionError>,
) {
    while let Ok(ApiRequest { action, reply }) = requests.try_recv() {
        // The API thread may have gone away; nothing to tell it then.
        let _ = reply.send(execute(action));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api_socket::Method;
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

    fn request(method: Method, path: &str, body: &str) -> Request {
        Request {
            method,
            path: path.into(),
            query: None,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    /// A VMM thread stand-in: waits on the eventfd with epoll, answers GetVersion with data,
    /// StartInstance with an error, everything else with Empty.
    fn fake_vmm(
        rx: Receiver<ApiRequest>,
        wake: EventFd,
        count: usize,
    ) -> std::thread::JoinHandle<usize> {
        std::thread::spawn(move || {
            let epoll = Epoll::new().expect("epoll");
            epoll
                .ctl(
                    ControlOperation::Add,
                    std::os::unix::io::AsRawFd::as_raw_fd(&wake),
                    EpollEvent::new(EventSet::IN, 0),
                )
                .expect("add eventfd");
            let mut served = 0;
            let mut events = [EpollEvent::default(); 1];
            while served < count {
                let n = epoll.wait(20_000, &mut events).expect("wait");
                assert_eq!(n, 1, "the API thread never woke the VMM");
                let _ = wake.read();
                serve_pending(&rx, |action| {
                    served += 1;
                    match action {
                        VmmAction::GetVersion => Ok(VmmData::Version(super::super::VersionInfo {
                            firecracker_version: "0.1.0".into(),
                        })),
                        VmmAction::StartInstance => Err(ActionError::Failed("no kernel".into())),
                        _ => Ok(VmmData::Empty),
                    }
                });
            }
            served
        })
    }

    #[test]
    fn requests_round_trip_through_the_vmm_thread() {
        let (tx, rx) = channel();
        let wake = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let vmm = fake_vmm(rx, wake.try_clone().expect("clone"), 3);
        let mut handler = api_handler(tx, wake);

        let r = handler(request(Method::Get, "/version", ""));
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body.as_deref(),
            Some(&br#"{"firecracker_version":"0.1.0"}"#[..])
        );

        let r = handler(request(
            Method::Put,
            "/actions",
            r#"{"action_type": "InstanceStart"}"#,
        ));
        assert_eq!(r.status, 400);
        assert_eq!(
            r.body.as_deref(),
            Some(&br#"{"fault_message":"no kernel"}"#[..])
        );

        // A bad request is answered here and never reaches the VMM.
        let r = handler(request(Method::Put, "/nope", "{}"));
        assert_eq!(r.status, 400);

        let r = handler(request(Method::Patch, "/vm", r#"{"state": "Paused"}"#));
        assert_eq!(r.status, 204);
        assert_eq!(vmm.join().expect("vmm thread"), 3);
    }

    #[test]
    fn a_vanished_vmm_thread_gives_500() {
        let (tx, rx) = channel();
        drop(rx);
        let wake = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut handler = api_handler(tx, wake);
        assert_eq!(handler(request(Method::Get, "/", "")).status, 500);
    }
}
