//! `husk-vmm --probe-host`: what this host offers the monitor, said by the
//! code that decides (engine selection, the helper-program search), for
//! `husk check`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_vmm_contract::config::{BinaryPaths, EngineChoice};
use husk_vmm_contract::host::{HostReport, ProgramReport};

use crate::engine::{self, Accel, EngineKind, HostFacts};

/// How long a helper's `--version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// This host's report, with the helper paths the config or flags name
/// (`None`: searched for as the monitor does).
pub fn host_report(choice: EngineChoice, binaries: &BinaryPaths) -> HostReport {
    let facts = HostFacts::probe();
    let (kind, reason) = engine::select(choice, facts);
    let qemu = kind == EngineKind::Qemu;
    let programs = [
        (
            "virtiofsd",
            "the virtio-fs daemon (the rootfs share)",
            true,
            binaries.virtiofsd.as_deref(),
        ),
        (
            crate::daemons::VSOCK_PROGRAM,
            "the vsock daemon (the agent's connections)",
            true,
            binaries.vhost_device_vsock.as_deref(),
        ),
        (
            "qemu-system-x86_64",
            "the qemu engine",
            qemu,
            binaries.qemu.as_deref(),
        ),
    ]
    .into_iter()
    .map(|(name, role, required, explicit)| {
        // The daemons are looked for as the monitor does: next to it first.
        let own = name != "qemu-system-x86_64";
        program(name, role, required, explicit, own)
    })
    .collect();
    HostReport {
        hardware_virtualization: facts.hardware_virtualization(),
        kvm_device: facts.kvm_device,
        under_hypervisor: husk_kvm::cpu::has_cpu_flag(&facts.cpuinfo, "hypervisor"),
        engine: match kind {
            EngineKind::Builtin => "builtin",
            EngineKind::Qemu => "qemu",
        }
        .into(),
        accel: qemu.then(|| match facts.qemu_accel() {
            Accel::Kvm => "kvm".to_owned(),
            Accel::Tcg => "tcg".to_owned(),
        }),
        reason,
        programs,
    }
}

fn program(
    name: &'static str,
    role: &str,
    required: bool,
    explicit: Option<&Path>,
    own: bool,
) -> ProgramReport {
    let mut r = ProgramReport {
        name: name.into(),
        role: role.into(),
        required,
        path: None,
        version: None,
        error: None,
    };
    let found = if own {
        crate::binaries::locate_own(name, explicit)
    } else {
        crate::binaries::locate(name, explicit)
    };
    match found {
        Ok(p) => {
            match version_of(&p) {
                Ok(v) => r.version = Some(v),
                Err(e) => r.error = Some(e),
            }
            r.path = Some(p);
        }
        Err(e) => r.error = Some(e.to_string()),
    }
    r
}

/// The first line of `program --version`, killed after [`VERSION_TIMEOUT`].
fn version_of(program: &Path) -> Result<String, String> {
    let mut child = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let end = Instant::now() + VERSION_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} --version did not answer within {VERSION_TIMEOUT:?}",
                    program.display()
                ));
            }
        }
    };
    let mut out = String::new();
    if let Some(o) = child.stdout.take() {
        use std::io::Read;
        let _ = o.take(4096).read_to_string(&mut out);
    }
    let line = out.lines().next().unwrap_or("").trim().to_owned();
    if !status.success() || line.is_empty() {
        return Err(format!("{} --version failed ({status})", program.display()));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program's version is the first line it prints; a failing or
    /// missing one is an error naming it.
    #[test]
    fn versions_come_from_the_programs_first_line() {
        let t = tempfile::tempdir().unwrap();
        let ok = t.path().join("ok");
        std::fs::write(&ok, "#!/bin/sh\necho 'tool 1.2.3'\necho more\n").unwrap();
        let bad = t.path().join("bad");
        std::fs::write(&bad, "#!/bin/sh\nexit 3\n").unwrap();
        for p in [&ok, &bad] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert_eq!(version_of(&ok).unwrap(), "tool 1.2.3");
        let e = version_of(&bad).unwrap_err();
        assert!(e.contains("bad --version failed"), "{e}");
        let r = program(
            "prog",
            "a test",
            true,
            Some(&t.path().join("missing")),
            false,
        );
        assert!(r.path.is_none() && r.version.is_none());
        assert!(r.error.unwrap().contains("not an executable file"));
    }
}
