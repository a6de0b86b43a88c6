//! The qemu engine: `qemu-system-x86_64 -M microvm` as a child (`-accel kvm`
//! where KVM can run a guest, TCG elsewhere),
//! guest RAM in a shared memfd for the vhost-user daemons, the serial
//! console into the monitor's console relay (`crate::console`: a pipe
//! whose write end qemu inherits, as `-add-fd` and a `file` chardev on
//! `/dev/fdset/N`, so the monitor bounds the log), no QEMU monitor,
//! virtio-net only on tap fds the caller handed in (`net`).
//!
//! QEMU confines itself (QEMU 7.2 options): `-sandbox` (its seccomp
//! filter) and, when started as root, `-runas` [`QEMU_UID`]:[`QEMU_GID`]
//! and `-chroot` into an empty directory, both applied after the machine
//! was built and before the guest runs: the kernel and initramfs are read,
//! the console pipe, the vhost-user sockets and the tap fds are open, and
//! guest RAM is a memfd by then. `elevateprivileges=deny` is left out:
//! QEMU 7.2 installs its filter before `-runas` switches uid, and the
//! filter kills it at that `setgid` (measured: SIGSYS, syscall 106). With
//! uid 65534, no capabilities and no_new_privs, set*id cannot raise it.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use caps::Capability;
use husk_vmm_contract::config::VmConfig;

use super::{kernel_cmdline, Accel, EngineError, EngineInstance, HostFacts};
use crate::process::{describe, Supervised};

/// Escapes a value for a QEMU option list (`,` is doubled).
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The uid qemu switches to (`nobody` on Debian). Shared by every VM on
/// the host; see `vmm/README.md` for what that leaves open.
pub const QEMU_UID: u32 = 65534;
/// The gid qemu switches to (`nogroup` on Debian).
pub const QEMU_GID: u32 = 65534;

/// QEMU's own seccomp filter: obsolete syscalls, spawning processes and
/// changing scheduling/resource limits are refused.
pub const QEMU_SANDBOX: &str = "on,obsolete=deny,spawn=deny,resourcecontrol=deny";

/// What qemu may hold while it builds the machine as root (its bounding
/// set, so also its permitted set after exec): open the files and
/// sockets it is given, chroot, switch uid and gid. `-runas` then drops
/// them all; the bounding set stays this small.
pub const QEMU_CAPABILITIES: &[Capability] = &[
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SYS_CHROOT,
];

/// Runs in the forked child before exec: drops every capability but
/// `keep` from the bounding set. Async-signal-safe.
fn bound_capabilities(keep: &[u32]) -> std::io::Result<()> {
    // Past the last capability the kernel knows, PR_CAPBSET_DROP fails
    // with EINVAL: that ends the walk.
    for cap in 0..64u32 {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments changes only this process.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e);
        }
    }
    Ok(())
}

/// The empty directory qemu chroots into.
pub fn chroot_dir(cfg: &VmConfig) -> std::path::PathBuf {
    cfg.state_dir.join("qemu-root")
}

/// The fd set qemu's console pipe is added to (`-add-fd`).
const CONSOLE_FDSET: u32 = 1;

