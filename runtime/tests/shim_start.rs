//! The shim's `start` handshake with both generations of containerd.
//!
//! containerd 1.6 to 2.2 run `containerd-shim-husk-v2 -namespace NS -id ID
//! -address SOCK -publish-binary BIN start` with `TTRPC_ADDRESS` set and
//! the runtime options as a bare protobuf `Any` on stdin (or nothing), and
//! read the shim's ttrpc address from its stdout: 1.6 takes the text as it
//! is; 1.7 and 2.x first try it as a protobuf `BootstrapResult` (2.3+) and
//! as JSON, and fall back to the plain address (task API v2). containerd
//! 2.3+ also pipe a `BootstrapParams` protobuf on stdin (instance id,
//! namespace, addresses, the options as extensions).
//!
//! Each case runs the real binary in a bundle directory, checks that stdout
//! is exactly the plain `unix://` address and that it does not decode as
//! protobuf (so containerd 2.3+ falls back to it), then asks the shim
//! started there for `Connect` on the v2 task API and shuts it down. Needs
//! root (containerd's socket directory); skips with the reason otherwise.

use std::io::Write;
use std::process::{Command, Stdio};

use std::sync::Arc;

use containerd_shim::api::Empty;
use containerd_shim::protos::protobuf::{CodedInputStream, CodedOutputStream};
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim::shim::{ConnectRequest, ShutdownRequest};
use containerd_shim::protos::shim_sync::{create_events, Events, TaskClient};
use containerd_shim::protos::ttrpc::{context, Client, Server, TtrpcContext};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-husk-v2");

/// A `runtimeoptions.v1.Options` with `ConfigPath`, packed in an `Any`,
/// as containerd's CRI sends it.
fn options_any(config_path: &str) -> Vec<u8> {
    let mut inner = Vec::new();
    {
        let mut o = CodedOutputStream::vec(&mut inner);
        o.write_string(2, config_path).unwrap();
        o.flush().unwrap();
    }
    let mut any = Vec::new();
    {
        let mut o = CodedOutputStream::vec(&mut any);
        o.write_string(1, "runtimeoptions.v1.Options").unwrap();
        o.write_bytes(2, &inner).unwrap();
        o.flush().unwrap();
    }
    any
}

/// containerd 2.3's `BootstrapParams` (api/runtime/bootstrap/v1):
/// instance_id 1, namespace 2, log_level 3, containerd_version 4,
/// ttrpc address 5, grpc address 6, binary 7, extensions 8 (an `Extension`
/// holding the `Any` as its field 1).
fn bootstrap_params(id: &str, ns: &str, ttrpc: &str, grpc: &str, options: &[u8]) -> Vec<u8> {
    let mut ext = Vec::new();
    {
        let mut o = CodedOutputStream::vec(&mut ext);
        o.write_bytes(1, options).unwrap();
        o.flush().unwrap();
    }
    let mut out = Vec::new();
    {
        let mut o = CodedOutputStream::vec(&mut out);
        o.write_string(1, id).unwrap();
        o.write_string(2, ns).unwrap();
        o.write_int32(3, 4).unwrap();
        o.write_string(4, "v2.3.2").unwrap();
        o.write_string(5, ttrpc).unwrap();
        o.write_string(6, grpc).unwrap();
        o.write_string(7, "/usr/bin/containerd").unwrap();
        o.write_bytes(8, &ext).unwrap();
        o.flush().unwrap();
    }
    out
}

/// Whether `bytes` decode as a protobuf message (any fields): containerd
/// 2.3+ would then take them for a `BootstrapResult`.
fn decodes_as_protobuf(bytes: &[u8]) -> bool {
    let mut is = CodedInputStream::from_bytes(bytes);
    loop {
        match is.eof() {
            Ok(true) => return true,
            Ok(false) => {}
            Err(_) => return false,
        }
        let Ok(tag) = is.read_raw_varint32() else {
            return false;
        };
        if tag >> 3 == 0 {
            return false;
        }
        let Some(wire) = containerd_shim::protos::protobuf::rt::WireType::new(tag & 7) else {
            return false;
        };
        if is.skip_field(wire).is_err() {
            return false;
        }
    }
}

