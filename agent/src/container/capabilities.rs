//! The five capability sets of `process.capabilities`, with runc's rules:
//!
//! - No `capabilities` object at all: the capabilities are left as they
//!   are (runc's `capabilities.New(nil)` applies nothing), so the process
//!   keeps the agent's. An exec whose process has none gets the
//!   container's `process.capabilities` instead ([`for_exec`]), as runc's
//!   `newInitConfig` does: `runc exec --process` with a process.json
//!   without capabilities runs with the container's.
//! - An object with a set left out: that set is empty, the bounding set
//!   included (runc turns a missing list into an empty one).
//! - The kernel refuses (EPERM) a capset(2) whose inheritable set has a
//!   capability outside the bounding set, or whose effective set has one
//!   outside the permitted set; runc fails its create or exec then. husk
//!   refuses the same specs, but up front ([`check`]): before the
//!   container is built, with the field and the capabilities named.

use std::collections::HashSet;
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{LinuxCapabilities, Process, Spec};

use super::SetupError;

fn to_caps(
    set: &Option<oci_spec::runtime::Capabilities>,
    field: &str,
) -> Result<CapsHashSet, SetupError> {
    let mut out = HashSet::new();
    for c in set.clone().unwrap_or_default() {
        let name = c.to_string();
        let name = if name.starts_with("CAP_") {
            name
        } else {
            format!("CAP_{name}")
        };
        let cap = Capability::from_str(&name).map_err(|_| {
            SetupError::Invalid(format!(
                "process.capabilities.{field}: unknown capability {name}"
            ))
        })?;
        out.insert(cap);
    }
    Ok(out)
}

/// The sets of a `capabilities` object (a missing set is empty).
struct Sets {
    bounding: CapsHashSet,
    effective: CapsHashSet,
    permitted: CapsHashSet,
    inheritable: CapsHashSet,
    ambient: CapsHashSet,
}

impl Sets {
    fn of(c: &LinuxCapabilities) -> Result<Sets, SetupError> {
        Ok(Sets {
            bounding: to_caps(c.bounding(), "bounding")?,
            effective: to_caps(c.effective(), "effective")?,
            permitted: to_caps(c.permitted(), "permitted")?,
            inheritable: to_caps(c.inheritable(), "inheritable")?,
            ambient: to_caps(c.ambient(), "ambient")?,
        })
    }
}

