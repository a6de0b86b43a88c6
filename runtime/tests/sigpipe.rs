//! `husk list | head -1`: a reader that goes away early ends husk quietly
//! by SIGPIPE, as it ends runc, instead of a "Broken pipe" error on stderr.
//! Needs no guest: the header alone meets the closed pipe.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

#[test]
fn a_closed_stdout_ends_husk_quietly() {
    let root = tempfile::tempdir().unwrap();
    for args in [&["list"][..], &["list", "--format", "json"][..]] {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        // The reader is gone before husk writes a byte.
        drop(read_end);
        let out = Command::new(env!("CARGO_BIN_EXE_husk"))
            .arg("--root")
            .arg(root.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{args:?}: husk wrote {stderr:?}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?}",
            out.status
        );
    }
}
