//! The monitor's ready report: one JSON line it writes on the fd its
//! launcher gave it ([`crate::READY_FD`]), then closes. The launcher waits
//! for it to learn that the VM is up (plain mode: the agent listens;
//! container mode: the container is created, with its init's guest pid),
//! or why it is not.
//!
//! On the wire (keys in this order, nothing else):
//! - `{"ok":true}`: the agent listens (plain mode);
//! - `{"ok":true,"pid":N}`: the container is created, its init is guest pid N;
//! - either with `"boot":[{"stage":"...","ms":T},...]`: the boot's stages,
//!   each with the milliseconds since the monitor started (`husk --debug`
//!   logs them);
//! - `{"error":"...","ok":false}`: the monitor failed, and why.
//!
//! A reader ignores fields it does not know, so a newer monitor can add one.

use serde::{Deserialize, Serialize};

/// What a monitor reports on its ready fd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Wire", try_from = "Wire")]
pub enum ReadyReport {
    /// The VM is up: the agent listens, and in container mode the
    /// container is created.
    Ready {
        /// The container's init in the guest (container mode only). The
        /// guest chose it: a reader checks it
        /// (`husk_protocol::check_guest_pid`) before it uses it.
        pid: Option<i64>,
        /// The boot's stages, in order.
        boot: Vec<BootStage>,
    },
    /// The monitor failed and is stopping (or gone).
    Failed {
        /// Why, as the monitor's error chain.
        error: String,
    },
}

impl ReadyReport {
    /// The report as written: one JSON line with its newline.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a ready report serializes");
        line.push('\n');
        line
    }

    /// Parses a line a monitor wrote (surrounding whitespace allowed).
    pub fn parse(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line.trim())
    }
}

/// One step of a monitor's boot and when it was done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootStage {
    /// What was done ("device daemons ready", "agent answered", ...).
    pub stage: String,
    /// Milliseconds since the monitor started.
    pub ms: f64,
}

impl Eq for BootStage {}

/// The JSON shape: its fields are in the order the keys are written.
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    boot: Vec<BootStage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<i64>,
}

impl From<ReadyReport> for Wire {
    fn from(r: ReadyReport) -> Wire {
        match r {
            ReadyReport::Ready { pid, boot } => Wire {
                boot,
                error: None,
                ok: true,
                pid,
            },
            ReadyReport::Failed { error } => Wire {
                boot: Vec::new(),
                error: Some(error),
                ok: false,
                pid: None,
            },
        }
    }
}

impl TryFrom<Wire> for ReadyReport {
    type Error = String;
    fn try_from(w: Wire) -> Result<ReadyReport, String> {
        match (w.ok, w.error) {
            (true, _) => Ok(ReadyReport::Ready {
                pid: w.pid,
                boot: w.boot,
            }),
            (false, Some(error)) => Ok(ReadyReport::Failed { error }),
            (false, None) => Err("\"ok\": false without an \"error\"".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ReadyReport;

    #[test]
    fn the_wire_form_is_the_monitors_json_line() {
        let cases = [
            (
                ReadyReport::Ready {
                    pid: None,
                    boot: vec![],
                },
                r#"{"ok":true}"#,
            ),
            (
                ReadyReport::Ready {
                    pid: Some(7),
                    boot: vec![],
                },
                r#"{"ok":true,"pid":7}"#,
            ),
            (
                ReadyReport::Failed {
                    error: "no \"agent\"\nhere".into(),
                },
                r#"{"error":"no \"agent\"\nhere","ok":false}"#,
            ),
        ];
        for (report, wire) in cases {
            assert_eq!(report.to_line(), format!("{wire}\n"));
            assert_eq!(ReadyReport::parse(wire).unwrap(), report);
        }
        // The same bytes as the untyped `json!` values the monitor wrote
        // before the type existed.
        let before = [
            serde_json::json!({"ok": true}),
            serde_json::json!({"ok": true, "pid": 7}),
            serde_json::json!({"ok": false, "error": "why"}),
        ];
        let typed = [
            ReadyReport::Ready {
                pid: None,
                boot: vec![],
            },
            ReadyReport::Ready {
                pid: Some(7),
                boot: vec![],
            },
            ReadyReport::Failed {
                error: "why".into(),
            },
        ];
        for (v, r) in before.iter().zip(typed) {
            assert_eq!(r.to_line(), format!("{v}\n"));
        }
    }

    /// The boot's stages travel in order with their times.
    #[test]
    fn boot_stages_round_trip() {
        let r = ReadyReport::Ready {
            pid: Some(9),
            boot: vec![
                super::BootStage {
                    stage: "device daemons ready".into(),
                    ms: 12.5,
                },
                super::BootStage {
                    stage: "container created".into(),
                    ms: 900.0,
                },
            ],
        };
        let line = r.to_line();
        assert!(
            line.starts_with(r#"{"boot":[{"stage":"device daemons ready","ms":12.5},"#),
            "{line}"
        );
        assert_eq!(ReadyReport::parse(&line).unwrap(), r);
    }

    #[test]
    fn a_reader_ignores_new_fields_and_refuses_what_is_not_a_report() {
        assert_eq!(
            ReadyReport::parse("{\"ok\":true,\"pid\":3,\"engine\":\"qemu\"}\n").unwrap(),
            ReadyReport::Ready {
                pid: Some(3),
                boot: vec![]
            }
        );
        for bad in [
            "",
            "ready",
            "{}",
            r#"{"ok":false}"#,
            r#"{"ok":"yes"}"#,
            r#"{"ok":true,"pid":"1"}"#,
        ] {
            assert!(ReadyReport::parse(bad).is_err(), "{bad:?}");
        }
    }
}