/// The full qemu argument list for `cfg` on `accel`, writing the serial
/// console to inherited fd `console_fd` (a pipe's write end); with
/// `drop_root` (the monitor runs as root) qemu switches to [`QEMU_UID`] and
/// chroots into [`chroot_dir`] before the guest starts (after it has opened
/// /dev/kvm).
pub fn qemu_args(cfg: &VmConfig, accel: Accel, console_fd: i32, drop_root: bool) -> Vec<OsString> {
    let mem = cfg.memory_mib;
    // TCG's translation cache is 1 GiB by default and fills as the guest
    // runs new code; qemu's memory is charged to the container's host
    // cgroup (guest RAM + the overhead in `host_cgroup`), so it is capped
    // at 128 MiB: a long, busy guest flushes it instead of growing qemu
    // towards that cgroup's limit.
    let accel_kind = accel;
    let (accel, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg,tb-size=128", "max"),
    };
    let mut a: Vec<String> = vec![
        "-accel".into(),
        accel.into(),
        "-cpu".into(),
        cpu.into(),
        // acpi=off makes QEMU put virtio_mmio.device= on the guest command
        // line (our kernel has no ACPI); PIT/PIC stay on: TCG calibrates the
        // TSC with the PIT and ticks with it (`nolapic_timer`).
        "-M".into(),
        "microvm,acpi=off,memory-backend=mem".into(),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        "-m".into(),
        format!("{mem}M"),
        "-smp".into(),
        cfg.vcpus.to_string(),
        "-no-reboot".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-sandbox".into(),
        QEMU_SANDBOX.into(),
        // The file chardev opens /dev/fdset/N by dup'ing the added fd;
        // append=on: QEMU 7.2 refuses O_TRUNC there (EINVAL).
        "-add-fd".into(),
        format!("fd={console_fd},set={CONSOLE_FDSET}"),
        "-chardev".into(),
        format!("file,id=console,path=/dev/fdset/{CONSOLE_FDSET},append=on"),
        "-serial".into(),
        "chardev:console".into(),
        "-chardev".into(),
        format!(
            "socket,id=vsock,path={}",
            opt_path(&cfg.vsock_backend_socket())
        ),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vsock".into(),
    ];
    for (i, s) in cfg.shares.iter().enumerate() {
        a.push("-chardev".into());
        a.push(format!(
            "socket,id=fs{i},path={}",
            opt_path(&cfg.fs_backend_socket(&s.tag))
        ));
        a.push("-device".into());
        a.push(format!("vhost-user-fs-device,chardev=fs{i},tag={}", s.tag));
    }
    for (i, n) in cfg.net.iter().enumerate() {
        // No vnet_hdr=: with fd= QEMU 7.2 refuses it and reads
        // IFF_VNET_HDR from the fd itself.
        a.push("-netdev".into());
        a.push(format!("tap,id=net{i},fd={}", n.tap_fd));
        a.push("-device".into());
        a.push(format!(
            "virtio-net-device,netdev=net{i},mac={},host_mtu={}",
            n.mac, n.mtu
        ));
    }
    if drop_root {
        a.push("-runas".into());
        a.push(format!("{QEMU_UID}:{QEMU_GID}"));
        a.push("-chroot".into());
        a.push(chroot_dir(cfg).display().to_string());
    }
    a.push("-kernel".into());
    a.push(cfg.kernel.display().to_string());
    let mut out: Vec<OsString> = a.into_iter().map(OsString::from).collect();
    // Keep the kernel and initramfs paths as given (they may not be UTF-8).
    out.pop();
    out.push(cfg.kernel.clone().into());
    if let Some(i) = &cfg.initramfs {
        out.push("-initrd".into());
        out.push(i.clone().into());
    }
    out.push("-append".into());
    out.push(kernel_cmdline(cfg, accel_kind).into());
    out
}

/// A running qemu.
#[derive(Debug)]
pub struct QemuEngine {
    child: Supervised,
    stopping: bool,
    /// The chroot directory, removed once qemu is gone.
    root: Option<std::path::PathBuf>,
}

impl QemuEngine {
    /// Starts qemu for `cfg`, its serial console writing to `console` (a
    /// close-on-exec pipe write end; only qemu inherits it, and the
    /// monitor's copy is closed once qemu runs).
    pub fn start(cfg: &VmConfig, console: OwnedFd) -> Result<Self, EngineError> {
        let program = crate::binaries::locate("qemu-system-x86_64", cfg.binaries.qemu.as_deref())?;
        let drop_root = nix::unistd::Uid::effective().is_root();
        if drop_root {
            make_empty_dir(&chroot_dir(cfg))?;
        } else {
            tracing::debug!("not root: qemu runs as this uid, without -runas/-chroot");
        }
        let mut cmd = Command::new(program);
        cmd.args(qemu_args(
            cfg,
            HostFacts::probe().qemu_accel(),
            console.as_raw_fd(),
            drop_root,
        ));
        // qemu inherits the tap fds and the console pipe, nothing else.
        let mut inherited: Vec<i32> = cfg.net.iter().map(|n| n.tap_fd).collect();
        inherited.push(console.as_raw_fd());
        // SAFETY: between fork and exec the closure only calls the
        // async-signal-safe fcntl on fd numbers, allocating nothing.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &inherited {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        if drop_root {
            let keep: Vec<u32> = QEMU_CAPABILITIES
                .iter()
                .map(|c| u32::from(c.index()))
                .collect();
            // SAFETY: between fork and exec the closure only calls the
            // async-signal-safe prctl with integers, allocating nothing.
            unsafe {
                cmd.pre_exec(move || bound_capabilities(&keep));
            }
        }
        tracing::debug!(?cmd, "starting qemu");
        let child = Supervised::spawn("qemu", cmd, &cfg.state_dir.join("qemu.log"))?;
        drop(console);
        child.record_in(&cfg.state_dir);
        Ok(QemuEngine {
            child,
            stopping: false,
            root: drop_root.then(|| chroot_dir(cfg)),
        })
    }
}

/// Creates `dir` (root-owned, mode 0555) or checks that it is empty: qemu
/// chroots there and must find nothing.
fn make_empty_dir(dir: &Path) -> Result<(), EngineError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| EngineError::Chroot {
        path: dir.to_owned(),
        source,
    };
    match std::fs::DirBuilder::new().mode(0o555).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::read_dir(dir).map_err(err)?.next().is_some() {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::DirectoryNotEmpty,
                    "not empty",
                )));
            }
            Ok(())
        }
        Err(e) => Err(err(e)),
    }
}

