//! The operator's configuration file, `/etc/husk/husk.toml` (or the file
//! `HUSK_CONFIG` names), read by `husk` and the shim alike. Its keys are the
//! settings the environment variables below carry; the shim's per-runtime
//! options file (containerd's `ConfigPath`) has the same format and keys.
//!
//! Precedence, highest first: a command-line flag (where one exists), the
//! shim's options file (for the shim's VMs), the environment, this file,
//! then the built-in default. The file fills in only the variables the
//! environment leaves unset ([`FileSettings::fill_env`], at start, before
//! any thread), so every reader, the monitor process included, sees one
//! value.
//!
//! | key | environment | meaning |
//! | --- | --- | --- |
//! | `engine` | `HUSK_ENGINE` | `auto`, `builtin` or `qemu` |
//! | `kernel` | `HUSK_KERNEL` | guest kernel (vmlinux) |
//! | `initramfs` | `HUSK_INITRAMFS` | guest initramfs |
//! | `vmm` | `HUSK_VMM` | the `husk-vmm` binary |
//! | `enable_annotations` | `HUSK_ENABLE_ANNOTATIONS` | `husk.*` annotations pods may use (a list, or one comma-separated string; see [`crate::policy`]) |
//! | `max_memory_mib` | `HUSK_MAX_MEMORY_MIB` | the largest guest RAM |
//! | `max_vcpus` | `HUSK_MAX_VCPUS` | the most vCPUs |
//! | `cgroup_parent` | `HUSK_CGROUP_PARENT` | the host cgroup VMs go under without a `linux.cgroupsPath` |
//! | `virtiofsd_sandbox` | `HUSK_VIRTIOFSD_SANDBOX` | virtiofsd's sandbox: `namespace` (default), `chroot` or `none` |
//! | `virtiofs_cache` | `HUSK_VIRTIOFS_CACHE` | the shares' cache policy: `never` (default: nothing cached in the guest, data is direct I/O), `auto`, `metadata` or `always` |
//! | `virtiofs_writeback` | `HUSK_VIRTIOFS_WRITEBACK` | the guest's writeback cache on writable shares (default `false`: host processes see writes late, a killed VM loses them) |
//! | `virtiofsd_threads` | `HUSK_VIRTIOFSD_THREADS` | virtiofsd's worker threads per share (default: virtiofsd's, none) |
//!
//! An unknown key, or a value that is not a string, integer, boolean or
//! list of strings, is an error naming the key and the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "HUSK_CONFIG";

/// The configuration file read when [`CONFIG_ENV`] is unset; a missing one
/// is no error.
pub const DEFAULT_CONFIG: &str = "/etc/husk/husk.toml";

/// Every key: (file key, environment variable, the built-in default).
pub const KEYS: [(&str, &str, &str); 12] = [
    ("engine", "HUSK_ENGINE", "auto"),
    ("kernel", "HUSK_KERNEL", crate::sizing::DEFAULT_KERNEL),
    (
        "initramfs",
        "HUSK_INITRAMFS",
        crate::sizing::DEFAULT_INITRAMFS,
    ),
    ("vmm", "HUSK_VMM", "husk-vmm next to husk, else in $PATH"),
    (
        "enable_annotations",
        "HUSK_ENABLE_ANNOTATIONS",
        "the default-enabled husk.* annotations",
    ),
    ("max_memory_mib", "HUSK_MAX_MEMORY_MIB", "the host's RAM"),
    ("max_vcpus", "HUSK_MAX_VCPUS", "the host's CPUs"),
    (
        "cgroup_parent",
        "HUSK_CGROUP_PARENT",
        crate::host_cgroup::DEFAULT_PARENT,
    ),
    ("virtiofsd_sandbox", "HUSK_VIRTIOFSD_SANDBOX", "namespace"),
    ("virtiofs_cache", "HUSK_VIRTIOFS_CACHE", "never"),
    ("virtiofs_writeback", "HUSK_VIRTIOFS_WRITEBACK", "false"),
    (
        "virtiofsd_threads",
        "HUSK_VIRTIOFSD_THREADS",
        "virtiofsd's default (no pool)",
    ),
];

/// A configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// It could not be read.
    #[error("configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Its content is wrong.
    #[error("configuration file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// The settings of one file, keyed by the environment variable each sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSettings {
    /// Where they were read from (`None`: no file).
    pub path: Option<PathBuf>,
    values: BTreeMap<&'static str, String>,
}

impl FileSettings {
    /// The operator's file: [`CONFIG_ENV`]'s (which must exist), else
    /// [`DEFAULT_CONFIG`] if it exists, else nothing.
    pub fn load_default() -> Result<Self, SettingsError> {
        match std::env::var_os(CONFIG_ENV) {
            Some(p) => Self::load(Path::new(&p)),
            None if Path::new(DEFAULT_CONFIG).exists() => Self::load(Path::new(DEFAULT_CONFIG)),
            None => Ok(Self::default()),
        }
    }

    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut s = Self::parse(&text).map_err(|message| SettingsError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        s.path = Some(path.to_owned());
        Ok(s)
    }

