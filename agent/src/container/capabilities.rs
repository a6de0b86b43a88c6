//! The five capability sets of `process.capabilities`.

use std::collections::HashSet;
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::LinuxCapabilities;

use super::SetupError;

fn to_caps(set: &Option<oci_spec::runtime::Capabilities>) -> Result<CapsHashSet, SetupError> {
    let mut out = HashSet::new();
    for c in set.clone().unwrap_or_default() {
        let name = c.to_string();
        let name = if name.starts_with("CAP_") {
            name
        } else {
            format!("CAP_{name}")
        };
        let cap = Capability::from_str(&name)
            .map_err(|_| SetupError::Invalid(format!("unknown capability {name}")))?;
        out.insert(cap);
    }
    Ok(out)
}

fn caps_err(what: &str) -> impl FnOnce(caps::errors::CapsError) -> SetupError + '_ {
    move |e| SetupError::Sys {
        what: what.to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Drops every capability not in the bounding set. Needs CAP_SETPCAP, so it
/// runs before switching user.
pub fn drop_bounding(c: &Option<LinuxCapabilities>) -> Result<(), SetupError> {
    let bounding = match c {
        Some(c) => to_caps(c.bounding())?,
        None => HashSet::new(),
    };
    for cap in caps::all() {
        if !bounding.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(caps_err("drop bounding capability"))?;
        }
    }
    Ok(())
}

/// Sets the effective, permitted, inheritable and ambient sets (after the
/// user switch, with keepcaps on).
pub fn apply(c: &Option<LinuxCapabilities>) -> Result<(), SetupError> {
    let empty = LinuxCapabilities::default();
    let c = c.as_ref().unwrap_or(&empty);
    let eff = to_caps(c.effective())?;
    let perm = to_caps(c.permitted())?;
    let inh = to_caps(c.inheritable())?;
    // Shrink in an order where each step keeps E within P and I within P.
    caps::set(None, CapSet::Effective, &eff).map_err(caps_err("set effective capabilities"))?;
    caps::set(None, CapSet::Inheritable, &inh).map_err(caps_err("set inheritable capabilities"))?;
    caps::set(None, CapSet::Permitted, &perm).map_err(caps_err("set permitted capabilities"))?;
    // Like runc: an ambient capability that is not permitted and
    // inheritable cannot be raised, and is skipped.
    let _ = caps::clear(None, CapSet::Ambient);
    for cap in to_caps(c.ambient())? {
        let _ = caps::raise(None, CapSet::Ambient, cap);
    }
    Ok(())
}
