//! A sandbox's network interface, set up over rtnetlink (no `ip` binary):
//! a veth pair whose sandbox end (`eth0`) lives in the sandbox's network
//! namespace and whose host end (`sbh<N>`) stays in the host's, each with
//! an address of a /30, and a default route through the host end. The host
//! end disappears with the namespace.

use crate::sys::Step;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetSpec {
    /// Name of the host end, e.g. `sbh12`.
    pub host_if: String,
    /// The host end's address (the sandbox's gateway).
    pub gateway: Ipv4Addr,
    /// The sandbox end's address.
    pub address: Ipv4Addr,
    pub prefix: u8,
}

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const RTA_OIF: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;

/// A netlink message under construction.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

impl Msg {
    fn new(kind: u16, flags: u16) -> Msg {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        Msg {
            buf,
            nests: Vec::new(),
        }
    }

    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.raw(data)
    }

    fn begin(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Self {
        let start = self.nests.pop().expect("balanced nests");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn finish(&mut self) -> &[u8] {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        &self.buf
    }
}

/// `struct ifinfomsg` with an index, flags and change mask.
fn ifinfo(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = libc::AF_UNSPEC as u8;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

fn cname(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A NETLINK_ROUTE socket in the calling thread's network namespace.
struct Netlink {
    fd: OwnedFd,
}

impl Netlink {
    fn open() -> Result<Netlink> {
        let fd = sandstone_sys::net::netlink_route_socket().step(|| "netlink socket".into())?;
        Ok(Netlink { fd })
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&self, msg: &mut Msg, what: &str) -> Result<()> {
        use sandstone_sys::net::{recv, send};
        send(self.fd.as_fd(), msg.finish()).step(|| format!("netlink send ({what})"))?;
        let mut reply = [0u8; 4096];
        let n = recv(self.fd.as_fd(), &mut reply).step(|| format!("netlink recv ({what})"))?;
        if n < 20 {
            return Err(Error::sys(
                format!("netlink recv ({what})"),
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            ));
        }
        let kind = u16::from_ne_bytes([reply[4], reply[5]]);
        let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        if kind == NLMSG_ERROR && code != 0 {
            return Err(Error::sys(
                what.to_string(),
                std::io::Error::from_raw_os_error(-code),
            ));
        }
        Ok(())
    }
}

fn index_of(name: &str) -> Result<i32> {
    let c = CString::new(name).map_err(|_| Error::Other("bad interface name".into()))?;
    let i = sandstone_sys::net::interface_index(&c).step(|| format!("find interface {name}"))?;
    Ok(i as i32)
}

fn set_up(nl: &Netlink, name: &str) -> Result<()> {
    let mut m = Msg::new(RTM_NEWLINK, 0);
    m.raw(&ifinfo(
        index_of(name)?,
        libc::IFF_UP as u32,
        libc::IFF_UP as u32,
    ));
    nl.request(&mut m, &format!("set {name} up"))
}

fn add_address(nl: &Netlink, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<()> {
    let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
    let mut ifa = [0u8; 8];
    ifa[0] = libc::AF_INET as u8;
    ifa[1] = prefix;
    ifa[4..8].copy_from_slice(&(index_of(name)? as u32).to_ne_bytes());
    m.raw(&ifa)
        .attr(IFA_LOCAL, &addr.octets())
        .attr(IFA_ADDRESS, &addr.octets());
    nl.request(&mut m, &format!("address {addr}/{prefix} on {name}"))
}

fn add_default_route(nl: &Netlink, name: &str, gateway: Ipv4Addr) -> Result<()> {
    let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    let mut rt = [0u8; 12];
    rt[0] = libc::AF_INET as u8;
    rt[4] = libc::RT_TABLE_MAIN;
    rt[5] = libc::RTPROT_BOOT;
    rt[6] = libc::RT_SCOPE_UNIVERSE;
    rt[7] = libc::RTN_UNICAST;
    m.raw(&rt)
        .attr(RTA_GATEWAY, &gateway.octets())
        .attr(RTA_OIF, &(index_of(name)? as u32).to_ne_bytes());
    nl.request(&mut m, "default route")
}

fn create_veth(nl: &Netlink, spec: &NetSpec, host_ns: &OwnedFd) -> Result<()> {
    let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
    m.raw(&ifinfo(0, 0, 0))
        .attr(IFLA_IFNAME, &cname("eth0"))
        .begin(IFLA_LINKINFO)
        .attr(IFLA_INFO_KIND, b"veth")
        .begin(IFLA_INFO_DATA)
        .begin(VETH_INFO_PEER)
        .raw(&ifinfo(0, 0, 0))
        .attr(IFLA_IFNAME, &cname(&spec.host_if))
        .attr(IFLA_NET_NS_FD, &(host_ns.as_raw_fd() as u32).to_ne_bytes())
        .end()
        .end()
        .end();
    nl.request(&mut m, "create veth pair")
}

fn delete_link(nl: &Netlink, name: &str) -> Result<()> {
    let mut m = Msg::new(RTM_DELLINK, 0);
    m.raw(&ifinfo(index_of(name)?, 0, 0));
    nl.request(&mut m, &format!("delete stale {name}"))
}

/// Deletes the host end `name` of a sandbox's veth, from the caller's (the
/// host's) network namespace; the sandbox end goes with it, leaving the
/// sandbox only loopback. `Ok(false)`: there was no such interface.
pub fn remove_host_end(name: &str) -> Result<bool> {
    let c = CString::new(name).map_err(|_| Error::Other("bad interface name".into()))?;
    if sandstone_sys::net::interface_index(&c).is_err() {
        return Ok(false);
    }
    match delete_link(&Netlink::open()?, name) {
        Ok(()) => Ok(true),
        // Gone meanwhile, with its namespace.
        Err(Error::Sys { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| Error::sys(format!("write {path}"), e))
}

/// Brings `lo` up in the calling thread's network namespace.
pub fn loopback_up() -> Result<()> {
    set_up(&Netlink::open()?, "lo")
}

/// Run in the sandbox's fresh network namespace by the helper (host root),
/// with `host_ns` an fd of the host's: makes the veth pair, addresses both
/// ends, brings them and `lo` up, routes through the gateway and turns
/// IPv6 off inside.
pub fn setup_in_sandbox_ns(spec: &NetSpec, host_ns: &OwnedFd, sandbox_ns: &OwnedFd) -> Result<()> {
    let nl = Netlink::open()?;
    set_up(&nl, "lo")?;
    write_sysctl("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1")?;
    write_sysctl("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")?;
    if let Err(e) = create_veth(&nl, spec, host_ns) {
        // A host end left by an earlier sandbox of this slot (it goes away
        // asynchronously with its namespace, or a crash left it): remove it
        // and try once more.
        if !matches!(&e, Error::Sys { source, .. } if source.raw_os_error() == Some(libc::EEXIST)) {
            return Err(e);
        }
        enter(host_ns, "host")?;
        let removed = delete_link(&Netlink::open()?, &spec.host_if);
        enter(sandbox_ns, "sandbox")?;
        removed?;
        create_veth(&nl, spec, host_ns)?;
    }
    add_address(&nl, "eth0", spec.address, spec.prefix)?;
    set_up(&nl, "eth0")?;
    add_default_route(&nl, "eth0", spec.gateway)?;
    // The host end: configured from the host's namespace.
    enter(host_ns, "host")?;
    let host = (|| {
        let nl = Netlink::open()?;
        add_address(&nl, &spec.host_if, spec.gateway, spec.prefix)?;
        set_up(&nl, &spec.host_if)?;
        // Sandboxes reach nothing through the host end but the proxy and
        // resolver the firewall redirects them to.
        write_sysctl(
            &format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", spec.host_if),
            "1",
        )
    })();
    enter(sandbox_ns, "sandbox")?;
    host
}

fn enter(ns: &OwnedFd, which: &str) -> Result<()> {
    sandstone_sys::process::setns(ns.as_fd(), libc::CLONE_NEWNET)
        .step(|| format!("enter the {which} network namespace"))
}

/// An fd of the calling thread's network namespace.
pub fn current_ns() -> Result<OwnedFd> {
    std::fs::File::open("/proc/thread-self/ns/net")
        .map(OwnedFd::from)
        .map_err(|e| Error::sys("open network namespace", e))
}
