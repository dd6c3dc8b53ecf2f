//! TCP-MD5 signatures (RFC 2385) on a session's TCP connection, as ToR routers commonly
//! require: the key is set for the peer's address on the socket before it connects.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use tokio::net::{TcpSocket, TcpStream};

/// The kernel's `struct tcp_md5sig` (linux/tcp.h): the peer address as a sockaddr_storage,
/// flags and prefix length (unused: an exact address), key length, interface, key.
#[repr(C)]
struct Md5Sig {
    addr: [u8; 128],
    flags: u8,
    prefix_len: u8,
    key_len: u16,
    ifindex: i32,
    key: [u8; 80],
}

/// Sets `key` for connections with `peer` on `fd` (an empty key removes it).
pub fn set_key(fd: &impl AsRawFd, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > 80 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP-MD5 keys are at most 80 bytes",
        ));
    }
    let mut sig = Md5Sig {
        addr: [0; 128],
        flags: 0,
        prefix_len: 0,
        key_len: key.len() as u16,
        ifindex: 0,
        key: [0; 80],
    };
    sig.key[..key.len()].copy_from_slice(key);
    match peer {
        IpAddr::V4(a) => {
            sig.addr[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            sig.addr[4..8].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            sig.addr[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            sig.addr[8..24].copy_from_slice(&a.octets());
        }
    }
    // SAFETY: `sig` is a properly sized, initialised tcp_md5sig that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&sig as *const Md5Sig).cast(),
            std::mem::size_of::<Md5Sig>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Connects to `peer`, signing the connection when a password is given, with GTSM (RFC 5082)
/// when `gtsm`.
pub async fn connect(
    peer: SocketAddr,
    password: Option<&str>,
    gtsm: bool,
) -> io::Result<TcpStream> {
    let sock = match peer {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if gtsm {
        crate::gtsm::protect(&sock, peer.is_ipv6())?;
    }
    if let Some(p) = password {
        set_key(&sock, peer.ip(), p.as_bytes())?;
    }
    let stream = sock.connect(peer).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
