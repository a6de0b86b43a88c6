//! The syscalls each husk-vmm thread may make once confined, by name, with
//! the argument limits that matter. Collected with `strace -f` and the
//! filters' own `log` mode over the unit, KVM and end-to-end tests of both
//! engines and both modes (see `vmm/README.md`, "Confinement").
//!
//! A thread inherits the filters of the thread that created it and the
//! kernel applies all of them, so a thread's effective allowlist is the
//! intersection along its ancestry: the net worker (created by a vCPU
//! thread) needs everything it calls in the vCPU list too, the container
//! pumps (created by the main thread) in the main list. Tests check both.

use super::{Allowed, Cond, ThreadKind};

/// Builds an [`Allowed`] from a `libc::SYS_*` constant and optional
/// argument conditions (all must hold).
macro_rules! sys {
    ($nr:ident) => {
        Allowed::new(libc::$nr, stringify!($nr), Vec::new())
    };
    ($nr:ident, $($cond:expr),+ $(,)?) => {
        Allowed::new(libc::$nr, stringify!($nr), vec![$($cond),+])
    };
}

/// What the process knows when it builds a filter.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// This process's pid (tgkill may only target our own threads).
    pub pid: i32,
    /// The children the main thread may signal (qemu, the daemons).
    pub children: Vec<i32>,
}

/// glibc's internal signal for set*id calls across threads
/// (`__SIGRTMIN + 1`; `libc::SIGRTMIN()` is past it).
const GLIBC_SIGSETXID: u64 = 33;

/// `prot` must not ask for executable memory.
fn no_exec(index: u8) -> Cond {
    Cond::BitsClear {
        index,
        mask: libc::PROT_EXEC as u64,
    }
}

/// The vCPU kick (see `husk_kvm::vcpu`): real-time signal SIGRTMIN.
fn sigrtmin() -> u64 {
    vmm_sys_util::signal::SIGRTMIN() as u64
}

/// Every thread: memory, locks, time, logging, signal return, exit.
fn common() -> Vec<Allowed> {
    vec![
        // I/O on fds the thread already holds; tracing writes its lines.
        sys!(SYS_read),
        sys!(SYS_write),
        sys!(SYS_writev),
        sys!(SYS_close),
        // Debug builds of std check that an fd is open before closing it.
        sys!(
            SYS_fcntl,
            Cond::OneOf {
                index: 1,
                values: vec![libc::F_GETFD as u64],
            }
        ),
        // Mutexes, condvars, channels, joins.
        sys!(SYS_futex),
        // malloc (glibc arenas grow by mprotect), thread stacks; never
        // executable memory.
        sys!(SYS_brk),
        sys!(SYS_mmap, no_exec(2)),
        sys!(SYS_mprotect, no_exec(2)),
        sys!(SYS_munmap),
        sys!(SYS_mremap),
        sys!(SYS_madvise),
        // Signal masks, returning from the kick handler, Rust's per-thread
        // alternate signal stack (removed at thread exit).
        sys!(SYS_rt_sigprocmask),
        sys!(SYS_rt_sigreturn),
        sys!(SYS_sigaltstack),
        sys!(SYS_restart_syscall),
        // Clocks and sleeps when the vDSO does not answer.
        sys!(SYS_clock_gettime),
        sys!(SYS_clock_nanosleep),
        sys!(SYS_nanosleep),
        sys!(SYS_sched_yield),
        sys!(SYS_getpid),
        sys!(SYS_gettid),
        // std's HashMap seeds in a thread that never made one.
        sys!(SYS_getrandom),
        sys!(SYS_exit),
        sys!(SYS_exit_group),
    ]
}

/// `tgkill` of this process's own threads with one of `signals` only.
fn tgkill_own(ctx: &Context, signals: &[u64]) -> Allowed {
    sys!(
        SYS_tgkill,
        Cond::OneOf {
            index: 0,
            values: vec![ctx.pid as u64],
        },
        Cond::OneOf {
            index: 2,
            values: signals.to_vec(),
        }
    )
}

