//! This host as the capture sees it: the addresses of its network namespace, which never
//! teach a mapping, and the subnets directly connected to the captured interfaces, which
//! `--trust connected` admits (`docs/trust.md`).
//!
//! Owns reading the addresses (`getifaddrs`) and keeping the last reading; the live capture
//! reads them again whenever netlink says they changed. Lookups take a read lock only.

use std::io;
use std::net::IpAddr;
use std::sync::RwLock;

use ipnet::IpNet;
use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;

/// One reading of the addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAddrs {
    /// Every address of every interface of the network namespace.
    pub local: Vec<IpAddr>,
    /// The subnets of the captured interfaces (loopback interfaces excluded), each with the
    /// index of its interface.
    pub connected: Vec<(u32, IpNet)>,
}

impl HostAddrs {
    /// Reads the addresses of the calling thread's network namespace; `ifaces` (empty: all)
    /// are the captured interfaces.
    pub fn read(ifaces: &[String]) -> io::Result<Self> {
        let mut addrs = HostAddrs::default();
        for ifa in getifaddrs()? {
            let Some(ip) = ifa.address.as_ref().and_then(ip_of) else { continue };
            addrs.local.push(ip);
            let captured = ifaces.is_empty() || ifaces.contains(&ifa.interface_name);
            if !captured || ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK) {
                continue;
            }
            // Every IPv6 interface has fe80::/64: trusting link-local subnets would trust every
            // neighbour on every link, whatever the operator's network.
            if is_link_local(ip) {
                continue;
            }
            let Some(mask) = ifa.netmask.as_ref().and_then(ip_of) else { continue };
            let Ok(index) = nix::net::if_::if_nametoindex(ifa.interface_name.as_str()) else { continue };
            if let Ok(net) = ipnet::ip_mask_to_prefix(mask).and_then(|p| IpNet::new(ip, p)) {
                let net = (index, net.trunc());
                if !addrs.connected.contains(&net) {
                    addrs.connected.push(net);
                }
            }
        }
        Ok(addrs)
    }

    /// Whether `ip` is an address of this host (IPv4-mapped IPv6 forms included).
    pub fn is_local(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.local.contains(&ip)
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

fn ip_of(addr: &nix::sys::socket::SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}

/// The last reading, shared by the capture and every lookup that drains it.
#[derive(Debug, Default)]
pub struct HostView {
    ifaces: Vec<String>,
    addrs: RwLock<Option<HostAddrs>>,
}

impl HostView {
    /// A view of the captured interfaces `ifaces` (empty: all), not read yet: until the
    /// first [`HostView::refresh`], nothing is local and nothing is connected.
    pub fn new(ifaces: Vec<String>) -> Self {
        HostView { ifaces, addrs: RwLock::new(None) }
    }

    /// Reads the addresses again, in the calling thread's network namespace.
    pub fn refresh(&self) -> io::Result<()> {
        let addrs = HostAddrs::read(&self.ifaces)?;
        *self.addrs.write().unwrap_or_else(|e| e.into_inner()) = Some(addrs);
        Ok(())
    }

    /// Whether the addresses were read: a live capture's host, not a file's.
    pub fn is_read(&self) -> bool {
        self.addrs.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// The last reading (empty before the first).
    pub fn addrs(&self) -> HostAddrs {
        self.addrs.read().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default()
    }

    /// Whether `ip` is an address of this host, as last read.
    pub fn is_local(&self, ip: IpAddr) -> bool {
        self.addrs.read().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|a| a.is_local(ip))
    }

    /// Whether `ip` is in a subnet connected to the interface `ifindex` (any captured
    /// interface when 0: not known); whether it is this host's own is [`HostView::is_local`].
    /// A packet that arrives on another interface than its source's subnet is not believed:
    /// it may be forged by a host on that other interface (a packet socket reads packets
    /// before reverse-path filtering would drop them).
    pub fn in_connected_subnet(&self, ip: IpAddr, ifindex: u32) -> bool {
        let ip = ip.to_canonical();
        let guard = self.addrs.read().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .is_some_and(|a| a.connected.iter().any(|&(i, n)| (ifindex == 0 || i == ifindex) && n.contains(&ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_local_and_never_connected() {
        let addrs = HostAddrs::read(&[]).expect("getifaddrs");
        // Every network namespace has lo; its 127.0.0.1 is local when lo is up, and lo's
        // subnet is never a connected subnet.
        assert!(addrs.connected.iter().all(|(_, n)| !n.contains(&"127.0.0.1".parse::<IpAddr>().unwrap())));
        assert!(addrs.connected.iter().all(|(_, n)| !is_link_local(n.addr())), "{:?}", addrs.connected);
        for ip in &addrs.local {
            assert!(addrs.is_local(*ip));
        }
        let view = HostView::new(vec![]);
        assert!(!view.is_read() && !view.is_local("127.0.0.1".parse().unwrap()));
        view.refresh().unwrap();
        assert!(view.is_read());
        if addrs.local.contains(&"127.0.0.1".parse().unwrap()) {
            assert!(view.is_local("::ffff:127.0.0.1".parse().unwrap()), "mapped forms are local too");
        }
    }
}
