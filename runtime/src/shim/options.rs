//! Runtime options: containerd passes a custom runtime's options as
//! `runtimeoptions.v1.Options { type_url = 1, config_path = 2 }` (CRI's
//! `[...runtimes.husk.options] ConfigPath = "..."`, or `ctr run
//! --runtime-config-path`). The shim reads that file, a TOML file with the
//! keys of husk's configuration file ([`crate::settings`]), whose values
//! override the shim's environment (and so `/etc/husk/husk.toml`) for the
//! VMs it boots.

use std::path::Path;

use crate::settings::FileSettings;

use containerd_shim::protos::protobuf::rt::WireType;
use containerd_shim::protos::protobuf::CodedInputStream;

use super::ShimError;

/// The settings from a runtime options file, keyed by the environment
/// variable they override.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeOptions(FileSettings);

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
        FileSettings::load(path)
            .map(RuntimeOptions)
            .map_err(|e| ShimError::Invalid(crate::error_chain(&e)))
    }

    #[cfg(test)]
    fn parse(text: &str) -> Result<Self, String> {
        FileSettings::parse(text).map(RuntimeOptions)
    }

    /// The value for environment variable `key`: the options file first,
    /// then the shim's environment.
    pub fn env(&self, key: &str) -> Option<String> {
        self.0
            .get(key)
            .map(str::to_owned)
            .or_else(|| std::env::var(key).ok())
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
        assert_eq!(
            RuntimeOptions::from_any(&[]).unwrap(),
            RuntimeOptions::default()
        );
    }

    #[test]
    fn parses_keys_and_rejects_unknown_ones() {
        let o = RuntimeOptions::parse("# c\nengine = \"qemu\"\nkernel=\"/k\"\n").unwrap();
        assert_eq!(o.env("HUSK_ENGINE").as_deref(), Some("qemu"));
        assert_eq!(o.env("HUSK_KERNEL").as_deref(), Some("/k"));
        assert!(RuntimeOptions::parse("engin = \"qemu\"")
            .unwrap_err()
            .contains("unknown key"));
        assert!(RuntimeOptions::parse("engine").is_err());
        // The same TOML as /etc/husk/husk.toml: strings are quoted.
        assert!(RuntimeOptions::parse("kernel = /k").is_err());
    }
}
