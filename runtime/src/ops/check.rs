//! `husk check`: whether this host can run husk's containers, and how, in a
//! few lines with one verdict. What the monitor decides (the engine `auto`
//! picks, the helper programs it finds) is asked of `husk-vmm
//! --probe-host`, so the answer comes from the code that will act on it;
//! the rest (kernel, initramfs, cgroups, the state root) is read here.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use husk_vmm_contract::host::HostReport;
use serde::Serialize;

use super::Runtime;
use crate::host_cgroup::Layout;
use crate::settings::{Effective, DEFAULT_CONFIG};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, with a cost or a limit worth knowing.
    Warn,
    /// husk cannot run containers here until this is fixed.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was looked at.
    pub name: &'static str,
    /// How it came out.
    pub status: Status,
    /// What was found, and what to do when it is not ok.
    pub detail: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Whether husk can run containers here.
    pub can_run: bool,
    /// One line saying so, and with which engine.
    pub verdict: String,
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// The monitor's own report, when it could be asked.
    pub host: Option<HostReport>,
    /// The configuration in effect, when it could be read.
    pub config: Option<ConfigReport>,
}

impl Report {
    /// The report for people: the verdict, then one line per check.
    pub fn to_text(&self) -> String {
        let mut s = format!("husk check: {}\n", self.verdict);
        for c in &self.checks {
            s.push_str(&format!("  {:<5} {:<18} {}\n", c.status, c.name, c.detail));
        }
        if let Some(config) = &self.config {
            s.push_str("effective configuration (flags > environment > file > built-in):\n");
            for e in &config.effective {
                s.push_str(&format!(
                    "  {:<18} {}  ({})\n",
                    e.key,
                    e.value.as_deref().unwrap_or("-"),
                    e.source
                ));
            }
        }
        s
    }
}

/// Where the guest kernel and initramfs are looked for.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The guest kernel (vmlinux).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
}

impl Artifacts {
    /// As `create` finds them: `HUSK_KERNEL`, `HUSK_INITRAMFS`, else the
    /// installed defaults.
    pub fn from_env() -> Self {
        let env = |k: &str, d: &str| std::env::var_os(k).map_or_else(|| d.into(), PathBuf::from);
        Artifacts {
            kernel: env("HUSK_KERNEL", crate::sizing::DEFAULT_KERNEL),
            initramfs: env("HUSK_INITRAMFS", crate::sizing::DEFAULT_INITRAMFS),
        }
    }
}

/// The configuration in effect: the file read (if any) and every key's
/// value and source.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    /// The configuration file read.
    pub path: Option<PathBuf>,
    /// Each key as in effect.
    pub effective: Vec<Effective>,
}

/// Runs every check; `config` is the configuration as loaded, or why it
/// could not be.
pub fn check(rt: &Runtime, artifacts: &Artifacts, config: Result<ConfigReport, String>) -> Report {
    let mut checks = vec![privileges(), configuration(&config)];
    let host = probe_host(&rt.vmm_binary);
    let host = match host {
        Ok(h) => {
            checks.push(Check {
                name: "husk-vmm",
                status: Status::Ok,
                detail: rt.vmm_binary.display().to_string(),
            });
            checks.push(kvm(&h));
            checks.push(engine(&h));
            for p in &h.programs {
                checks.push(program(p));
            }
            Some(h)
        }
        Err(detail) => {
            checks.push(Check {
                name: "husk-vmm",
                status: Status::Fail,
                detail,
            });
            None
        }
    };
    checks.push(kernel(&artifacts.kernel));
    checks.push(initramfs(&artifacts.initramfs));
    checks.push(cgroups(Layout::probe()));
    checks.push(user_namespaces(
        fs::read_to_string("/proc/sys/user/max_user_namespaces").ok(),
    ));
    checks.push(state_root(rt.root.path()));
    let can_run = checks.iter().all(|c| c.status != Status::Fail);
    let verdict = verdict(can_run, host.as_ref(), &checks);
    Report {
        can_run,
        verdict,
        checks,
        host,
        config: config.ok(),
    }
}

fn configuration(config: &Result<ConfigReport, String>) -> Check {
    let (status, detail) = match config {
        Ok(ConfigReport { path: Some(p), .. }) => (Status::Ok, format!("{} (read)", p.display())),
        Ok(ConfigReport { path: None, .. }) => (
            Status::Ok,
            format!("no {DEFAULT_CONFIG}: built-in defaults and the environment"),
        ),
        Err(e) => (Status::Fail, e.clone()),
    };
    Check {
        name: "configuration",
        status,
        detail,
    }
}