/// containerd's ttrpc event service, which a serving shim connects to.
struct FakeContainerd;

impl Events for FakeContainerd {
    fn forward(
        &self,
        _ctx: &TtrpcContext,
        _req: ForwardRequest,
    ) -> containerd_shim::protos::ttrpc::Result<Empty> {
        Ok(Empty::new())
    }
}

/// Runs `start` as containerd `generation` would, with `stdin`; returns the
/// address it printed after checking the shim there answers and stopping it.
fn start(generation: &str, id: &str, stdin: &[u8], ttrpc: &str) -> String {
    let bundle = tempfile::tempdir().unwrap();
    let ns = "husk-start-test";
    let mut cmd = Command::new(SHIM);
    cmd.current_dir(bundle.path())
        .args([
            "-namespace",
            ns,
            "-id",
            id,
            "-address",
            "/run/containerd/containerd.sock",
        ])
        .args(["-publish-binary", "/bin/true", "start"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.env("TTRPC_ADDRESS", ttrpc);
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{generation}: start failed: {} {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("unix:///run/containerd/s/") && !stdout.contains('\n'),
        "{generation}: stdout is not the plain address: {stdout:?}"
    );
    assert!(
        !decodes_as_protobuf(stdout.as_bytes()),
        "{generation}: containerd 2.3+ would read {stdout:?} as a BootstrapResult"
    );
    let client = TaskClient::new(Client::connect(&stdout).unwrap());
    let mut req = ConnectRequest::new();
    req.id = id.into();
    let r = client
        .connect(context::with_timeout(10_000_000_000), &req)
        .unwrap();
    assert!(r.shim_pid > 0, "{generation}: {r:?}");
    let mut req = ShutdownRequest::new();
    req.id = id.into();
    let _ = client.shutdown(context::with_timeout(10_000_000_000), &req);
    // The shim removes its socket as it goes (and the bundle with it here).
    let sock = stdout.strip_prefix("unix://").unwrap().to_owned();
    husk_test_support::wait_until(
        std::time::Duration::from_secs(5),
        &format!("{generation}: {sock} to be removed"),
        || !std::path::Path::new(&sock).exists(),
    );
    stdout
}

#[test]
fn start_answers_every_containerd_generation_with_a_plain_address() {
    husk_test_support::require!(
        husk_test_support::root(),
        "the shim's socket goes in /run/containerd/s"
    );
    let dir = tempfile::tempdir().unwrap();
    let ttrpc = dir.path().join("containerd.sock.ttrpc");
    let mut events = Server::new()
        .bind(&format!("unix://{}", ttrpc.display()))
        .unwrap()
        .register_service(create_events(Arc::new(FakeContainerd)));
    events.start().unwrap();
    let ttrpc = ttrpc.to_str().unwrap();
    let pid = std::process::id();
    let opts = options_any("/etc/husk/husk-shim.toml");
    assert!(decodes_as_protobuf(&opts), "the checker knows a protobuf");
    // containerd 1.6 (Debian 12): no options, or the options as an Any.
    start("1.6 without options", &format!("s16a-{pid}"), b"", ttrpc);
    start("1.6 with options", &format!("s16b-{pid}"), &opts, ttrpc);
    // containerd 2.3+: BootstrapParams on stdin (the environment as well).
    let id = format!("s23-{pid}");
    let params = bootstrap_params(
        &id,
        "husk-start-test",
        ttrpc,
        "/run/containerd/containerd.sock",
        &opts,
    );
    start("2.3 bootstrap", &id, &params, ttrpc);
    events.shutdown();
}
