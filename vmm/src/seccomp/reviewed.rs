//! The reviewed allow-lists: the system calls each thread kind may make. A test compares them
//! with `resources/seccomp/x86_64.json`, so widening a filter needs a change here too, seen by
//! a reviewer. Calls allowed only with checked arguments are listed in `ARG_CHECKED`.

pub(super) const VMM: &[&str] = &[
    "brk",
    "clock_gettime",
    "close",
    "epoll_ctl",
    "epoll_wait",
    "exit_group",
    "fcntl",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "getpid",
    "io_uring_enter",
    "io_uring_register",
    "ioctl",
    "lseek",
    "madvise",
    // Usage metering: resident guest memory is counted with mincore over the guest mapping
    // (once a second, and on GET /usage). CPU time needs nothing new: clock_gettime on the
    // threads' CPU clocks.
    "mincore",
    "mmap",
    "mprotect",
    "mremap",
    "munmap",
    "newfstatat",
    "openat",
    "openat2",
    "preadv",
    "pwritev",
    "pread64",
    "pwrite64",
    "read",
    "rt_sigprocmask",
    "rt_sigreturn",
    // std mpsc channels back off with sched_yield when sender and receiver race on a
    // block boundary (seen on the api thread under a fast API client).
    "sched_yield",
    "sigaltstack",
    "statx",
    "tgkill",
    "write",
];

pub(super) const API: &[&str] = &[
    "accept4",
    "brk",
    "clock_gettime",
    "close",
    "epoll_ctl",
    "epoll_wait",
    "exit",
    "exit_group",
    "fcntl",
    "futex",
    "ioctl",
    "madvise",
    "mmap",
    "mprotect",
    "mremap",
    "munmap",
    "newfstatat",
    "poll",
    "ppoll",
    "read",
    "recvfrom",
    "rt_sigprocmask",
    "rt_sigreturn",
    // std mpsc channels back off with sched_yield when sender and receiver race on a
    // block boundary (seen on the api thread under a fast API client).
    "sched_yield",
    "sendto",
    "sigaltstack",
    "statx",
    "unlink",
    "write",
];

pub(super) const VCPU: &[&str] = &[
    "brk",
    "clock_gettime",
    "close",
    "exit",
    "exit_group",
    "fcntl",
    "futex",
    "io_uring_enter",
    "ioctl",
    "madvise",
    "mmap",
    "mprotect",
    "munmap",
    "read",
    "rt_sigprocmask",
    "rt_sigreturn",
    // std mpsc channels back off with sched_yield when sender and receiver race on a
    // block boundary (seen on the api thread under a fast API client).
    "sched_yield",
    "sigaltstack",
    "write",
];

pub(super) const IO: &[&str] = &[
    // virtio-vsock: host processes connecting to uds_path.
    "accept4",
    "brk",
    "clock_gettime",
    "close",
    // virtio-vsock: guest connections to <uds_path>_<port>, non-blocking.
    "connect",
    "epoll_ctl",
    "epoll_wait",
    "exit",
    "exit_group",
    "fallocate",
    "fcntl",
    "fdatasync",
    "ftruncate",
    "futex",
    // virtio-rng: the bytes of each entropy request, flags 0 only.
    "getrandom",
    "io_uring_enter",
    "madvise",
    "mmap",
    "mprotect",
    "mremap",
    "munmap",
    "preadv",
    "pwritev",
    "read",
    "readv",
    // virtio-vsock: UnixStream::read is recv(2).
    "recvfrom",
    "rt_sigprocmask",
    "rt_sigreturn",
    // virtio-vsock: UnixStream::write is send(2) with MSG_NOSIGNAL.
    "sendto",
    // virtio-vsock: the guest shut its sending side (the host reads EOF).
    "shutdown",
    "sigaltstack",
    // virtio-vsock: AF_UNIX stream sockets only (argument checked).
    "socket",
    "timerfd_settime",
    "write",
    "writev",
];

/// Calls whose every rule checks arguments (in every filter that allows them).
pub(super) const ARG_CHECKED: &[&str] = &[
    "fcntl",
    "getrandom",
    "io_uring_register",
    "ioctl",
    "madvise",
    "mmap",
    "mprotect",
    "socket",
    "tgkill",
];
