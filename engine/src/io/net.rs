//! Socket helpers every listener shares: one SO_REUSEPORT socket per worker
//! thread (the kernel spreads clients over them), and one spelling of a
//! peer's address.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

/// A socket of `kind` (stream or datagram) bound to `addr` with
/// SO_REUSEPORT, so each worker can bind its own to the same port. `[::]`
/// also takes IPv4; where IPv6 is off, it falls back to `0.0.0.0`.
pub fn reuseport_socket(addr: SocketAddr, kind: Type) -> io::Result<Socket> {
    let protocol = if kind == Type::DGRAM {
        Protocol::UDP
    } else {
        Protocol::TCP
    };
    let socket = match Socket::new(Domain::for_address(addr), kind, Some(protocol)) {
        Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => {
            let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
            return reuseport_socket(v4, kind).map_err(|_| e);
        }
        other => other?,
    };
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// `addr` with a v4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack
/// socket reports for an IPv4 peer) shown as IPv4, so one peer has one
/// address in limits, bans and swarms.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// The canonical address of the peer of a connected socket.
pub fn peer_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    let addr = socket2::SockRef::from(fd).peer_addr().ok()?.as_socket()?;
    Some(canonical(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_addresses_are_shown_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:6881".parse().unwrap();
        assert_eq!(canonical(mapped), "10.1.2.3:6881".parse().unwrap());
        let v6: SocketAddr = "[2001:db8::1]:6881".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[test]
    fn two_sockets_share_a_port() {
        let a = reuseport_socket("127.0.0.1:0".parse().unwrap(), Type::DGRAM).unwrap();
        let addr = a.local_addr().unwrap().as_socket().unwrap();
        let b = reuseport_socket(addr, Type::DGRAM).unwrap();
        assert_eq!(b.local_addr().unwrap().as_socket(), Some(addr));
    }
}
