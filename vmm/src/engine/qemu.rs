//! The qemu engine: `qemu-system-x86_64 -accel tcg -M microvm` as a child,
//! guest RAM in a shared memfd for the vhost-user daemons, the serial
//! console in a file, no QEMU monitor, virtio-net only on tap fds the
//! caller handed in (`net`).

use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{EngineError, EngineInstance};
use crate::config::VmConfig;
use crate::process::{describe, Supervised};

/// The guest command line: ours first, the config's extra arguments last
/// so they can override (`loglevel=7` beats `quiet`).
pub fn kernel_cmdline(cfg: &VmConfig) -> String {
    let mut c = String::from("console=ttyS0 panic=-1 quiet");
    if cfg.vsock.agent_port != husk_protocol::DEFAULT_AGENT_PORT {
        c.push_str(&format!(
            " {}={}",
            husk_protocol::AGENT_PORT_CMDLINE_KEY,
            cfg.vsock.agent_port
        ));
    }
    if let Some(extra) = cfg
        .cmdline
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        c.push(' ');
        c.push_str(extra);
    }
    c
}

/// Escapes a value for a QEMU option list (`,` is doubled).
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The full qemu argument list for `cfg`.
pub fn qemu_args(cfg: &VmConfig) -> Vec<OsString> {
    let mem = cfg.memory_mib;
    let mut a: Vec<String> = vec![
        "-accel".into(),
        "tcg".into(),
        "-cpu".into(),
        "max".into(),
        // acpi=off makes QEMU put virtio_mmio.device= on the guest command
        // line (our kernel has no ACPI); PIT/PIC stay on so TCG can calibrate.
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
        "-serial".into(),
        format!("file:{}", opt_path(&cfg.console_log_path())),
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
    out.push(kernel_cmdline(cfg).into());
    out
}

/// A running qemu.
#[derive(Debug)]
pub struct QemuEngine {
    child: Supervised,
    stopping: bool,
}

impl QemuEngine {
    /// Starts qemu for `cfg`.
    pub fn start(cfg: &VmConfig) -> Result<Self, EngineError> {
        let program = crate::binaries::locate("qemu-system-x86_64", cfg.binaries.qemu.as_deref())?;
        let console = cfg.console_log_path();
        std::fs::File::create(&console).map_err(|source| EngineError::Console {
            path: console.clone(),
            source,
        })?;
        let mut cmd = Command::new(program);
        cmd.args(qemu_args(cfg));
        let tap_fds: Vec<i32> = cfg.net.iter().map(|n| n.tap_fd).collect();
        if !tap_fds.is_empty() {
            // SAFETY: between fork and exec the closure only calls the
            // async-signal-safe fcntl on fd numbers, allocating nothing.
            unsafe {
                cmd.pre_exec(move || {
                    for fd in &tap_fds {
                        if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        tracing::debug!(?cmd, "starting qemu");
        let child = Supervised::spawn("qemu", cmd, &cfg.state_dir.join("qemu.log"))?;
        Ok(QemuEngine {
            child,
            stopping: false,
        })
    }
}

impl EngineInstance for QemuEngine {
    fn name(&self) -> &str {
        "qemu"
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NetConfig, ShareConfig};

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
        let a: Vec<String> = qemu_args(&cfg)
            .iter()
            .map(|s| s.to_str().unwrap().to_owned())
            .collect();
        let joined = a.join(" ");
        for want in [
            "-accel tcg -cpu max -M microvm,acpi=off,memory-backend=mem",
            "-object memory-backend-memfd,id=mem,size=512M,share=on -m 512M -smp 2",
            "-no-reboot -nodefaults",
            "-monitor none",
            "-serial file:/run/s,,1/console.log",
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
            "console=ttyS0 panic=-1 quiet husk.agent_port=2000 loglevel=7"
        );

        cfg.vsock.agent_port = husk_protocol::DEFAULT_AGENT_PORT;
        cfg.cmdline = None;
        assert_eq!(kernel_cmdline(&cfg), "console=ttyS0 panic=-1 quiet");
        cfg.net.clear();
        let none: Vec<String> = qemu_args(&cfg)
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert!(!none.join(" ").contains("netdev"), "no network without net");
    }
}
