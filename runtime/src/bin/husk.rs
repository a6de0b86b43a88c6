//! `husk`: the runc-compatible OCI runtime CLI.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use husk_runtime::cli::{Cli, Command, CreateArgs, ExecArgs, Format, LogFormat};
use husk_runtime::ops::{self, ConfigReport, CreateOptions, ExecOptions, Runtime};
use husk_runtime::settings::FileSettings;
use husk_runtime::signal::parse_signal;
use oci_spec::runtime::Process;

fn main() -> ExitCode {
    restore_sigpipe();
    let cli = Cli::parse();
    husk_runtime::logging::init(
        cli.log.as_deref(),
        cli.log_format == LogFormat::Json,
        cli.debug,
    );
    // The operator's configuration file fills in what the environment
    // leaves unset; `husk check` reports a broken one instead of failing.
    let settings = FileSettings::load_default();
    let effective = settings.as_ref().map(|s| ConfigReport {
        path: s.path.clone(),
        effective: s.effective(|k| std::env::var(k).ok()),
    });
    let result = match (&settings, &cli.command) {
        (Err(e), command) if !matches!(command, Command::Check { .. }) => {
            Err(anyhow::anyhow!("{}", husk_runtime::error_chain(e)))
        }
        _ => {
            if let Ok(s) = &settings {
                s.fill_env();
            }
            let rt = Runtime::new(cli.root.clone());
            let config = effective.map_err(|e| husk_runtime::error_chain(e));
            dispatch(&rt, cli.command, cli.systemd_cgroup, config)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let msg = format!("{e:#}");
            // Without --log, tracing writes to stderr already.
            if cli.log.is_some() {
                tracing::error!("{msg}");
            }
            eprintln!("husk: {msg}");
            ExitCode::from(1)
        }
    }
}

/// Rust starts with SIGPIPE ignored, so a write to a closed pipe
/// (`husk list | head -1`) is an error that gets printed; like runc and
/// every C tool, die of the signal quietly instead.
fn restore_sigpipe() {
    // SAFETY: the first thing main does, before any thread exists; SIG_DFL
    // is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn create_opts(a: &CreateArgs, systemd_cgroup: bool) -> CreateOptions {
    CreateOptions {
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        preserve_fds: a.preserve_fds,
        systemd_cgroup,
    }
}

fn dispatch(
    rt: &Runtime,
    cmd: Command,
    systemd_cgroup: bool,
    config: Result<ConfigReport, String>,
) -> anyhow::Result<i32> {
    match cmd {
        Command::Create(a) => {
            ops::create(rt, &a.id, &create_opts(&a, systemd_cgroup))?;
        }
        Command::Start { id } => ops::start(rt, &id)?,
        Command::Run(a) => return run(rt, a, systemd_cgroup),
        Command::State { id } => print_json(&ops::state(rt, &id)?)?,
        Command::Kill { all, id, signal } => {
            let sig = parse_signal(&signal).map_err(anyhow::Error::msg)?;
            ops::kill(rt, &id, sig, all)?;
        }
        Command::Delete { force, id } => ops::delete(rt, &id, force)?,
        Command::Exec(a) => return exec(rt, a),
        Command::ExecAttach {
            id,
            exec_id,
            tty,
            console_socket,
        } => {
            return Ok(ops::exec_attach(
                rt,
                &id,
                &exec_id,
                tty,
                console_socket.as_deref(),
            )?)
        }
        Command::Ps { format, id, .. } => {
            let procs = ops::ps(rt, &id)?;
            match format {
                Format::Json => {
                    print_json(&procs.iter().map(|p| p.pid).collect::<Vec<_>>())?;
                }
                Format::Table => print!("{}", ops::ps_table(&procs)),
            }
        }
        Command::Events {
            stats,
            interval,
            id,
        } => {
            let opts = ops::EventsOptions {
                interval,
                stats_only: stats,
            };
            ops::events(rt, &id, &opts, &mut std::io::stdout().lock())?;
        }
        Command::List { format, quiet } => {
            let all = ops::list(rt)?;
            if quiet {
                all.iter().for_each(|s| println!("{}", s.id));
            } else if format == Format::Json {
                print_json(&all)?;
            } else {
                println!("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER");
                for s in all {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        s.id,
                        s.pid,
                        s.status,
                        s.bundle.display(),
                        s.created,
                        s.owner
                    );
                }
            }
        }
        Command::Spec { bundle } => {
            let path = bundle.join("config.json");
            if path.exists() {
                bail!("{} already exists", path.display());
            }
            std::fs::write(&path, ops::default_spec())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Command::Features => print_json(&ops::features()?)?,
        Command::GenerateDocs { out } => {
            husk_runtime::docs::generate(&out)?;
        }
        Command::Check { json } => {
            let report = ops::check(rt, &ops::Artifacts::from_env(), config);
            if json {
                print_json(&report)?;
            } else {
                print!("{}", report.to_text());
            }
            return Ok(if report.can_run { 0 } else { 1 });
        }
        Command::Pause { id } => ops::pause(rt, &id)?,
        Command::Resume { id } => ops::resume(rt, &id)?,
        Command::Update(a) => {
            let patch = ops::patch_from_flags(&a, std::io::stdin().lock())?;
            ops::update(rt, &a.id, &patch)?;
        }
    }
    Ok(0)
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// `run`: create + start; in the foreground, wait for the container (its
/// monitor) with signals forwarded, then delete it unless `--keep`.
fn run(rt: &Runtime, a: husk_runtime::cli::RunArgs, systemd_cgroup: bool) -> anyhow::Result<i32> {
    let id = a.create.id.clone();
    let forward = if a.detach {
        None
    } else {
        Some(husk_runtime::signal::block_forwarded()?)
    };
    let st = ops::create(rt, &id, &create_opts(&a.create, systemd_cgroup))?;
    if let Err(e) = ops::start(rt, &id) {
        let _ = ops::delete(rt, &id, true);
        return Err(e.into());
    }
    let Some(set) = forward else { return Ok(0) };
    husk_runtime::signal::forward_to(set, st.pid);
    let code = ops::wait_monitor(st.pid);
    if !a.keep {
        ops::delete(rt, &id, true)?;
    }
    Ok(code)
}

fn exec(rt: &Runtime, a: ExecArgs) -> anyhow::Result<i32> {
    let cgroup = ops::sub_cgroup(&a.cgroup)?;
    let process = match &a.process {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            husk_runtime::bundle::parse_json::<Process>(text.as_bytes())
                .map_err(|e| anyhow::anyhow!("parsing {}: {e}", p.display()))?
        }
        None => {
            if a.args.is_empty() {
                bail!("exec: no command given (args or --process)");
            }
            let st = rt.root.load(&a.id)?;
            let path = st.bundle.join("config.json");
            let json =
                std::fs::read(&path).with_context(|| format!("reading the config of {}", a.id))?;
            let spec = husk_runtime::bundle::parse_spec(&json)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            ops::process_from_flags(spec.process().clone().unwrap_or_default(), &a)?
        }
    };
    let opts = ExecOptions {
        process,
        detach: a.detach,
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        ignore_paused: a.ignore_paused,
        cgroup,
        preserve_fds: a.preserve_fds,
    };
    Ok(ops::exec(rt, &a.id, &opts)?)
}
