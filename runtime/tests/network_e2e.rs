//! End-to-end tests of the pod network: a spec naming a network namespace
//! (as CNI prepares one: a veth with an address, a route, an MTU) reaches
//! the guest through a tap and tc mirroring. Each test builds its own pair
//! of namespaces ("A", the container's, and "B", the host side of the
//! veth) with addresses in 10.254.0.0/16, and removes them on every path.

mod common;
use husk_test_support::{require, wait_until};

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::Env;

fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().unwrap()
}

fn sh_ok(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Why the host cannot run these tests, beyond a guest.
fn tools() -> Result<(), String> {
    for t in ["ip", "tc", "busybox"] {
        if !sh(&format!("command -v {t}")).status.success() {
            return Err(format!("{t} is not installed (iproute2, busybox-static)"));
        }
    }
    Ok(())
}

/// Netns A and B joined by a veth, removed on drop.
struct NetPair {
    a: String,
    b: String,
}

impl NetPair {
    fn new(tag: &str, mtu: u32) -> NetPair {
        let n = std::process::id();
        let p = NetPair {
            a: format!("hk{tag}A{n}"),
            b: format!("hk{tag}B{n}"),
        };
        let (a, b) = (&p.a, &p.b);
        sh_ok(&format!(
            "set -e; ip netns add {a}; ip netns add {b}
             ip link add hkva netns {a} type veth peer name hkvb netns {b}
             ip -n {a} addr add 10.254.1.2/24 dev hkva
             ip -n {a} link set hkva mtu {mtu} up; ip -n {a} link set lo up
             ip -n {a} route add default via 10.254.1.1
             ip -n {b} addr add 10.254.1.1/24 dev hkvb
             ip -n {b} link set hkvb mtu {mtu} up; ip -n {b} link set lo up"
        ));
        p
    }

    fn path_a(&self) -> String {
        format!("/var/run/netns/{}", self.a)
    }

    /// A command run in netns B.
    fn in_b(&self, cmd: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.b, "sh", "-c", cmd]);
        c
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}; ip netns del {}", self.a, self.b));
    }
}

/// Kills a background helper on drop.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn set_netns_path(env: &Env, bundle: &Path, path: &str) {
    env.edit_config(bundle, |v| {
        for ns in v["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "network" {
                ns["path"] = path.into();
            }
        }
    });
}

fn create_with_output(env: &Env, bundle: &Path, id: &str) -> std::path::PathBuf {
    let out = env.dir.path().join(format!("{id}.out"));
    let err = env.dir.path().join(format!("{id}.err"));
    let st = env
        .husk()
        .args(["create", "--bundle", bundle.to_str().unwrap(), id])
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    assert!(
        st.success(),
        "create {id}: {}",
        fs::read_to_string(&err).unwrap()
    );
    out
}

