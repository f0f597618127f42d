//! Whether an address belongs to this host, asked of the kernel at the
//! moment of a dial: an interface or address added after the daemon
//! started is as local as one it saw at start. One route lookup over
//! rtnetlink (`RTM_GETROUTE`) says how the host would deliver a packet to
//! the address; a local (or broadcast) route means the host itself.

use std::io::{Error, ErrorKind, Result};
use std::net::IpAddr;
use std::os::fd::AsFd;

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const RTA_DST: u16 = 1;
const RTN_LOCAL: u8 = 2;
const RTN_BROADCAST: u8 = 3;

/// The `RTM_GETROUTE` request for `ip`'s route.
fn request(ip: IpAddr) -> Vec<u8> {
    let (family, addr) = match ip {
        IpAddr::V4(v4) => (libc::AF_INET, v4.octets().to_vec()),
        IpAddr::V6(v6) => (libc::AF_INET6, v6.octets().to_vec()),
    };
    let len = 16 + 12 + 4 + addr.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
    // type, flags (u32).
    m.extend_from_slice(&[family as u8, (addr.len() * 8) as u8, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&((4 + addr.len()) as u16).to_ne_bytes());
    m.extend_from_slice(&RTA_DST.to_ne_bytes());
    m.extend_from_slice(&addr);
    m
}

/// Reads the kernel's answer: `Some(true)` for a local or broadcast route,
/// `Some(false)` for any other route or none, `None` if it is not an
/// answer to the request.
pub(crate) fn parse_reply(reply: &[u8]) -> Option<Result<bool>> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    match kind {
        RTM_NEWROUTE => {
            let route_type = *reply.get(16 + 7)?;
            Some(Ok(matches!(route_type, RTN_LOCAL | RTN_BROADCAST)))
        }
        NLMSG_ERROR => {
            let code = -i32::from_ne_bytes(reply.get(16..20)?.try_into().ok()?);
            match code {
                // No route at all: nowhere, and certainly not this host.
                libc::ENETUNREACH | libc::EHOSTUNREACH => Some(Ok(false)),
                code => Some(Err(Error::from_raw_os_error(code))),
            }
        }
        _ => None,
    }
}

/// Whether `ip` is an address of this host (in the caller's network
/// namespace), by the kernel's routing decision now.
pub fn is_local(ip: IpAddr) -> Result<bool> {
    use sandstone_sys::net;
    // `::ffff:a.b.c.d` reaches a.b.c.d: ask about that.
    let ip = ip.to_canonical();
    let fd = net::netlink_route_socket()?;
    // Without it a lost answer would hang the connection; setting it on a
    // fresh socket cannot fail.
    let _ = net::set_recv_timeout(fd.as_fd(), std::time::Duration::from_secs(1));
    net::send(fd.as_fd(), &request(ip))?;
    let mut reply = [0u8; 4096];
    loop {
        let n = net::recv(fd.as_fd(), &mut reply)?;
        if let Some(answer) = parse_reply(&reply[..n]) {
            return answer;
        }
        if n == 0 {
            return Err(Error::new(ErrorKind::UnexpectedEof, "no route answer"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_knows_its_own_addresses() {
        assert!(is_local("127.0.0.1".parse().unwrap()).unwrap());
        assert!(is_local("127.9.8.7".parse().unwrap()).unwrap());
        assert!(is_local("::ffff:127.0.0.1".parse().unwrap()).unwrap());
        // TEST-NET-3 (documentation) is no host's address; a lookup sends
        // nothing.
        assert!(!is_local("203.0.113.9".parse().unwrap()).unwrap());
    }

    #[test]
    fn replies_are_read_by_type() {
        let mut route = vec![0u8; 28];
        route[4..6].copy_from_slice(&RTM_NEWROUTE.to_ne_bytes());
        route[23] = RTN_LOCAL;
        assert!(parse_reply(&route).unwrap().unwrap());
        route[23] = 1; // unicast
        assert!(!parse_reply(&route).unwrap().unwrap());
        let mut err = vec![0u8; 36];
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::ENETUNREACH).to_ne_bytes());
        assert!(!parse_reply(&err).unwrap().unwrap());
        err[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert!(parse_reply(&err).unwrap().is_err());
        assert!(parse_reply(&[0u8; 3]).is_none());
    }
}
