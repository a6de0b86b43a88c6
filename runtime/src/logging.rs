//! `--log`, `--log-format`, `--debug`: logs go where runc's go, in runc's
//! shape. In JSON format each line is `{"level":..,"msg":..,"time":..}`
//! with any other fields alongside, which is what containerd reads back
//! from the log file to report a runtime failure.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the global subscriber. Unwritable log files fall back to stderr.
pub fn init(log: Option<&Path>, json: bool, debug: bool) {
    let default = if debug { "debug" } else { "warn" };
    let filter = EnvFilter::try_from_env("HUSK_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let out: Box<dyn Write + Send> =
        match log.and_then(|p| OpenOptions::new().create(true).append(true).open(p).ok()) {
            Some(f) => Box::new(f),
            None => Box::new(std::io::stderr()),
        };
    let layer = RuncLayer {
        out: Mutex::new(out),
        json,
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
}

struct RuncLayer {
    out: Mutex<Box<dyn Write + Send>>,
    json: bool,
}

#[derive(Default)]
struct Fields {
    msg: String,
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_owned();
        } else {
            self.rest.insert(field.name().to_owned(), value.into());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for RuncLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        let time = crate::ops::now_rfc3339();
        let line = if self.json {
            let mut m = f.rest;
            m.insert("level".into(), level.into());
            m.insert("msg".into(), f.msg.into());
            m.insert("time".into(), time.into());
            serde_json::Value::Object(m).to_string()
        } else {
            let extra: String = f.rest.iter().map(|(k, v)| format!(" {k}={v}")).collect();
            format!("time=\"{time}\" level={level} msg=\"{}\"{extra}", f.msg)
        };
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{line}");
        }
    }
}
