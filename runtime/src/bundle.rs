//! An OCI bundle on the host and its translation for the guest.
//!
//! The guest sees one virtio-fs share, [`SHARE_TAG`], served from the state
//! directory's `share/` folder. husk bind-mounts the bundle rootfs at
//! `share/rootfs` and each host source of a bind mount at `share/mounts/N`,
//! then rewrites the spec so those paths point at the share's guest mount
//! point. One daemon serves the whole container this way, and the host side
//! keeps a list of every mount it made so delete can undo it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{Mount, Spec};

/// The virtio-fs tag of a container's share.
pub const SHARE_TAG: &str = "husk";

/// Why a bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle directory is missing.
    #[error("bundle {0} does not exist")]
    Missing(PathBuf),
    /// config.json is missing or unreadable or invalid.
    #[error("cannot load {path}: {reason}")]
    Config {
        /// The config path.
        path: PathBuf,
        /// What oci-spec said.
        reason: String,
    },
    /// The spec is well-formed but unusable.
    #[error("invalid spec in {path}: {reason}")]
    Invalid {
        /// The config path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A host mount for the share could not be made.
    #[error("cannot share {what} into the guest")]
    Share {
        /// What was being shared.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A bundle with its parsed config.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The absolute bundle directory.
    pub dir: PathBuf,
    /// The parsed config.json.
    pub spec: Spec,
    /// The absolute host rootfs.
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Loads and validates `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let dir = fs::canonicalize(dir).map_err(|_| BundleError::Missing(dir.to_owned()))?;
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(BundleError::Config {
                path,
                reason: "no such file".into(),
            });
        }
        let spec = Spec::load(&path).map_err(|e| BundleError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let invalid = |reason: String| BundleError::Invalid {
            path: path.clone(),
            reason,
        };
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| invalid("no root".into()))?;
        let rootfs = dir.join(root.path());
        if !rootfs.is_dir() {
            return Err(invalid(format!(
                "root.path {} is not a directory",
                rootfs.display()
            )));
        }
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| invalid("no process".into()))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(invalid("process.args is empty".into()));
        }
        if !process.cwd().is_absolute() {
            return Err(invalid(format!(
                "process.cwd {} is not absolute",
                process.cwd().display()
            )));
        }
        for m in spec.mounts().iter().flatten() {
            if !m.destination().is_absolute() {
                return Err(invalid(format!(
                    "mount destination {} is not absolute",
                    m.destination().display()
                )));
            }
        }
        let rootfs = fs::canonicalize(&rootfs).unwrap_or(rootfs);
        Ok(Bundle { dir, spec, rootfs })
    }
}

/// Whether an OCI mount is a bind mount of a host path.
pub fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// The host mounts made for a share, undone in reverse order.
#[derive(Debug, Default)]
pub struct ShareMounts {
    /// Mount points, in the order they were made.
    pub points: Vec<PathBuf>,
}

impl ShareMounts {
    fn bind(&mut self, src: &Path, dst: &Path, what: &str) -> Result<(), BundleError> {
        let err = |source| BundleError::Share {
            what: what.to_owned(),
            source,
        };
        if src.is_dir() {
            fs::create_dir_all(dst).map_err(err)?;
        } else {
            if let Some(p) = dst.parent() {
                fs::create_dir_all(p).map_err(err)?;
            }
            fs::File::create(dst).map_err(err)?;
        }
        mount(
            Some(src),
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| err(io::Error::from(e)))?;
        self.points.push(dst.to_owned());
        // Keep the share's mounts out of other mount namespaces' way.
        let _ = mount(
            None::<&str>,
            dst,
            None::<&str>,
            MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            None::<&str>,
        );
        Ok(())
    }
}

/// Unmounts `points` in reverse order; returns the first failure.
pub fn unmount_all(points: &[PathBuf]) -> io::Result<()> {
    let mut first = Ok(());
    for p in points.iter().rev() {
        match umount2(p, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) if first.is_ok() => first = Err(io::Error::from(e)),
            Err(_) => {}
        }
    }
    first
}

/// Fills `share_dir` with the rootfs and bind sources of `bundle`, and
/// returns the spec rewritten for the guest plus the mounts made. On error,
/// whatever was mounted is unmounted again.
pub fn prepare_share(
    bundle: &Bundle,
    share_dir: &Path,
) -> Result<(Spec, ShareMounts), BundleError> {
    let mut mounts = ShareMounts::default();
    match rewrite(bundle, share_dir, &mut mounts) {
        Ok(spec) => Ok((spec, mounts)),
        Err(e) => {
            let _ = unmount_all(&mounts.points);
            Err(e)
        }
    }
}

fn rewrite(
    bundle: &Bundle,
    share_dir: &Path,
    mounts: &mut ShareMounts,
) -> Result<Spec, BundleError> {
    let guest_share = PathBuf::from(husk_protocol::share_mount_point(SHARE_TAG));
    let mut spec = bundle.spec.clone();
    mounts.bind(&bundle.rootfs, &share_dir.join("rootfs"), "the rootfs")?;
    let mut root = spec.root().clone().expect("validated");
    root.set_path(guest_share.join("rootfs"));
    spec.set_root(Some(root));

    let mut new_mounts = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let mut m = m.clone();
        if is_bind(&m) {
            let src = m.source().clone().unwrap_or_default();
            let src = if src.is_absolute() {
                src
            } else {
                bundle.dir.join(src)
            };
            if !src.exists() {
                return Err(BundleError::Share {
                    what: format!("bind source {}", src.display()),
                    source: io::ErrorKind::NotFound.into(),
                });
            }
            let rel = format!("mounts/{i}");
            mounts.bind(
                &src,
                &share_dir.join(&rel),
                &format!("bind source {}", src.display()),
            )?;
            m.set_source(Some(guest_share.join(rel)));
        }
        new_mounts.push(m);
    }
    if spec.mounts().is_some() {
        spec.set_mounts(Some(new_mounts));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: serde_json::Value) -> (tempfile::TempDir, Result<Bundle, BundleError>) {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("rootfs")).unwrap();
        fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
        let b = Bundle::load(tmp.path());
        (tmp, b)
    }

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "mounts": [{"destination": "/data", "type": "bind", "source": "data", "options": ["rbind"]}]
        })
    }

    #[test]
    fn loads_a_minimal_bundle() {
        let (_t, b) = bundle_with(minimal());
        let b = b.unwrap();
        assert!(b.rootfs.is_absolute());
        assert!(is_bind(&b.spec.mounts().as_ref().unwrap()[0]));
    }

    #[test]
    fn rejects_what_cannot_run() {
        let mut c = minimal();
        c["process"]["args"] = serde_json::json!([]);
        assert!(bundle_with(c)
            .1
            .unwrap_err()
            .to_string()
            .contains("process.args is empty"));
        let mut c = minimal();
        c["root"]["path"] = "nope".into();
        assert!(bundle_with(c)
            .1
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
        let mut c = minimal();
        c["process"]["cwd"] = "rel".into();
        assert!(bundle_with(c)
            .1
            .unwrap_err()
            .to_string()
            .contains("not absolute"));
        let (_t, b) = bundle_with(serde_json::json!({"ociVersion": 3}));
        assert!(matches!(b, Err(BundleError::Config { .. })));
        assert!(matches!(
            Bundle::load(Path::new("/nonexistent/b")),
            Err(BundleError::Missing(_))
        ));
    }

    #[test]
    fn share_rewrites_paths_and_unmounts() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: bind mounts need root");
            return;
        }
        let (t, b) = bundle_with(minimal());
        fs::create_dir(t.path().join("data")).unwrap();
        fs::write(t.path().join("data/f"), b"x").unwrap();
        let share = t.path().join("share");
        let (spec, mounts) = prepare_share(&b.unwrap(), &share).unwrap();
        assert_eq!(
            spec.root().as_ref().unwrap().path(),
            Path::new("/run/husk/shares/husk/rootfs")
        );
        let m = &spec.mounts().as_ref().unwrap()[0];
        assert_eq!(
            m.source().as_deref(),
            Some(Path::new("/run/husk/shares/husk/mounts/0"))
        );
        assert_eq!(fs::read(share.join("mounts/0/f")).unwrap(), b"x");
        unmount_all(&mounts.points).unwrap();
        assert!(!share.join("mounts/0/f").exists());
    }

    #[test]
    fn missing_bind_source_fails_and_leaves_no_mount() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: bind mounts need root");
            return;
        }
        let (t, b) = bundle_with(minimal());
        let share = t.path().join("share");
        let err = prepare_share(&b.unwrap(), &share).unwrap_err();
        assert!(err.to_string().contains("bind source"), "{err}");
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!info.contains(share.to_str().unwrap()));
    }
}