fn verdict(can_run: bool, host: Option<&HostReport>, checks: &[Check]) -> String {
    if !can_run {
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.name)
            .collect();
        return format!(
            "husk cannot run containers on this host: fix {}",
            failed.join(", ")
        );
    }
    match host {
        Some(h) if h.engine == "builtin" => {
            "this host can run containers with the builtin KVM engine".into()
        }
        Some(h) if h.accel.as_deref() == Some("kvm") => {
            "this host can run containers with the qemu engine on KVM".into()
        }
        _ => "this host can run containers with the qemu engine under TCG emulation \
              (no hardware virtualization: boots take seconds)"
            .into(),
    }
}

fn privileges() -> Check {
    if nix::unistd::geteuid().is_root() {
        Check {
            name: "privileges",
            status: Status::Ok,
            detail: "running as root".into(),
        }
    } else {
        Check {
            name: "privileges",
            status: Status::Fail,
            detail: "not root: husk mounts the bundle, makes cgroups and taps, and runs \
                     the monitor as root (run husk check as root)"
                .into(),
        }
    }
}

/// Asks the monitor binary for its view of the host.
fn probe_host(vmm: &Path) -> Result<HostReport, String> {
    let mut cmd = Command::new(vmm);
    cmd.arg("--probe-host");
    // The engine the configuration asks for (auto unless set).
    if let Some(engine) = std::env::var_os("HUSK_ENGINE") {
        cmd.arg("--engine").arg(engine);
    }
    let out = cmd.output().map_err(|e| {
        format!(
            "cannot run {}: {e} (install it next to husk or set HUSK_VMM)",
            vmm.display()
        )
    })?;
    if !out.status.success() {
        return Err(format!(
            "{} --probe-host failed ({}): {}",
            vmm.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{} --probe-host answered something else than a host report ({e}): is it \
             the same version as husk?",
            vmm.display()
        )
    })
}

/// What /dev/kvm and the CPU offer.
pub fn kvm(h: &HostReport) -> Check {
    let (status, detail) = match (h.hardware_virtualization, h.kvm_device) {
        (true, true) if h.under_hypervisor => (
            Status::Ok,
            "/dev/kvm opens and the CPU has VT-x/AMD-V, passed through by a hypervisor \
             (nested virtualization)",
        ),
        (true, true) => (Status::Ok, "/dev/kvm opens and the CPU has VT-x/AMD-V"),
        (true, false) => (
            Status::Warn,
            "the CPU has VT-x/AMD-V but /dev/kvm does not open read-write (load kvm_intel \
             or kvm_amd, check its permissions)",
        ),
        (false, true) => (
            Status::Warn,
            "/dev/kvm opens but the CPU has no VT-x/AMD-V (a PVM-backed or paravirtual \
             KVM): it cannot boot a Linux guest, so guests are emulated",
        ),
        (false, false) => (
            Status::Warn,
            "no usable /dev/kvm and no VT-x/AMD-V: guests are emulated",
        ),
    };
    Check {
        name: "kvm",
        status,
        detail: detail.into(),
    }
}

/// The engine `auto` picks, and why.
pub fn engine(h: &HostReport) -> Check {
    let (status, what) = match (h.engine.as_str(), h.accel.as_deref()) {
        ("builtin", _) => (Status::Ok, "builtin".to_owned()),
        ("qemu", Some("kvm")) => (Status::Ok, "qemu (KVM)".to_owned()),
        ("qemu", accel) => (
            Status::Warn,
            format!("qemu ({})", accel.unwrap_or("unknown accelerator")),
        ),
        (other, _) => (Status::Fail, other.to_owned()),
    };
    Check {
        name: "engine",
        status,
        detail: format!("{what}: {}", h.reason),
    }
}

fn program(p: &husk_vmm_contract::host::ProgramReport) -> Check {
    let name: &'static str = match p.name.as_str() {
        "virtiofsd" => "virtiofsd",
        "husk-vsockd" => "husk-vsockd",
        "qemu-system-x86_64" => "qemu",
        _ => "helper program",
    };
    let detail = match (&p.path, &p.version, &p.error) {
        (Some(path), Some(v), _) => format!("{v} ({})", path.display()),
        (_, _, Some(e)) => format!("{e} ({})", p.role),
        (path, _, _) => format!(
            "{} ({})",
            path.as_ref()
                .map_or("not found".into(), |p| p.display().to_string()),
            p.role
        ),
    };
    let status = match (p.version.is_some(), p.required) {
        (true, _) => Status::Ok,
        (false, true) => Status::Fail,
        (false, false) => Status::Warn,
    };
    Check {
        name,
        status,
        detail,
    }
}

