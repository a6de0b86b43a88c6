//! Runs only the KVM VMM (no monitor, no device daemons, no agent): boots
//! `KERNEL` with COM1 into `CONSOLE` until the guest stops or SIGTERM/SIGINT.
//! For `tests/bench-kvm-boot.sh` and for poking at the boot path by hand.
//!
//! `builtin_boot KERNEL CONSOLE [MEMORY_MIB] [EXTRA_CMDLINE]`

use std::os::fd::AsFd;

use husk_kvm::{BuildOptions, Devices, ThreadHook, Vmm};
use husk_vmm_contract::VmConfig;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;

fn main() -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        anyhow::bail!("usage: builtin_boot KERNEL CONSOLE [MEMORY_MIB] [EXTRA_CMDLINE]");
    }
    // Blocked before the vCPU threads exist, so they inherit the mask.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()?;
    let sfd = SignalFd::new(&mask)?;

    let mut cfg = VmConfig::new(&args[1], std::env::temp_dir());
    cfg.console_path = Some(args[2].clone().into());
    if let Some(m) = args.get(3) {
        cfg.memory_mib = m.parse()?;
    }
    cfg.vcpus = 1;
    // husk-vmm's base line (`husk_vmm::engine::kernel_cmdline` for a
    // default config), then the extra arguments.
    let mut cmdline = String::from("console=ttyS0 panic=-1 quiet no_timer_check");
    if let Some(extra) = args.get(4) {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    let opts = BuildOptions {
        devices: Devices::ConsoleOnly,
        cmdline,
        hardware_virtualization: husk_kvm::cpu::probe_hardware_virtualization(),
        confine: ThreadHook::none(),
    };
    let mut engine = Vmm::start(&cfg, &opts, std::fs::File::create(cfg.console_log_path())?)?;
    eprintln!(
        "builtin_boot: VM built, kernel loaded, vCPUs started in {} us",
        t0.elapsed().as_micros()
    );
    loop {
        let mut fds = [
            nix::poll::PollFd::new(engine.exit_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(sfd.as_fd(), nix::poll::PollFlags::POLLIN),
        ];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE)?;
        if let Some(r) = engine.try_wait() {
            engine.stop();
            match r {
                Ok(()) => return Ok(()),
                Err(e) => anyhow::bail!("engine failed: {e}"),
            }
        }
        if sfd.read_signal()?.is_some() {
            engine.stop();
            return Ok(());
        }
    }
}
