//! Finding the helper programs (qemu, virtiofsd, husk-vsockd).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A helper program could not be found.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    /// An explicitly configured path is not an executable file.
    #[error("{name}: configured path {path} is not an executable file")]
    NotExecutable {
        /// The program.
        name: &'static str,
        /// The configured path.
        path: PathBuf,
    },
    /// Not found anywhere.
    #[error("cannot find {name} (looked in {searched}); install it or set its path in the config")]
    NotFound {
        /// The program.
        name: &'static str,
        /// The directories searched.
        searched: String,
    },
}

/// The directories searched, in order: `$PATH`, `/usr/local/bin`,
/// `$HOME/.cargo/bin`.
pub fn search_dirs(path_var: Option<&OsStr>, home: Option<&OsStr>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = path_var
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/local/bin"));
    if let Some(h) = home {
        dirs.push(Path::new(h).join(".cargo/bin"));
    }
    dirs
}

/// Finds `name`: `explicit` if given (it must be executable), else the first
/// executable of that name in [`search_dirs`].
pub fn locate(name: &'static str, explicit: Option<&Path>) -> Result<PathBuf, BinaryError> {
    if let Some(p) = explicit {
        return if is_executable(p) {
            Ok(p.to_owned())
        } else {
            Err(BinaryError::NotExecutable {
                name,
                path: p.to_owned(),
            })
        };
    }
    let dirs = search_dirs(
        std::env::var_os("PATH").as_deref(),
        std::env::var_os("HOME").as_deref(),
    );
    locate_in(name, &dirs)
}

/// Finds a device daemon the monitor runs (`husk-vsockd`, `virtiofsd`):
/// `explicit` if given, else the one next to the running program (the
/// monitor and its daemons are installed together: `/usr/local/bin` by
/// setup.sh, `/usr/lib/husk/bin` by the package), else as [`locate`] does.
pub fn locate_own(name: &'static str, explicit: Option<&Path>) -> Result<PathBuf, BinaryError> {
    if explicit.is_some() {
        return locate(name, explicit);
    }
    let own_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned));
    if let Some(p) = own_dir.map(|d| d.join(name)).filter(|p| is_executable(p)) {
        return Ok(p);
    }
    locate(name, None)
}

/// [`locate`] over explicit directories.
pub fn locate_in(name: &'static str, dirs: &[PathBuf]) -> Result<PathBuf, BinaryError> {
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| BinaryError::NotFound {
            name,
            searched: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_order_and_errors() {
        let d = search_dirs(Some(OsStr::new("/a:/b")), Some(OsStr::new("/home/x")));
        let want: Vec<PathBuf> = ["/a", "/b", "/usr/local/bin", "/home/x/.cargo/bin"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(d, want);

        let tmp = tempfile::tempdir().unwrap();
        let first = tmp.path().join("one");
        let second = tmp.path().join("two");
        std::fs::create_dir_all(&first).unwrap();
        std::fs::create_dir_all(&second).unwrap();
        let plain = first.join("prog");
        std::fs::write(&plain, "").unwrap(); // not executable: skipped
        let exe = second.join("prog");
        std::fs::write(&exe, "").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            locate_in("prog", &[first.clone(), second.clone()]).unwrap(),
            exe
        );
        let err = locate_in("nope", &[first]).unwrap_err().to_string();
        assert!(err.contains("cannot find nope"), "{err}");
        let err = locate("prog", Some(&plain)).unwrap_err().to_string();
        assert!(err.contains("not an executable"), "{err}");
        // An own helper: the explicit path wins, and must be executable.
        assert_eq!(locate_own("prog", Some(&exe)).unwrap(), exe);
        let err = locate_own("prog", Some(&plain)).unwrap_err().to_string();
        assert!(err.contains("not an executable"), "{err}");
    }
}
