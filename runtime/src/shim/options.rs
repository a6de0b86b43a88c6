//! Runtime options: containerd passes a custom runtime's options as
//! `runtimeoptions.v1.Options { type_url = 1, config_path = 2 }` (CRI's
//! `[...runtimes.husk.options] ConfigPath = "..."`, or `ctr run
//! --runtime-config-path`). The shim reads that file: `key = "value"` lines
//! (TOML-style strings, `#` comments) with the keys below, which override the
//! shim's environment for the VMs it boots.
//!
//! | key | environment it overrides | meaning |
//! | --- | --- | --- |
//! | `engine` | `HUSK_ENGINE` | `auto`, `builtin` or `qemu` |
//! | `kernel` | `HUSK_KERNEL` | guest kernel |
//! | `initramfs` | `HUSK_INITRAMFS` | guest initramfs |
//! | `vmm` | `HUSK_VMM` | the `husk-vmm` binary |
//! | `enable_annotations` | `HUSK_ENABLE_ANNOTATIONS` | `husk.*` annotations pods may use (see [`crate::policy`]) |
//! | `max_memory_mib` | `HUSK_MAX_MEMORY_MIB` | the largest guest RAM |
//! | `max_vcpus` | `HUSK_MAX_VCPUS` | the most vCPUs |
//! | `cgroup_parent` | `HUSK_CGROUP_PARENT` | the host cgroup a pod's VM goes under when its sandbox has no `linux.cgroupsPath` (see [`crate::host_cgroup`]) |

use std::collections::HashMap;
use std::path::Path;

use containerd_shim::protos::protobuf::rt::WireType;
use containerd_shim::protos::protobuf::CodedInputStream;

use super::ShimError;

const KEYS: [(&str, &str); 8] = [
    ("engine", "HUSK_ENGINE"),
    ("kernel", "HUSK_KERNEL"),
    ("initramfs", "HUSK_INITRAMFS"),
    ("vmm", "HUSK_VMM"),
    ("enable_annotations", "HUSK_ENABLE_ANNOTATIONS"),
    ("max_memory_mib", "HUSK_MAX_MEMORY_MIB"),
    ("max_vcpus", "HUSK_MAX_VCPUS"),
    ("cgroup_parent", "HUSK_CGROUP_PARENT"),
];

/// The settings from a runtime options file, keyed by the environment
/// variable they override.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeOptions(HashMap<&'static str, String>);

impl RuntimeOptions {
    /// Reads the options of a Create request (`value` of its `options` Any);
    /// empty options give the defaults.
    pub fn from_any(value: &[u8]) -> Result<Self, ShimError> {
        match config_path(value)? {
            Some(p) if !p.is_empty() => Self::load(Path::new(&p)),
            _ => Ok(Self::default()),
        }
    }

    /// Reads an options file.
    pub fn load(path: &Path) -> Result<Self, ShimError> {
        let text = std::fs::read_to_string(path)
            .map_err(ShimError::io(format!("runtime options {}", path.display())))?;
        Self::parse(&text).map_err(|e| ShimError::Invalid(format!("{}: {e}", path.display())))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut out = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: not key = \"value\"", n + 1))?;
            let (k, v) = (k.trim(), v.trim());
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            let env = KEYS
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, env)| *env)
                .ok_or_else(|| {
                    let known: Vec<&str> = KEYS.iter().map(|(key, _)| *key).collect();
                    format!("line {}: unknown key {k:?} ({})", n + 1, known.join(", "))
                })?;
            out.insert(env, v.to_owned());
        }
        Ok(RuntimeOptions(out))
    }

    /// The value for environment variable `key`: the options file first,
    /// then the shim's environment.
    pub fn env(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned().or_else(|| std::env::var(key).ok())
    }
}

/// Field 2 (`config_path`) of a `runtimeoptions.v1.Options` message.
fn config_path(value: &[u8]) -> Result<Option<String>, ShimError> {
    let bad = |e: containerd_shim::protos::protobuf::Error| {
        ShimError::Invalid(format!("cannot decode the runtime options: {e}"))
    };
    let mut is = CodedInputStream::from_bytes(value);
    let mut path = None;
    while let Some(tag) = is.read_raw_tag_or_eof().map_err(bad)? {
        let wire = WireType::new(tag & 7)
            .ok_or_else(|| ShimError::Invalid("bad wire type in the runtime options".into()))?;
        if tag >> 3 == 2 && wire == WireType::LengthDelimited {
            path = Some(is.read_string().map_err(bad)?);
        } else {
            is.skip_field(wire).map_err(bad)?;
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_config_path() {
        // type_url = "x" (field 1), config_path = "/etc/h.toml" (field 2)
        let mut v = vec![0x0a, 1, b'x', 0x12, 11];
        v.extend_from_slice(b"/etc/h.toml");
        assert_eq!(config_path(&v).unwrap().as_deref(), Some("/etc/h.toml"));
        assert_eq!(config_path(&[]).unwrap(), None);
        assert!(RuntimeOptions::from_any(&[]).unwrap().0.is_empty());
    }

    #[test]
    fn parses_keys_and_rejects_unknown_ones() {
        let o = RuntimeOptions::parse("# c\nengine = \"qemu\"\nkernel=/k\n").unwrap();
        assert_eq!(o.env("HUSK_ENGINE").as_deref(), Some("qemu"));
        assert_eq!(o.env("HUSK_KERNEL").as_deref(), Some("/k"));
        assert!(RuntimeOptions::parse("engin = \"qemu\"")
            .unwrap_err()
            .contains("unknown key"));
        assert!(RuntimeOptions::parse("engine").is_err());
    }
}