/// Creating threads, and what a new thread does before it installs its own
/// filter (it runs under its creator's). `clone3` gets ENOSYS
/// (`super::refused`), so glibc falls back to `clone`, whose flags seccomp
/// can see: threads only, never a new process.
fn thread_spawn() -> Vec<Allowed> {
    vec![
        sys!(
            SYS_clone,
            Cond::BitsSet {
                index: 0,
                mask: libc::CLONE_THREAD as u64,
            }
        ),
        // glibc installs its set*id broadcast handler (SIGSETXID, signal
        // 33) at a process's first pthread_create, which in container
        // mode with qemu comes after the main thread is confined.
        sys!(
            SYS_rt_sigaction,
            Cond::OneOf {
                index: 0,
                values: vec![GLIBC_SIGSETXID],
            }
        ),
        sys!(SYS_set_robust_list),
        sys!(SYS_rseq),
        // glibc's pthread_getattr_np, which std calls for the stack guard.
        sys!(SYS_sched_getaffinity),
        // std names the thread; the thread then drops its capabilities
        // and sets no_new_privs (`crate::privileges`), which only ever
        // lowers them.
        sys!(
            SYS_prctl,
            Cond::OneOf {
                index: 0,
                values: vec![
                    libc::PR_SET_NAME as u64,
                    libc::PR_CAPBSET_READ as u64,
                    libc::PR_CAPBSET_DROP as u64,
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_SET_NO_NEW_PRIVS as u64,
                ],
            }
        ),
        sys!(SYS_capget),
        sys!(SYS_capset),
        // ...and installs its own filter, which can only narrow this one.
        sys!(
            SYS_seccomp,
            Cond::OneOf {
                index: 0,
                values: vec![libc::SECCOMP_SET_MODE_FILTER as u64],
            }
        ),
    ]
}