/// The kernel config options husk needs in its guest kernel, and those it
/// needs off (`None`): vsock loopback would let a container reach the
/// agent's port from inside the guest without the agent's seccomp rule.
const KERNEL_NEEDS: &[(&str, Option<&str>)] = &[
    ("CONFIG_PVH", Some("y")),
    ("CONFIG_VIRTIO_MMIO", Some("y")),
    ("CONFIG_VIRTIO_VSOCKETS", Some("y")),
    ("CONFIG_VIRTIO_FS", Some("y")),
    ("CONFIG_CGROUPS", Some("y")),
    ("CONFIG_MEMCG", Some("y")),
    ("CONFIG_NAMESPACES", Some("y")),
    ("CONFIG_SECCOMP_FILTER", Some("y")),
    ("CONFIG_VSOCKETS_LOOPBACK", None),
];

/// The kernel: there, its version, and (from the `.config` installed next
/// to it as `vmlinux.config`) whether it has what husk needs.
pub fn kernel(path: &Path) -> Check {
    let fail = |detail: String| Check {
        name: "guest kernel",
        status: Status::Fail,
        detail,
    };
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            return fail(format!(
                "{}: {e} (scripts/setup.sh builds and installs it; or set HUSK_KERNEL)",
                path.display()
            ))
        }
    };
    if !bytes.starts_with(b"\x7fELF") {
        return fail(format!(
            "{}: not an ELF vmlinux (husk boots an uncompressed vmlinux through PVH)",
            path.display()
        ));
    }
    let version = linux_version(&bytes).unwrap_or_else(|| "unknown version".into());
    let config_path = config_next_to(path);
    let (status, options) = match fs::read_to_string(&config_path) {
        Ok(config) => {
            let wrong = kernel_config_problems(&config);
            if wrong.is_empty() {
                (Status::Ok, "has what husk needs".to_owned())
            } else {
                (
                    Status::Fail,
                    format!("{}: {}", config_path.display(), wrong.join(", ")),
                )
            }
        }
        Err(_) => (
            Status::Warn,
            format!(
                "no {} next to it: its options cannot be checked",
                config_path.display()
            ),
        ),
    };
    Check {
        name: "guest kernel",
        status,
        detail: format!("{} ({version}); {options}", path.display()),
    }
}

/// Where the kernel's `.config` is installed: `PATH.config`.
pub fn config_next_to(kernel: &Path) -> PathBuf {
    let mut p = kernel.as_os_str().to_owned();
    p.push(".config");
    PathBuf::from(p)
}

/// The options of [`KERNEL_NEEDS`] that `config` (a kernel `.config`) gets
/// wrong, each said as what it should be.
pub fn kernel_config_problems(config: &str) -> Vec<String> {
    let value = |sym: &str| {
        config.lines().find_map(|l| {
            l.strip_prefix(sym)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_owned)
        })
    };
    KERNEL_NEEDS
        .iter()
        .filter_map(|(sym, want)| match (want, value(sym)) {
            (Some(w), Some(v)) if v == *w => None,
            (Some(w), _) => Some(format!("{sym} should be {w}")),
            (None, Some(_)) => Some(format!("{sym} should be off")),
            (None, None) => None,
        })
        .collect()
}

/// The `Linux version ...` banner compiled into a kernel image, up to the
/// build host part.
pub fn linux_version(image: &[u8]) -> Option<String> {
    const TAG: &[u8] = b"Linux version ";
    let start = image.windows(TAG.len()).position(|w| w == TAG)? + TAG.len();
    let rest = &image[start..];
    let end = rest
        .iter()
        .position(|&b| b == b' ' || b == 0 || b == b'\n')
        .unwrap_or(rest.len().min(64));
    let v = std::str::from_utf8(&rest[..end]).ok()?;
    (!v.is_empty()).then(|| format!("Linux {v}"))
}

/// The initramfs: there, a newc cpio with an executable `init`.
pub fn initramfs(path: &Path) -> Check {
    let status_detail = match fs::File::open(path) {
        Err(e) => Err(format!(
            "{}: {e} (scripts/setup.sh builds and installs it; or set HUSK_INITRAMFS)",
            path.display()
        )),
        Ok(f) => {
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            let mut head = Vec::new();
            let _ = f.take(64 << 20).read_to_end(&mut head);
            match cpio_has_init(&head) {
                Ok(true) => Ok(format!(
                    "{} ({} KiB, with the agent as /init)",
                    path.display(),
                    size / 1024
                )),
                Ok(false) => Err(format!(
                    "{}: no /init in the archive (build it with guest-kernel/build-initramfs.sh)",
                    path.display()
                )),
                Err(e) => Err(format!("{}: {e}", path.display())),
            }
        }
    };
    let (status, detail) = match status_detail {
        Ok(d) => (Status::Ok, d),
        Err(d) => (Status::Fail, d),
    };
    Check {
        name: "initramfs",
        status,
        detail,
    }
}

