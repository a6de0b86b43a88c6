//! Man pages and shell completions, generated from the clap definitions
//! in [`crate::cli`] so they never drift from the CLI (`husk
//! generate-docs DIR`, which `scripts/package.sh` runs).

use std::fs;
use std::io;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Writes `DIR/man1/husk.1`, one `husk-COMMAND.1` per visible command, and
/// `DIR/completions/{husk.bash,_husk,husk.fish}`.
pub fn generate(dir: &Path) -> io::Result<()> {
    let man = dir.join("man1");
    fs::create_dir_all(&man)?;
    let mut cmd = Cli::command();
    cmd.build();
    write_man(&man, "husk", cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("husk-{}", sub.get_name());
        write_man(&man, &name, sub.clone().name(name.clone()))?;
    }
    let completions = dir.join("completions");
    fs::create_dir_all(&completions)?;
    for (shell, file) in [
        (Shell::Bash, "husk.bash"),
        (Shell::Zsh, "_husk"),
        (Shell::Fish, "husk.fish"),
    ] {
        let mut out = fs::File::create(completions.join(file))?;
        clap_complete::generate(shell, &mut Cli::command(), "husk", &mut out);
    }
    Ok(())
}

fn write_man(dir: &Path, name: &str, cmd: clap::Command) -> io::Result<()> {
    let mut out = fs::File::create(dir.join(format!("{name}.1")))?;
    clap_mangen::Man::new(cmd).render(&mut out)
}

#[cfg(test)]
mod tests {
    /// Every visible command gets a page, and the completions know the
    /// commands.
    #[test]
    fn pages_and_completions_cover_the_commands() {
        let t = tempfile::tempdir().unwrap();
        super::generate(t.path()).unwrap();
        let page = |n: &str| std::fs::read_to_string(t.path().join("man1").join(n)).unwrap();
        assert!(page("husk.1").contains("husk"));
        assert!(page("husk-create.1").contains("bundle"));
        assert!(page("husk-check.1").contains("json"));
        assert!(!t.path().join("man1/husk-generate-docs.1").exists());
        let bash = std::fs::read_to_string(t.path().join("completions/husk.bash")).unwrap();
        for c in ["create", "exec", "check", "update"] {
            assert!(bash.contains(c), "bash completion lacks {c}");
        }
        assert!(t.path().join("completions/_husk").is_file());
        assert!(t.path().join("completions/husk.fish").is_file());
    }
}
