//! The container's network namespace reaches the guest.
//!
//! When the spec names a network namespace by path (CNI through containerd,
//! podman), that namespace holds a veth with the pod's address. husk creates
//! a tap device *inside* it, mirrors every frame between the veth and the
//! tap with tc (`ingress` qdiscs, `mirred egress redirect` both ways, the
//! scheme Kata calls tcfilter), and gives the open tap fd to the monitor as a
//! virtio-net device with the veth's MAC. The agent then configures the
//! guest's interface with the veth's IPv4 addresses, MTU and routes
//! ([`ConfigureNetwork`]), and the container shares the guest's root network
//! namespace: the VM is the pod's network. IPv6 is left out.
//!
//! Everything here runs on a short-lived thread that `setns`'d into the
//! namespace; the `ip` and `tc` programs (iproute2) it starts inherit it.
//! Used by the CLI's `create` and by the shim's pod VM.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use husk_protocol::{ConfigureNetwork, Ipv4Cidr, NetInterface, NetRoute};
use nix::sched::{setns, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The name of the tap husk creates in the pod's namespace.
pub const TAP_NAME: &str = "tap0_husk";

/// Why the pod network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The namespace or a device could not be used.
    #[error("{what}")]
    Io {
        /// What was done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// An iproute2 command failed or printed something unexpected.
    #[error("{0}")]
    Command(String),
    /// The namespace holds something husk cannot mirror.
    #[error("{0}")]
    Unsupported(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Io { what, source }
}

/// What must be undone on delete; kept in the container's (or pod's) state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The network namespace path from the spec.
    pub netns: PathBuf,
    /// The veth (or other interface) mirrored into the guest.
    pub veth: String,
    /// The tap husk created next to it.
    pub tap: String,
}

/// A set-up pod network: the open tap and what the guest must be told.
#[derive(Debug)]
pub struct PodNetwork {
    /// What to undo.
    pub state: NetState,
    /// The tap fd (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) for the engine.
    pub tap_fd: OwnedFd,
    /// The guest interface's MAC (the veth's).
    pub mac: String,
    /// The MTU (the veth's).
    pub mtu: u32,
    /// The agent's request.
    pub guest: ConfigureNetwork,
}

/// The spec's network namespace path, if it names one.
pub fn netns_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)
        .and_then(|n| n.path().clone())
        .filter(|p| !p.as_os_str().is_empty())
}

/// Drops a `network` namespace entry that has a path from the spec sent to
/// the guest (the container then shares the guest's root namespace, which
/// is the pod's network); an entry without a path stays (a new namespace
/// with only loopback, as with runc). Returns whether it dropped one.
pub fn drop_netns_path(spec: &mut Spec) -> bool {
    if netns_path(spec).is_none() {
        return false;
    }
    if let Some(mut linux) = spec.linux().clone() {
        if let Some(ns) = linux.namespaces().clone() {
            let kept = ns
                .into_iter()
                .filter(|n| n.typ() != LinuxNamespaceType::Network)
                .collect();
            linux.set_namespaces(Some(kept));
        }
        spec.set_linux(Some(linux));
    }
    true
}

/// Runs `f` on a thread that joined the network namespace at `netns`.
pub(crate) fn in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, NetworkError> + Send,
) -> Result<T, NetworkError> {
    let ns = File::open(netns).map_err(io(format!(
        "cannot open the network namespace {}",
        netns.display()
    )))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| NetworkError::Io {
                what: format!("cannot join the network namespace {}", netns.display()),
                source: e.into(),
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(NetworkError::Command("network thread panicked".into())))
    })
}