    /// Parses the TOML text of a configuration file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| e.to_string().trim_end().replace('\n', " "))?;
        let mut values = BTreeMap::new();
        for (key, value) in table {
            let env = env_of(&key).ok_or_else(|| {
                let known: Vec<&str> = KEYS.iter().map(|(k, _, _)| *k).collect();
                format!("unknown key {key:?} (known: {})", known.join(", "))
            })?;
            let v = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(items) => items
                    .into_iter()
                    .map(|i| match i {
                        toml::Value::String(s) => Ok(s),
                        other => Err(format!(
                            "{key}: a list holds strings only, not {}",
                            other.type_str()
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join(","),
                other => {
                    return Err(format!(
                        "{key}: expected a string, integer, boolean or list of strings, not {}",
                        other.type_str()
                    ))
                }
            };
            values.insert(env, v);
        }
        Ok(FileSettings { path: None, values })
    }

    /// The value this file gives environment variable `env`.
    pub fn get(&self, env: &str) -> Option<&str> {
        self.values.get(env).map(String::as_str)
    }

    /// Sets every variable this file has and the environment lacks. Call it
    /// at start, before any thread exists (the environment is process-wide).
    pub fn fill_env(&self) {
        for (env, v) in &self.values {
            if std::env::var_os(env).is_none() {
                std::env::set_var(env, v);
            }
        }
    }

    /// Each key with the value in effect and where it came from
    /// (`environment`, the file, or unset: the built-in default), given
    /// the environment `env` as it was before [`FileSettings::fill_env`].
    pub fn effective(&self, env: impl Fn(&str) -> Option<String>) -> Vec<Effective> {
        KEYS.iter()
            .map(|(key, var, default)| {
                let (value, source) = match (env(var), self.get(var)) {
                    (Some(v), _) => (Some(v), format!("environment {var}")),
                    (None, Some(v)) => (
                        Some(v.to_owned()),
                        self.path
                            .as_ref()
                            .map_or("file".into(), |p| p.display().to_string()),
                    ),
                    (None, None) => (Some((*default).to_owned()), "built-in default".into()),
                };
                Effective { key, value, source }
            })
            .collect()
    }
}

/// One setting as in effect.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Effective {
    /// The file key.
    pub key: &'static str,
    /// Its value (the built-in default's description where none is set).
    pub value: Option<String>,
    /// Where the value came from.
    pub source: String,
}

/// The environment variable a file key sets.
pub fn env_of(key: &str) -> Option<&'static str> {
    KEYS.iter().find(|(k, _, _)| *k == key).map(|(_, e, _)| *e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_their_variables_and_values_to_strings() {
        let s = FileSettings::parse(
            "# operator defaults\nengine = \"qemu\"\nmax_vcpus = 4\n\
             enable_annotations = [\"husk.memory_mib\", \"husk.vcpus\"]\n",
        )
        .unwrap();
        assert_eq!(s.get("HUSK_ENGINE"), Some("qemu"));
        assert_eq!(s.get("HUSK_MAX_VCPUS"), Some("4"));
        assert_eq!(
            s.get("HUSK_ENABLE_ANNOTATIONS"),
            Some("husk.memory_mib,husk.vcpus")
        );
        assert_eq!(s.get("HUSK_KERNEL"), None);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = FileSettings::parse("engin = \"qemu\"\n").unwrap_err();
        assert!(
            e.starts_with("unknown key \"engin\" (known: engine, kernel,"),
            "{e}"
        );
        let e = FileSettings::parse("max_vcpus = 1.5\n").unwrap_err();
        assert_eq!(
            e,
            "max_vcpus: expected a string, integer, boolean or list of strings, not float"
        );
        let e = FileSettings::parse("enable_annotations = [1]\n").unwrap_err();
        assert_eq!(
            e,
            "enable_annotations: a list holds strings only, not integer"
        );
        assert!(FileSettings::parse("engine = \n").is_err());
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("husk.toml");
        std::fs::write(&p, "bogus = 1\n").unwrap();
        let e = FileSettings::load(&p).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "configuration file {}: unknown key \"bogus\"",
                p.display()
            )),
            "{e}"
        );
        let e = FileSettings::load(&t.path().join("absent")).unwrap_err();
        assert!(matches!(e, SettingsError::Read { .. }), "{e:?}");
    }

    /// Environment over file over default, each said with its source.
    #[test]
    fn the_environment_wins_over_the_file() {
        let mut s = FileSettings::parse("engine = \"qemu\"\nkernel = \"/k\"\n").unwrap();
        s.path = Some("/etc/husk/husk.toml".into());
        let env = |k: &str| (k == "HUSK_ENGINE").then(|| "builtin".to_owned());
        let eff = s.effective(env);
        let of = |key: &str| eff.iter().find(|e| e.key == key).unwrap().clone();
        assert_eq!(of("engine").value.as_deref(), Some("builtin"));
        assert_eq!(of("engine").source, "environment HUSK_ENGINE");
        assert_eq!(of("kernel").value.as_deref(), Some("/k"));
        assert_eq!(of("kernel").source, "/etc/husk/husk.toml");
        assert_eq!(
            of("vmm").value.as_deref(),
            Some("husk-vmm next to husk, else in $PATH")
        );
        assert_eq!(of("vmm").source, "built-in default");
    }
}