impl EngineInstance for QemuEngine {
    fn name(&self) -> &str {
        "qemu"
    }

    fn set_paused(&mut self, paused: bool) -> Result<(), String> {
        // Stopping the whole qemu process stops its vCPUs (and its device
        // threads, which have nothing to do meanwhile).
        let sig = if paused {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        let pid = nix::unistd::Pid::from_raw(self.child.pid() as i32);
        crate::privileges::with_kill_capability(|| nix::sys::signal::kill(pid, sig))
            .map_err(|e| format!("{sig} to qemu: {e}"))
    }

    fn pid(&self) -> Option<u32> {
        Some(self.child.pid())
    }

    fn exit_fd(&self) -> BorrowedFd<'_> {
        self.child.exit_fd()
    }

    fn try_wait(&mut self) -> Option<Result<(), String>> {
        let status = self.child.try_wait()?;
        // With -no-reboot a guest reboot (and a guest panic, panic=-1) ends
        // qemu with 0; anything else is qemu failing.
        if status.success() || self.stopping {
            Some(Ok(()))
        } else {
            Some(Err(format!(
                "qemu exited with {}: {}",
                describe(status),
                self.child.log_tail()
            )))
        }
    }

    fn wait_timeout(&mut self, timeout: Duration) -> bool {
        self.child.wait_timeout(timeout).is_some()
    }

    fn stop(&mut self, grace: Duration) {
        self.stopping = true;
        self.child.stop(grace);
        if let Some(root) = self.root.take() {
            let _ = std::fs::remove_dir(root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_vmm_contract::config::{NetConfig, ShareConfig};

    #[test]
    fn command_line() {
        let mut cfg = VmConfig::new("/k/vmlinux", "/run/s,1");
        cfg.initramfs = Some("/k/initramfs.cpio".into());
        cfg.memory_mib = 512;
        cfg.vcpus = 2;
        cfg.cmdline = Some(" loglevel=7 ".into());
        cfg.vsock.agent_port = 2000;
        cfg.shares
            .push("rootfs=/b/rootfs".parse::<ShareConfig>().unwrap());
        cfg.net.push(NetConfig {
            tap_fd: 4,
            mac: "02:42:0a:fe:01:02".into(),
            mtu: 1400,
        });
        let kvm = qemu_args(&cfg, Accel::Kvm, 9, true);
        assert_eq!(kvm[..4], ["-accel", "kvm", "-cpu", "host"]);
        let a: Vec<String> = qemu_args(&cfg, Accel::Tcg, 9, true)
            .iter()
            .map(|s| s.to_str().unwrap().to_owned())
            .collect();
        let joined = a.join(" ");
        for want in [
            "-accel tcg,tb-size=128 -cpu max -M microvm,acpi=off,memory-backend=mem",
            "-object memory-backend-memfd,id=mem,size=512M,share=on -m 512M -smp 2",
            "-no-reboot -nodefaults",
            "-monitor none -sandbox on,obsolete=deny,spawn=deny,resourcecontrol=deny",
            "-runas 65534:65534 -chroot /run/s,1/qemu-root -kernel",
            "-add-fd fd=9,set=1 -chardev file,id=console,path=/dev/fdset/1,append=on -serial chardev:console",
            "-chardev socket,id=vsock,path=/run/s,,1/vhost-vsock.sock -device vhost-user-vsock-device,chardev=vsock",
            "-chardev socket,id=fs0,path=/run/s,,1/vhost-fs-rootfs.sock -device vhost-user-fs-device,chardev=fs0,tag=rootfs",
            "-netdev tap,id=net0,fd=4 -device virtio-net-device,netdev=net0,mac=02:42:0a:fe:01:02,host_mtu=1400",
            "-kernel /k/vmlinux -initrd /k/initramfs.cpio",
        ] {
            assert!(joined.contains(want), "missing {want:?} in {joined}");
        }
        assert!(!joined.contains("pit=off"));
        assert_eq!(a[a.len() - 2], "-append");
        assert_eq!(
            a[a.len() - 1],
            "console=ttyS0 panic=-1 quiet no_timer_check tsc=reliable pty.legacy_count=0 \
             nolapic_timer husk.agent_port=2000 loglevel=7"
        );

        cfg.vsock.agent_port = husk_protocol::DEFAULT_AGENT_PORT;
        cfg.cmdline = None;
        assert_eq!(
            kernel_cmdline(&cfg, Accel::Kvm),
            "console=ttyS0 panic=-1 quiet no_timer_check tsc=reliable pty.legacy_count=0"
        );
        cfg.net.clear();
        let none: Vec<String> = qemu_args(&cfg, Accel::Tcg, 9, false)
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let none = none.join(" ");
        assert!(!none.contains("netdev"), "no network without net");
        assert!(
            !none.contains("-runas") && !none.contains("-chroot"),
            "{none}"
        );
        assert!(none.contains("-sandbox on,"), "{none}");
    }
}