/// Runs a network program (`ip`, `tc`, `iptables`) in the calling thread's
/// namespace and returns its stdout.
pub(crate) fn run(prog: &str, args: &[&str]) -> Result<String, NetworkError> {
    let out = crate::child::output(Command::new(prog).args(args)).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            let package = if prog == "iptables" {
                "iptables"
            } else {
                "iproute2"
            };
            NetworkError::Command(format!("{prog} is not installed ({package})"))
        } else {
            NetworkError::Io {
                what: format!("cannot run {prog}"),
                source: e,
            }
        }
    })?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim_end().to_owned();
    if out.status.success() {
        return Ok(text(&out.stdout));
    }
    Err(NetworkError::Command(format!(
        "{prog} {} failed (exit {}): {}",
        args.join(" "),
        out.status.code().unwrap_or(-1),
        format!("{} {}", text(&out.stderr), text(&out.stdout)).trim()
    )))
}

fn ip_json(args: &[&str]) -> Result<Vec<Value>, NetworkError> {
    let mut a = vec!["-j"];
    a.extend_from_slice(args);
    let text = run("ip", &a)?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&text)
        .map_err(|e| NetworkError::Command(format!("ip {}: bad JSON: {e}", args.join(" "))))
}

/// The interface to mirror and what the guest needs, read from `ip -j`.
#[derive(Debug, Clone, PartialEq)]
struct Found {
    veth: String,
    mac: String,
    mtu: u32,
    addresses: Vec<Ipv4Cidr>,
    routes: Vec<(Ipv4Cidr, Option<Ipv4Addr>)>,
}

fn cidr(s: &str) -> Option<Ipv4Cidr> {
    if s == "default" {
        return Some(Ipv4Cidr {
            address: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
        });
    }
    let (a, p) = s.split_once('/').unwrap_or((s, "32"));
    let prefix_len = p.parse().ok().filter(|p| *p <= 32)?;
    Some(Ipv4Cidr {
        address: a.parse().ok()?,
        prefix_len,
    })
}

/// Picks the interface from `ip -j link`, `ip -j -4 addr` and `ip -j -4
/// route` output: the first Ethernet interface with an IPv4 address.
fn pick(links: &[Value], addrs: &[Value], routes: &[Value]) -> Result<Option<Found>, NetworkError> {
    let mut found: Vec<Found> = Vec::new();
    for l in links {
        let name = l["ifname"].as_str().unwrap_or_default();
        if l["link_type"] != "ether" || name == TAP_NAME {
            continue;
        }
        let addresses: Vec<Ipv4Cidr> = addrs
            .iter()
            .filter(|a| a["ifname"] == name)
            .flat_map(|a| a["addr_info"].as_array().cloned().unwrap_or_default())
            .filter(|i| i["family"] == "inet")
            .filter_map(|i| {
                Some(Ipv4Cidr {
                    address: i["local"].as_str()?.parse().ok()?,
                    prefix_len: u8::try_from(i["prefixlen"].as_u64()?).ok()?,
                })
            })
            .collect();
        if addresses.is_empty() {
            continue;
        }
        let routes = routes
            .iter()
            .filter(|r| r["dev"] == name && r["protocol"] != "kernel")
            .filter(|r| r["type"].is_null() || r["type"] == "unicast")
            .filter_map(|r| {
                let gw = r["gateway"].as_str().and_then(|g| g.parse().ok());
                Some((cidr(r["dst"].as_str()?)?, gw))
            })
            .collect();
        found.push(Found {
            veth: name.to_owned(),
            mac: l["address"].as_str().unwrap_or_default().to_owned(),
            mtu: l["mtu"].as_u64().unwrap_or(1500) as u32,
            addresses,
            routes,
        });
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => {
            Err(NetworkError::Unsupported(format!(
            "the network namespace has {} interfaces with IPv4 addresses ({}); husk mirrors one",
            found.len(),
            found.iter().map(|f| f.veth.as_str()).collect::<Vec<_>>().join(", ")
        )))
        }
    }
}

/// Opens `/dev/net/tun` as tap `name` in the calling thread's namespace.
fn open_tap(name: &str) -> Result<OwnedFd, NetworkError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(io("cannot open /dev/net/tun"))?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the ifreq, which lives across the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut libc::ifreq) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        let what = if e.raw_os_error() == Some(libc::EBUSY) {
            format!("tap {name} exists already in the network namespace (another husk VM uses it)")
        } else {
            format!("cannot create tap {name}")
        };
        return Err(NetworkError::Io { what, source: e });
    }
    // Keep the fd: the tap lives as long as it is open. Reopen as OwnedFd.
    // SAFETY: into_raw_fd hands over sole ownership of the open fd.
    Ok(unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(f)) })
}

