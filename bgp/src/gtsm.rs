//! The Generalized TTL Security Mechanism (RFC 5082) for directly connected peers: we send
//! with TTL 255, and the kernel drops whatever arrives with less than 254, which no sender
//! more than one hop away can forge.

use std::io;
use std::os::fd::AsRawFd;

/// What a one-hop peer's packets carry at least.
const MIN_TTL: libc::c_int = 254;

fn set(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: an int option, passed by pointer with its size; `value` outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Turns GTSM on for a socket of family `v6`, before it connects or as soon as it is accepted.
pub fn protect(fd: &impl AsRawFd, v6: bool) -> io::Result<()> {
    send_255(fd, v6)?;
    if v6 {
        set(fd, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, MIN_TTL)
    } else {
        set(fd, libc::IPPROTO_IP, libc::IP_MINTTL, MIN_TTL)
    }
}

/// Sends with TTL 255 only: for a listening socket, whose SYN-ACKs must reach a GTSM peer that
/// connects in, while peers without GTSM must still be heard (no minimum there).
pub fn send_255(fd: &impl AsRawFd, v6: bool) -> io::Result<()> {
    if v6 {
        set(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 255)
    } else {
        set(fd, libc::IPPROTO_IP, libc::IP_TTL, 255)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(fd: &impl AsRawFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: reading an int option into a properly sized buffer.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        v
    }

    #[test]
    fn a_protected_socket_sends_255_and_takes_254_or_more() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
        protect(&s, false).expect("GTSM on");
        assert_eq!(get(&s, libc::IPPROTO_IP, libc::IP_TTL), 255);
        assert_eq!(get(&s, libc::IPPROTO_IP, libc::IP_MINTTL), 254);
    }
}