/// Whether a newc cpio archive (uncompressed, as husk builds it) holds a
/// regular file named `init`.
pub fn cpio_has_init(archive: &[u8]) -> Result<bool, String> {
    let mut off = 0usize;
    loop {
        let hdr = archive
            .get(off..off + 110)
            .ok_or("truncated cpio archive (or not an uncompressed newc cpio)")?;
        if &hdr[..6] != b"070701" && &hdr[..6] != b"070702" {
            return Err("not an uncompressed newc cpio archive".into());
        }
        let field = |i: usize| {
            std::str::from_utf8(&hdr[6 + i * 8..14 + i * 8])
                .ok()
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .ok_or("bad cpio header")
        };
        let (mode, filesize, namesize) = (field(1)?, field(6)? as usize, field(11)? as usize);
        let name_start = off + 110;
        let name = archive
            .get(name_start..name_start + namesize.saturating_sub(1))
            .ok_or("truncated cpio name")?;
        if name == b"TRAILER!!!" {
            return Ok(false);
        }
        let name = name.strip_prefix(b"./").unwrap_or(name);
        if name == b"init" && mode & 0o170000 == 0o100000 {
            return Ok(true);
        }
        let data = (name_start + namesize).next_multiple_of(4);
        off = (data + filesize).next_multiple_of(4);
    }
}

/// The host's cgroup layout (husk puts each VM in a cgroup of its own).
pub fn cgroups(layout: std::io::Result<Layout>) -> Check {
    let layout = match layout {
        Ok(l) => l,
        Err(e) => {
            return Check {
                name: "cgroups",
                status: Status::Warn,
                detail: format!("cannot read the cgroup layout ({e}): VMs run without host limits"),
            }
        }
    };
    let v2 = layout.hierarchies.iter().any(|h| h.unified);
    let v1 = layout.hierarchies.iter().any(|h| !h.unified);
    let (status, detail) = match (v2, v1) {
        (true, false) => (Status::Ok, "cgroup v2 (unified)"),
        (true, true) => (
            Status::Ok,
            "hybrid (v1 controllers and a v2 hierarchy): the VM's limits go where each \
             controller is",
        ),
        (false, true) => (
            Status::Ok,
            "cgroup v1: the VM's limits go in the v1 controllers",
        ),
        (false, false) => (
            Status::Warn,
            "no cgroup hierarchy mounted: VMs run without host limits",
        ),
    };
    Check {
        name: "cgroups",
        status,
        detail: detail.into(),
    }
}

/// User namespaces on the host: virtiofsd's default sandbox uses
/// namespaces (the containers' own user namespaces are made in the guest).
pub fn user_namespaces(max: Option<String>) -> Check {
    let n = max.and_then(|s| s.trim().parse::<u64>().ok());
    let (status, detail) = match n {
        Some(0) => (
            Status::Warn,
            "user.max_user_namespaces is 0 on the host (containers' user namespaces are \
             made in the guest and are not affected)"
                .to_owned(),
        ),
        Some(n) => (
            Status::Ok,
            format!("available on the host (max {n}); containers' are made in the guest"),
        ),
        None => (
            Status::Ok,
            "not configurable on this kernel; containers' are made in the guest".to_owned(),
        ),
    };
    Check {
        name: "user namespaces",
        status,
        detail,
    }
}

/// The state root: can be made and written, and what filesystem it is on.
pub fn state_root(root: &Path) -> Check {
    let writable = fs::create_dir_all(root).and_then(|()| tempfile::tempfile_in(root).map(drop));
    match writable {
        Ok(()) => {
            let fs_name = nix::sys::statfs::statfs(root)
                .map(|s| fs_name(s.filesystem_type().0))
                .unwrap_or("unknown filesystem");
            Check {
                name: "state root",
                status: Status::Ok,
                detail: format!("{} ({fs_name}, writable)", root.display()),
            }
        }
        Err(e) => Check {
            name: "state root",
            status: Status::Fail,
            detail: format!(
                "{}: {e} (give a writable directory with --root)",
                root.display()
            ),
        },
    }
}

fn fs_name(magic: i64) -> &'static str {
    match magic {
        0x0102_1994 => "tmpfs",
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x794C_7630 => "overlayfs",
        _ => "other filesystem",
    }
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