#[test]
fn netns_path_reaches_the_guest_both_ways() {
    require!(common::guest_ready());
    require!(tools());
    let net = NetPair::new("n", 1400);
    let env = Env::new();
    // A server in B the container reaches (b).
    let _srv_b = Bg(net
        .in_b("echo from-b | busybox nc -l -p 9000")
        .stdout(Stdio::null())
        .spawn()
        .unwrap());
    let b = env.bundle(
        "b",
        &[],
        &[
            "sh",
            "-c",
            "ip -4 addr show eth0; echo mtu=$(cat /sys/class/net/eth0/mtu); ip route; \
             ls /sys/class/net | tr '\\n' ' '; echo; cat /etc/resolv.conf /etc/hosts; \
             echo got=$(nc 10.254.1.1 9000 </dev/null); \
             echo from-container | nc -l -p 8080; echo served",
        ],
    );
    set_netns_path(&env, &b, &net.path_a());
    // /etc/resolv.conf and /etc/hosts bind-mounted from the bundle, as
    // containerd and podman do: they travel through the bundle share.
    fs::write(b.join("resolv.conf"), "nameserver 10.254.1.53\n").unwrap();
    fs::write(b.join("hosts"), "10.254.1.1 host-b\n").unwrap();
    env.edit_config(&b, |v| {
        for (f, dst) in [("resolv.conf", "/etc/resolv.conf"), ("hosts", "/etc/hosts")] {
            v["mounts"].as_array_mut().unwrap().push(serde_json::json!({
                "destination": dst, "type": "bind",
                "source": b.join(f), "options": ["rbind", "ro"]}));
        }
    });
    let out = create_with_output(&env, &b, "n1");
    // The tap and the mirroring exist in A while the container lives.
    let links = sh_ok(&format!("ip -n {} link show", net.a));
    assert!(links.contains("tap0_husk"), "{links}");
    let qd = sh_ok(&format!("tc -n {} qdisc show dev hkva", net.a));
    assert!(qd.contains("ingress"), "{qd}");
    env.ok(&["start", "n1"]);

    // (a) a client in B gets the container's answer.
    let mut answer = String::new();
    wait_until(Duration::from_secs(60), "the container's server", || {
        let o = net
            .in_b("busybox nc -w 3 10.254.1.2 8080 </dev/null")
            .output()
            .unwrap();
        answer = String::from_utf8_lossy(&o.stdout).into_owned();
        answer.contains("from-container")
    });
    wait_until(Duration::from_secs(30), "the container to exit", || {
        env.status_of("n1") == "stopped"
    });
    let text = fs::read_to_string(&out).unwrap();
    // (b) the container reached the server in B.
    assert!(text.contains("got=from-b"), "{text}");
    // (c) the veth's address, MTU and default route.
    assert!(text.contains("inet 10.254.1.2/24"), "{text}");
    assert!(text.contains("mtu=1400"), "{text}");
    assert!(text.contains("default via 10.254.1.1"), "{text}");
    assert!(text.contains("nameserver 10.254.1.53"), "{text}");
    assert!(text.contains("10.254.1.1 host-b"), "{text}");
    assert!(text.contains("served"), "{text}");

    env.ok(&["delete", "n1"]);
    let links = sh_ok(&format!("ip -n {} link show", net.a));
    assert!(!links.contains("tap0_husk"), "tap left: {links}");
    let qd = sh_ok(&format!("tc -n {} qdisc show dev hkva", net.a));
    assert!(!qd.contains("ingress"), "qdisc left: {qd}");
    env.assert_clean();
}

#[test]
fn without_a_netns_path_only_loopback() {
    require!(common::guest_ready());
    let env = Env::new();
    let b = env.bundle(
        "b",
        &[],
        &[
            "sh",
            "-c",
            "echo ifaces=$(ls /sys/class/net | tr '\\n' ' '); ip -4 addr; ip link show lo; \
             echo hi | nc -l -p 7000 & sleep 1; echo lo=$(nc 127.0.0.1 7000 </dev/null)",
        ],
    );
    let out = create_with_output(&env, &b, "l1");
    env.ok(&["start", "l1"]);
    wait_until(Duration::from_secs(60), "the container to exit", || {
        env.status_of("l1") == "stopped"
    });
    let text = fs::read_to_string(&out).unwrap();
    // Only loopback (and the kernel's fallback tunnel sit0) exist; no
    // eth0, and lo is the only interface with an IPv4 address.
    assert!(text.contains("ifaces=lo "), "{text}");
    assert!(!text.contains("eth0"), "{text}");
    assert_eq!(text.matches("inet ").count(), 1, "{text}");
    assert!(text.contains("UP"), "lo is not up: {text}");
    assert!(text.contains("lo=hi"), "{text}");
    env.ok(&["delete", "l1"]);
    env.assert_clean();
}

#[test]
fn a_missing_netns_is_a_clear_error_with_nothing_left() {
    require!(common::guest_ready());
    let env = Env::new();
    let b = env.bundle("b", &[], &["true"]);
    set_netns_path(&env, &b, "/var/run/netns/hk-does-not-exist");
    let out = env.run(&["create", "--bundle", b.to_str().unwrap(), "x1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hk-does-not-exist"), "{err}");
    env.assert_clean();
}