/// Removes the tap and the veth's ingress qdisc (in the current namespace);
/// what is already gone is fine.
fn undo_in_ns(veth: &str, tap: &str) {
    for (prog, args) in [
        ("tc", vec!["qdisc", "del", "dev", veth, "ingress"]),
        ("ip", vec!["link", "del", tap]),
    ] {
        if let Err(e) = run(prog, &args) {
            tracing::debug!(error = %e, "network undo step");
        }
    }
}

fn mirror(veth: &str, tap: &str, mtu: u32) -> Result<(), NetworkError> {
    let mtu = mtu.to_string();
    run("ip", &["link", "set", "dev", tap, "mtu", &mtu, "up"])?;
    for (from, to) in [(veth, tap), (tap, veth)] {
        run("tc", &["qdisc", "add", "dev", from, "ingress"])?;
        run(
            "tc",
            &[
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
                "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )?;
    }
    Ok(())
}

/// Sets up the pod network of the namespace at `netns`. `Ok(None)` when the
/// namespace has no interface with an IPv4 address (the guest then has
/// loopback only). On error nothing is left behind.
pub fn setup(netns: &Path) -> Result<Option<PodNetwork>, NetworkError> {
    use std::os::unix::fs::MetadataExt;
    let ns_id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let theirs = ns_id(netns).map_err(io(format!(
        "cannot open the network namespace {}",
        netns.display()
    )))?;
    if ns_id(Path::new("/proc/self/ns/net")).is_ok_and(|ours| ours == theirs) {
        // Mirroring would hand the host's own interface to the guest.
        return Err(NetworkError::Unsupported(format!(
            "the network namespace {} is the host's own; a VM cannot share it (drop the path for a private network)",
            netns.display()
        )));
    }
    let netns_owned = netns.to_owned();
    in_netns(netns, move || {
        let links = ip_json(&["link", "show"])?;
        let addrs = ip_json(&["-4", "addr", "show"])?;
        let routes = ip_json(&["-4", "route", "show"])?;
        let Some(found) = pick(&links, &addrs, &routes)? else {
            tracing::info!(netns = %netns_owned.display(), "no interface with an IPv4 address: loopback only");
            return Ok(None);
        };
        let tap_fd = open_tap(TAP_NAME)?;
        if let Err(e) = mirror(&found.veth, TAP_NAME, found.mtu) {
            undo_in_ns(&found.veth, TAP_NAME);
            return Err(e);
        }
        tracing::info!(netns = %netns_owned.display(), veth = %found.veth, mac = %found.mac,
            mtu = found.mtu, addresses = ?found.addresses, "pod network mirrored into tap");
        let guest = ConfigureNetwork {
            interfaces: vec![NetInterface {
                mac: found.mac.clone(),
                addresses: found.addresses.clone(),
                mtu: found.mtu,
            }],
            routes: found
                .routes
                .iter()
                .map(|(d, gw)| NetRoute {
                    destination: *d,
                    gateway: *gw,
                    interface_mac: found.mac.clone(),
                })
                .collect(),
        };
        Ok(Some(PodNetwork {
            state: NetState {
                netns: netns_owned,
                veth: found.veth,
                tap: TAP_NAME.into(),
            },
            tap_fd,
            mac: found.mac,
            mtu: found.mtu,
            guest,
        }))
    })
}

/// Undoes [`setup`]: deletes the tap and the tc qdiscs. A namespace that is
/// gone already (CNI removed it) leaves nothing to undo.
pub fn teardown(st: &NetState) {
    if !st.netns.exists() {
        return;
    }
    let (veth, tap) = (st.veth.clone(), st.tap.clone());
    match in_netns(&st.netns, move || {
        undo_in_ns(&veth, &tap);
        Ok(())
    }) {
        Ok(()) => tracing::debug!(netns = %st.netns.display(), "pod network undone"),
        Err(e) => {
            tracing::warn!(netns = %st.netns.display(), error = %e, "cannot undo the pod network")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn picks_the_veth_and_its_routes() {
        let links = [
            json!({"ifname": "lo", "link_type": "loopback", "address": "00:00:00:00:00:00", "mtu": 65536}),
            json!({"ifname": "eth0", "link_type": "ether", "address": "2a:1b:0c:00:00:02", "mtu": 1400}),
            json!({"ifname": "tap0_husk", "link_type": "ether", "address": "2a:1b:0c:00:00:09", "mtu": 1400}),
        ];
        let addrs = [
            json!({"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]}),
            json!({"ifname": "eth0", "addr_info": [{"family": "inet", "local": "10.254.1.2", "prefixlen": 24}]}),
        ];
        let routes = [
            json!({"dst": "default", "gateway": "10.254.1.1", "dev": "eth0"}),
            json!({"dst": "10.254.1.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link"}),
            json!({"dst": "10.9.0.0/16", "gateway": "10.254.1.3", "dev": "eth0"}),
        ];
        let f = pick(&links, &addrs, &routes).unwrap().unwrap();
        assert_eq!(
            (f.veth.as_str(), f.mac.as_str(), f.mtu),
            ("eth0", "2a:1b:0c:00:00:02", 1400)
        );
        assert_eq!(f.addresses, vec![cidr("10.254.1.2/24").unwrap()]);
        assert_eq!(
            f.routes,
            vec![
                (cidr("default").unwrap(), Some(Ipv4Addr::new(10, 254, 1, 1))),
                (
                    cidr("10.9.0.0/16").unwrap(),
                    Some(Ipv4Addr::new(10, 254, 1, 3))
                ),
            ]
        );
        assert!(pick(&links[..1], &addrs, &routes).unwrap().is_none());
        let two = [
            links[1].clone(),
            json!({"ifname": "eth1", "link_type": "ether", "address": "2a:00:00:00:00:03"}),
        ];
        let addrs2 = [
            addrs[1].clone(),
            json!({"ifname": "eth1", "addr_info": [{"family": "inet", "local": "10.1.1.1", "prefixlen": 8}]}),
        ];
        assert!(pick(&two, &addrs2, &[])
            .unwrap_err()
            .to_string()
            .contains("eth0, eth1"));
    }

    #[test]
    fn netns_entry_with_a_path_is_dropped() {
        let mut s: Spec =
            serde_json::from_value(json!({"ociVersion": "1.0.2", "linux": {"namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/var/run/netns/a"}]}}))
            .unwrap();
        assert_eq!(netns_path(&s), Some(PathBuf::from("/var/run/netns/a")));
        assert!(drop_netns_path(&mut s));
        let ns = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert_eq!(ns.len(), 1);
        let mut fresh: Spec =
            serde_json::from_value(json!({"ociVersion": "1.0.2", "linux": {"namespaces": [
            {"type": "network"}]}}))
            .unwrap();
        assert!(!drop_netns_path(&mut fresh));
        assert_eq!(
            fresh
                .linux()
                .as_ref()
                .unwrap()
                .namespaces()
                .as_ref()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn runs_and_reports_exit_status() {
        assert_eq!(run("echo", &["a", "b c"]).unwrap(), "a b c");
        let e = run("sh", &["-c", "echo oops >&2; exit 3"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("exit 3") && e.contains("oops"), "{e}");
        let e = run("husk-no-such-program", &[]).unwrap_err().to_string();
        assert!(e.contains("not installed"), "{e}");
    }

    #[test]
    fn a_missing_or_host_namespace_is_a_clear_error() {
        let e = setup(Path::new("/nonexistent/netns")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
        let e = setup(Path::new("/proc/self/ns/net")).unwrap_err();
        assert!(e.to_string().contains("the host's own"), "{e}");
    }
}