/// `a` minus `b`, by capability number, as `CAP_X, CAP_Y`.
fn missing(a: &CapsHashSet, b: &CapsHashSet) -> Option<String> {
    let mut left: Vec<Capability> = a.difference(b).copied().collect();
    if left.is_empty() {
        return None;
    }
    left.sort_by_key(|c| c.index());
    Some(
        left.iter()
            .map(Capability::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// Refuses the capability sets the kernel would refuse when they are
/// applied (runc fails with EPERM then; see the module comment). The
/// container's processes start with an empty inheritable set (the agent's,
/// as PID 1 of the guest, is empty), so an inheritable capability is only
/// allowed inside the bounding set; an effective one must be permitted.
pub fn check(c: &Option<LinuxCapabilities>) -> Result<(), SetupError> {
    let Some(c) = c else { return Ok(()) };
    let s = Sets::of(c)?;
    if let Some(out) = missing(&s.inheritable, &s.bounding) {
        let unset = if c.bounding().is_none() {
            " (it is unset, so empty)"
        } else {
            ""
        };
        return Err(SetupError::Invalid(format!(
            "process.capabilities.inheritable has {out}, which process.capabilities.bounding{unset} \
             lacks: the kernel refuses an inheritable capability outside the bounding set \
             (EPERM, as runc fails)"
        )));
    }
    if let Some(out) = missing(&s.effective, &s.permitted) {
        return Err(SetupError::Invalid(format!(
            "process.capabilities.effective has {out}, which process.capabilities.permitted \
             lacks: the kernel refuses an effective capability that is not permitted (EPERM, \
             as runc fails)"
        )));
    }
    Ok(())
}

/// The process an exec runs: its own capabilities, or, when it has none,
/// the container's (runc's rule for `exec --process`).
pub fn for_exec(process: &Process, spec: &Spec) -> Process {
    let mut p = process.clone();
    if p.capabilities().is_none() {
        p.set_capabilities(
            spec.process()
                .as_ref()
                .and_then(|sp| sp.capabilities().clone()),
        );
    }
    p
}

fn caps_err(what: &str) -> impl FnOnce(caps::errors::CapsError) -> SetupError + '_ {
    move |e| SetupError::Sys {
        what: what.to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Drops every capability not in the bounding set (none when there is no
/// `capabilities` object). Needs CAP_SETPCAP, so it runs before switching
/// user.
pub fn drop_bounding(c: &Option<LinuxCapabilities>) -> Result<(), SetupError> {
    let Some(c) = c else { return Ok(()) };
    let bounding = to_caps(c.bounding(), "bounding")?;
    for cap in caps::all() {
        if !bounding.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(caps_err("drop bounding capability"))?;
        }
    }
    Ok(())
}

/// Sets the effective, permitted, inheritable and ambient sets (after the
/// user switch, with keepcaps on); leaves them as they are when there is
/// no `capabilities` object.
pub fn apply(c: &Option<LinuxCapabilities>) -> Result<(), SetupError> {
    let Some(c) = c else { return Ok(()) };
    let s = Sets::of(c)?;
    // Shrink in an order where each step keeps E within P and I within P.
    caps::set(None, CapSet::Effective, &s.effective)
        .map_err(caps_err("set effective capabilities"))?;
    caps::set(None, CapSet::Inheritable, &s.inheritable)
        .map_err(caps_err("set inheritable capabilities"))?;
    caps::set(None, CapSet::Permitted, &s.permitted)
        .map_err(caps_err("set permitted capabilities"))?;
    // Like runc: an ambient capability that is not permitted and
    // inheritable cannot be raised, and is skipped.
    let _ = caps::clear(None, CapSet::Ambient);
    for cap in s.ambient {
        let _ = caps::raise(None, CapSet::Ambient, cap);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(json: serde_json::Value) -> Option<LinuxCapabilities> {
        Some(serde_json::from_value(json).unwrap())
    }

    #[test]
    fn inheritable_outside_the_bounding_set_is_refused_like_runc() {
        // Bounding unset is an empty bounding set.
        let e = check(&caps(serde_json::json!({
            "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL"],
            "inheritable": ["CAP_KILL", "CAP_CHOWN"],
        })))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "process.capabilities.inheritable has CAP_CHOWN, CAP_KILL, which \
                 process.capabilities.bounding (it is unset, so empty) lacks"
            ),
            "{e}"
        );
        let e = check(&caps(serde_json::json!({
            "bounding": ["CAP_KILL"],
            "inheritable": ["CAP_KILL", "CAP_NET_RAW"],
        })))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "process.capabilities.inheritable has CAP_NET_RAW, which \
                 process.capabilities.bounding lacks"
            ),
            "{e}"
        );
    }

    #[test]
    fn effective_outside_the_permitted_set_is_refused() {
        let e = check(&caps(serde_json::json!({
            "bounding": ["CAP_KILL", "CAP_CHOWN"],
            "effective": ["CAP_KILL", "CAP_CHOWN"],
            "permitted": ["CAP_KILL"],
        })))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "process.capabilities.effective has CAP_CHOWN, which \
                 process.capabilities.permitted lacks"
            ),
            "{e}"
        );
    }

    #[test]
    fn what_the_kernel_accepts_passes() {
        for ok in [
            None,
            caps(serde_json::json!({})),
            // Without inheritable capabilities an unset bounding set is
            // fine: runc starts such a container too.
            caps(serde_json::json!({"effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]})),
            // Permitted beyond the bounding set is allowed (it is lost at
            // exec), and ambient is best effort.
            caps(serde_json::json!({
                "bounding": ["CAP_KILL"],
                "effective": ["CAP_KILL"],
                "permitted": ["CAP_KILL", "CAP_CHOWN"],
                "inheritable": ["CAP_KILL"],
                "ambient": ["CAP_NET_RAW"],
            })),
        ] {
            check(&ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn an_exec_without_capabilities_gets_the_containers() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                        "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]}},
        }))
        .unwrap();
        let bare: Process = serde_json::from_value(serde_json::json!({
            "args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0},
        }))
        .unwrap();
        assert_eq!(
            for_exec(&bare, &spec).capabilities(),
            spec.process().as_ref().unwrap().capabilities()
        );
        // Its own, even an empty object, win.
        let own: Process = serde_json::from_value(serde_json::json!({
            "args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "capabilities": {},
        }))
        .unwrap();
        assert!(own.capabilities().is_some());
        assert_eq!(for_exec(&own, &spec).capabilities(), own.capabilities());
    }
}
