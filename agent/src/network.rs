//! The guest's network: loopback up, the pod's virtio-net interfaces
//! configured from [`ConfigureNetwork`] (IPv4 only: address, netmask, MTU,
//! flags, routes), all through the classic `SIOC*` ioctls on an `AF_INET`
//! datagram socket so no netlink code is needed. IPv6 is left out.

use std::ffi::CString;
use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use husk_protocol::{ConfigureNetwork, ErrorCode, Ipv4Cidr, NetRoute, ProtocolError};

/// Why the network could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The request names something impossible.
    #[error("{0}")]
    Invalid(String),
    /// No guest interface has the MAC address.
    #[error("no guest interface has MAC address {0}")]
    NoInterface(String),
    /// An ioctl failed.
    #[error("{what}")]
    Sys {
        /// What was done.
        what: String,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

impl From<NetError> for ProtocolError {
    fn from(e: NetError) -> Self {
        let code = match &e {
            NetError::Invalid(_) => ErrorCode::InvalidArgument,
            NetError::NoInterface(_) => ErrorCode::NotFound,
            NetError::Sys { .. } => ErrorCode::Internal,
        };
        let msg = match &e {
            NetError::Sys { what, source } => format!("{what}: {source}"),
            other => other.to_string(),
        };
        ProtocolError::new(code, msg)
    }
}

/// An `AF_INET` datagram socket to issue interface ioctls on.
struct Ctl(OwnedFd);

impl Ctl {
    fn new() -> Result<Self, NetError> {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
        socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map(Ctl)
        .map_err(|e| NetError::Sys {
            what: "socket(AF_INET)".into(),
            source: e.into(),
        })
    }

    fn ioctl<T>(
        &self,
        req: libc::Ioctl,
        arg: &mut T,
        what: impl FnOnce() -> String,
    ) -> Result<(), NetError> {
        // SAFETY: `arg` is a valid, exclusively borrowed struct of the type
        // the request expects (ifreq or rtentry), alive for the call.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), req, arg as *mut T) };
        if r < 0 {
            return Err(NetError::Sys {
                what: what(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

fn ifreq(name: &str) -> Result<libc::ifreq, NetError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(NetError::Invalid(format!("bad interface name {name:?}")));
    }
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

fn sockaddr_in(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and
    // sockaddr is plain data that the kernel reinterprets by family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn netmask(prefix_len: u8) -> Ipv4Addr {
    match prefix_len {
        0 => Ipv4Addr::UNSPECIFIED,
        p => Ipv4Addr::from(u32::MAX << (32 - u32::from(p.min(32)))),
    }
}

/// Brings interface `name` up (and running).
fn set_up(ctl: &Ctl, name: &str) -> Result<(), NetError> {
    let mut r = ifreq(name)?;
    ctl.ioctl(libc::SIOCGIFFLAGS, &mut r, || {
        format!("get flags of {name}")
    })?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { r.ifr_ifru.ifru_flags };
    r.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ctl.ioctl(libc::SIOCSIFFLAGS, &mut r, || format!("bring {name} up"))
}

/// Brings `lo` up in the calling thread's network namespace (the kernel
/// adds 127.0.0.1/8 itself).
pub fn loopback_up() -> Result<(), NetError> {
    set_up(&Ctl::new()?, "lo")
}

/// The name of the interface whose MAC address is `mac`.
fn find_by_mac(mac: &str) -> Result<String, NetError> {
    let want = mac.to_ascii_lowercase();
    let dir = fs::read_dir("/sys/class/net").map_err(|source| NetError::Sys {
        what: "list /sys/class/net".into(),
        source,
    })?;
    for e in dir.flatten() {
        let addr = fs::read_to_string(e.path().join("address")).unwrap_or_default();
        if addr.trim().eq_ignore_ascii_case(&want) {
            return Ok(e.file_name().to_string_lossy().into_owned());
        }
    }
    Err(NetError::NoInterface(mac.to_owned()))
}

fn check_cidr(c: &Ipv4Cidr) -> Result<(), NetError> {
    if c.prefix_len > 32 {
        return Err(NetError::Invalid(format!(
            "prefix length {} of {} is over 32",
            c.prefix_len, c.address
        )));
    }
    Ok(())
}

fn set_addr(ctl: &Ctl, name: &str, a: &Ipv4Cidr) -> Result<(), NetError> {
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_addr = sockaddr_in(a.address);
    ctl.ioctl(libc::SIOCSIFADDR, &mut r, || {
        format!("set address {} on {name}", a.address)
    })?;
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_netmask = sockaddr_in(netmask(a.prefix_len));
    ctl.ioctl(libc::SIOCSIFNETMASK, &mut r, || {
        format!("set prefix /{} on {name}", a.prefix_len)
    })
}

fn add_route(ctl: &Ctl, dev: &str, route: &NetRoute) -> Result<(), NetError> {
    check_cidr(&route.destination)?;
    let dev_c = CString::new(dev).map_err(|_| NetError::Invalid(format!("bad name {dev:?}")))?;
    // SAFETY: rtentry is plain data (and a null rt_dev); zeroes are valid.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    let mask = netmask(route.destination.prefix_len);
    let dst = Ipv4Addr::from(u32::from(route.destination.address) & u32::from(mask));
    rt.rt_dst = sockaddr_in(dst);
    rt.rt_genmask = sockaddr_in(mask);
    let mut flags = libc::RTF_UP;
    if route.destination.prefix_len == 32 {
        flags |= libc::RTF_HOST;
    }
    if let Some(gw) = route.gateway {
        rt.rt_gateway = sockaddr_in(gw);
        flags |= libc::RTF_GATEWAY;
    }
    rt.rt_flags = flags;
    rt.rt_dev = dev_c.as_ptr().cast_mut();
    let what = || {
        format!(
            "add route {dst}/{} via {:?} dev {dev}",
            route.destination.prefix_len, route.gateway
        )
    };
    match ctl.ioctl(libc::SIOCADDRT, &mut rt, what) {
        // The kernel already added the connected route of an address.
        Err(NetError::Sys { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Applies `req` in the calling thread's network namespace: `lo` up, each
/// interface's addresses (further ones as `NAME:N` aliases), MTU and up
/// flag, then the routes in order.
pub fn configure(req: &ConfigureNetwork) -> Result<(), NetError> {
    for i in &req.interfaces {
        if !(68..=65535).contains(&i.mtu) {
            return Err(NetError::Invalid(format!(
                "MTU {} of {} is outside 68..=65535",
                i.mtu, i.mac
            )));
        }
        i.addresses.iter().try_for_each(check_cidr)?;
    }
    for r in &req.routes {
        check_cidr(&r.destination)?;
        if !req
            .interfaces
            .iter()
            .any(|i| i.mac.eq_ignore_ascii_case(&r.interface_mac))
        {
            return Err(NetError::Invalid(format!(
                "route to {} names interface {}, which is not configured",
                r.destination.address, r.interface_mac
            )));
        }
    }
    let found = req
        .interfaces
        .iter()
        .map(|i| find_by_mac(&i.mac))
        .collect::<Result<Vec<_>, _>>()?;
    let ctl = Ctl::new()?;
    set_up(&ctl, "lo")?;
    let mut names = std::collections::HashMap::new();
    for (i, name) in req.interfaces.iter().zip(found) {
        let mut r = ifreq(&name)?;
        r.ifr_ifru.ifru_mtu = i.mtu as libc::c_int;
        ctl.ioctl(libc::SIOCSIFMTU, &mut r, || {
            format!("set MTU {} on {name}", i.mtu)
        })?;
        for (n, a) in i.addresses.iter().enumerate() {
            let label = if n == 0 {
                name.clone()
            } else {
                format!("{name}:{n}")
            };
            set_addr(&ctl, &label, a)?;
            if n > 0 {
                set_up(&ctl, &label)?;
            }
        }
        set_up(&ctl, &name)?;
        tracing::info!(interface = %name, mac = %i.mac, mtu = i.mtu, addresses = ?i.addresses, "interface configured");
        names.insert(i.mac.to_ascii_lowercase(), name);
    }
    for route in &req.routes {
        let dev = names
            .get(&route.interface_mac.to_ascii_lowercase())
            .ok_or_else(|| {
                NetError::Invalid(format!(
                    "route to {} names interface {}, which is not configured",
                    route.destination.address, route.interface_mac
                ))
            })?;
        add_route(&ctl, dev, route)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(netmask(9), Ipv4Addr::new(255, 128, 0, 0));
    }

    #[test]
    fn bad_requests_are_refused_before_any_change() {
        let bad_mtu = ConfigureNetwork {
            interfaces: vec![husk_protocol::NetInterface {
                mac: "02:00:00:00:00:99".into(),
                addresses: vec![],
                mtu: 10,
            }],
            routes: vec![],
        };
        let e = ProtocolError::from(configure(&bad_mtu).unwrap_err());
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
        assert!(ifreq("a-name-that-is-far-too-long").is_err());
    }
}