/// The main thread after setup: its poll loop (signalfd, pidfds, the
/// engine's exit eventfd, the console relay's ready eventfd), stopping and reaping children,
/// removing sockets; in container mode the agent connections and the
/// threads it starts.
fn main_thread(ctx: &Context) -> Vec<Allowed> {
    let mut v = vec![
        sys!(SYS_poll),
        sys!(SYS_ppoll),
        // Read-only opens: the state directory (leftover vsock sockets),
        // a log tail. Everything the monitor writes is open already.
        sys!(
            SYS_openat,
            Cond::BitsClear {
                index: 2,
                mask: (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64,
            }
        ),
        sys!(SYS_fstat),
        sys!(SYS_newfstatat),
        sys!(SYS_statx),
        sys!(SYS_lseek),
        sys!(SYS_getdents64),
        sys!(SYS_fcntl),
        // Removing the daemons' sockets and pid files, qemu's empty root.
        sys!(SYS_unlink),
        sys!(SYS_unlinkat),
        sys!(SYS_rmdir),
        // Reaping children.
        sys!(SYS_wait4),
        sys!(SYS_waitid),
        // The agent: hybrid vsock is a Unix socket.
        sys!(
            SYS_socket,
            Cond::OneOf {
                index: 0,
                values: vec![libc::AF_UNIX as u64],
            }
        ),
        sys!(
            SYS_socketpair,
            Cond::OneOf {
                index: 0,
                values: vec![libc::AF_UNIX as u64],
            }
        ),
        sys!(SYS_connect),
        sys!(SYS_setsockopt),
        sys!(SYS_getsockopt),
        sys!(SYS_shutdown),
        sys!(SYS_sendto),
        sys!(SYS_recvfrom),
        // set_nonblocking and the terminal's window size.
        sys!(
            SYS_ioctl,
            Cond::OneOf {
                index: 1,
                values: vec![libc::FIONBIO, libc::TIOCGWINSZ],
            }
        ),
        // Kicking vCPU threads out of KVM_RUN; abort().
        tgkill_own(ctx, &[sigrtmin(), libc::SIGABRT as u64]),
    ];
    // Stopping our own children, nobody else (CAP_KILL is raised around
    // it with capget/capset from `thread_spawn`: qemu runs as another uid);
    // SIGSTOP/SIGCONT pause and resume qemu (`husk pause`).
    if !ctx.children.is_empty() {
        v.push(sys!(
            SYS_kill,
            Cond::OneOf {
                index: 0,
                values: ctx.children.iter().map(|&p| p as u64).collect(),
            },
            Cond::OneOf {
                index: 1,
                values: [libc::SIGTERM, libc::SIGKILL, libc::SIGSTOP, libc::SIGCONT]
                    .iter()
                    .map(|&s| s as u64)
                    .collect(),
            }
        ));
    }
    v.extend(thread_spawn());
    v
}

/// A vCPU thread: `KVM_RUN` and the device emulation it dispatches to,
/// which includes activating devices (vhost-user messages with fds,
/// starting the net worker, whose own list must be a subset of this one)
/// and dropping them when the last vCPU ends.
fn vcpu(ctx: &Context) -> Vec<Allowed> {
    let mut v = vec![
        sys!(
            SYS_ioctl,
            Cond::OneOf {
                index: 1,
                values: vec![kvm::KVM_RUN(), kvm::KVM_GET_REGS()],
            }
        ),
        // vhost-user frontend: requests carry fds (memfd, eventfds).
        sys!(SYS_sendmsg),
        sys!(SYS_recvmsg),
        sys!(SYS_sendto),
        sys!(SYS_recvfrom),
        sys!(SYS_shutdown),
        sys!(SYS_fcntl),
        // Net activation: its stop eventfd, epoll set and worker.
        sys!(SYS_eventfd2),
        sys!(SYS_epoll_create1),
        sys!(SYS_epoll_ctl),
        sys!(SYS_epoll_wait),
        sys!(SYS_epoll_pwait),
        sys!(SYS_poll),
        sys!(SYS_ppoll),
        sys!(SYS_readv),
        // Kicking the other vCPUs when the guest stops; abort().
        tgkill_own(ctx, &[sigrtmin(), libc::SIGABRT as u64]),
    ];
    v.extend(thread_spawn());
    v
}

/// The virtio-net worker: epoll on the kicks, the tap and its stop
/// eventfd; frames between guest memory and the tap.
fn net_worker(ctx: &Context) -> Vec<Allowed> {
    vec![
        sys!(SYS_epoll_wait),
        sys!(SYS_epoll_pwait),
        sys!(SYS_epoll_ctl),
        sys!(SYS_readv),
        // abort().
        tgkill_own(ctx, &[libc::SIGABRT as u64]),
    ]
}

/// Container mode's stdio pumps and the `WaitProcess` waiter: bytes
/// between the monitor's stdio and agent streams, one request and answer.
fn pump(ctx: &Context) -> Vec<Allowed> {
    vec![
        sys!(SYS_setsockopt),
        sys!(SYS_shutdown),
        sys!(SYS_sendto),
        sys!(SYS_recvfrom),
        sys!(SYS_poll),
        sys!(SYS_ppoll),
        tgkill_own(ctx, &[libc::SIGABRT as u64]),
    ]
}

/// The console relay (started by the main thread before it confines
/// itself): poll on the console pipe and its stop eventfd, the pipe made
/// non-blocking to drain it, positioned reads and writes and truncation
/// of the log it holds open, the ready eventfd.
fn console(ctx: &Context) -> Vec<Allowed> {
    vec![
        sys!(SYS_poll),
        sys!(SYS_ppoll),
        sys!(
            SYS_fcntl,
            Cond::OneOf {
                index: 1,
                values: vec![libc::F_GETFD as u64, libc::F_SETFL as u64],
            }
        ),
        sys!(SYS_pread64),
        sys!(SYS_pwrite64),
        sys!(SYS_ftruncate),
        tgkill_own(ctx, &[libc::SIGABRT as u64]),
    ]
}

/// The full allowlist of `kind`.
pub fn allowlist(kind: ThreadKind, ctx: &Context) -> Vec<Allowed> {
    let mut v = common();
    v.extend(match kind {
        ThreadKind::Main => main_thread(ctx),
        ThreadKind::Vcpu => vcpu(ctx),
        ThreadKind::NetWorker => net_worker(ctx),
        ThreadKind::Pump => pump(ctx),
        ThreadKind::Console => console(ctx),
    });
    v
}

/// The two KVM ioctls a vCPU thread makes, numbered from kvm-bindings'
/// `KVMIO` (kvm-ioctls keeps its own table private).
#[allow(non_snake_case)]
mod kvm {
    use kvm_bindings::{kvm_regs, KVMIO};
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr};

    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
}
