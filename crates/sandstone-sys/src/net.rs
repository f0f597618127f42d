//! Sockets: netlink, socket options, interfaces.

use crate::{cvt, owned};
use std::ffi::CStr;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// A close-on-exec NETLINK_ROUTE socket in the calling thread's network
/// namespace.
pub fn netlink_route_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers; the result is checked and owned.
    owned(
        unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        }
        .into(),
    )
}

/// send(2) of `buf`; the number of bytes sent.
pub fn send(sock: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, live for the call.
    let n = cvt(unsafe { libc::send(sock.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) })?;
    Ok(n as usize)
}

/// recv(2) into `buf`; the number of bytes received.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, live and exclusively
    // borrowed for the call.
    let n = cvt(unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })?;
    Ok(n as usize)
}

/// Whether a connected stream socket has nothing to read and its peer
/// has not closed: what a connection kept between requests must be before
/// it is used again (a byte, an end of input or an error says otherwise).
pub fn is_quiet(sock: BorrowedFd<'_>) -> bool {
    let mut byte = 0u8;
    // SAFETY: the pointer and length describe `byte`, live and exclusively
    // borrowed for the call; MSG_PEEK leaves the data (if any) queued.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

fn setsockopt<T>(
    sock: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe `value`, live for the call;
    // each caller passes the type the option expects.
    cvt(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Bounds how long a receive on `sock` waits (SO_RCVTIMEO).
pub fn set_recv_timeout(sock: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    setsockopt(sock, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
}

/// Makes the coming close of `sock` a reset (SO_LINGER with a zero
/// timeout), which never blocks.
pub fn set_reset_on_close(sock: BorrowedFd<'_>) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(sock, libc::SOL_SOCKET, libc::SO_LINGER, &l)
}

/// Where a connection redirected by the firewall (iptables REDIRECT) was
/// going (SO_ORIGINAL_DST).
pub fn original_dst(sock: BorrowedFd<'_>) -> io::Result<SocketAddrV4> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: sockaddr_in is plain data for which all zeroes is a value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` is a live sockaddr_in of the length given, which the
    // kernel writes (an IPv4 address for this option).
    cvt(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    })?;
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

/// Shuts a socket down: `Write`, and its peer reads the end of file;
/// `Both`, and a thread blocked reading or writing it wakes as well.
pub fn shutdown(sock: BorrowedFd<'_>, how: std::net::Shutdown) -> io::Result<()> {
    let how = match how {
        std::net::Shutdown::Read => libc::SHUT_RD,
        std::net::Shutdown::Write => libc::SHUT_WR,
        std::net::Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: shutdown takes a descriptor we borrow and no pointers.
    cvt(unsafe { libc::shutdown(sock.as_raw_fd(), how) })?;
    Ok(())
}

/// The index of the interface `name` (ENODEV when there is none).
pub fn interface_index(name: &CStr) -> io::Result<u32> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// Every IPv4 address of the host's interfaces (in the caller's network
/// namespace), with its interface's name.
pub fn ipv4_addresses() -> io::Result<Vec<(String, Ipv4Addr)>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `list` is a live pointer getifaddrs sets to a list it
    // allocates, freed below.
    cvt(unsafe { libc::getifaddrs(&mut list) })?;
    let mut out = Vec::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null entry of the list, valid until
        // freeifaddrs below.
        let entry = unsafe { &*cur };
        let family = match entry.ifa_addr.is_null() {
            true => None,
            // SAFETY: a non-null ifa_addr points at a sockaddr of the
            // list, whose family field every sockaddr has.
            false => Some(i32::from(unsafe { (*entry.ifa_addr).sa_family })),
        };
        if family == Some(libc::AF_INET) {
            // SAFETY: an AF_INET address is a sockaddr_in, and getifaddrs
            // gives every entry a NUL-terminated name; both live until
            // freeifaddrs below and are copied out here.
            let (sin, name) = unsafe {
                (
                    &*(entry.ifa_addr as *const libc::sockaddr_in),
                    CStr::from_ptr(entry.ifa_name),
                )
            };
            out.push((
                name.to_string_lossy().into_owned(),
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
            ));
        }
        cur = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs, is freed once, and nothing
    // borrowed from it outlives this call.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found() {
        assert!(interface_index(c"lo").expect("lo") > 0);
        let err = interface_index(c"no-such-if0").expect_err("missing");
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
        let addrs = ipv4_addresses().expect("getifaddrs");
        assert!(addrs.contains(&("lo".into(), Ipv4Addr::LOCALHOST)));
    }
}
