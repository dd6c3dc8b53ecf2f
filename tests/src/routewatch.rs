//! Watching a namespace's main routing table fill up, for benchmarks: the kernel announces every
//! route added or removed on the RTNLGRP_IPV4_ROUTE multicast group (rtnetlink(7)), so the
//! moment the last route of a table lands is seen as it happens, without dumping 100,000
//! routes over and over. Should the socket overflow (ENOBUFS: notifications were lost), the
//! count comes from dumps instead, and the figure says so.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTA_DST: u16 = 1;
const RTA_TABLE: u16 = 15;
const MAIN_TABLE: u32 = 254;
const NLMSG_HDRLEN: usize = 16;
const RTMSG_LEN: usize = 12;

/// One route message, as much of it as counting needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteEvent {
    pub added: bool,
    pub dst: Ipv4Net,
    pub protocol: u8,
    pub table: u32,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// What a buffer of netlink messages says about IPv4 routes; `done`: it ended a dump. Messages
/// of other kinds are skipped, a truncated one ends the buffer.
pub fn parse(buf: &[u8]) -> Result<(Vec<RouteEvent>, bool)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let (Some(len), Some(kind)) = (u32_at(buf, at), u16_at(buf, at + 4)) else {
            break;
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        let msg = &buf[at + NLMSG_HDRLEN..at + len];
        match kind {
            NLMSG_DONE => return Ok((out, true)),
            NLMSG_ERROR => {
                let code = msg.get(..4).and_then(|b| u32_at(b, 0)).unwrap_or(0) as i32;
                if code != 0 {
                    bail!("netlink error {}", std::io::Error::from_raw_os_error(-code));
                }
            }
            RTM_NEWROUTE | RTM_DELROUTE
                if msg.len() >= RTMSG_LEN && msg[0] == libc::AF_INET as u8 =>
            {
                let (dst_len, protocol) = (msg[1], msg[5]);
                let mut table = u32::from(msg[4]);
                let mut dst = Ipv4Addr::UNSPECIFIED;
                let mut a = RTMSG_LEN;
                while a + 4 <= msg.len() {
                    let (Some(alen), Some(akind)) = (u16_at(msg, a), u16_at(msg, a + 2)) else {
                        break;
                    };
                    let alen = alen as usize;
                    if alen < 4 || a + alen > msg.len() {
                        break;
                    }
                    let v = &msg[a + 4..a + alen];
                    match akind {
                        RTA_DST if v.len() == 4 => dst = Ipv4Addr::new(v[0], v[1], v[2], v[3]),
                        RTA_TABLE if v.len() == 4 => table = u32_at(v, 0).unwrap_or(table),
                        _ => {}
                    }
                    a += alen.next_multiple_of(4);
                }
                if let Ok(dst) = Ipv4Net::new(dst, dst_len) {
                    out.push(RouteEvent {
                        added: kind == RTM_NEWROUTE,
                        dst,
                        protocol,
                        table,
                    });
                }
            }
            _ => {}
        }
        at += len.next_multiple_of(4);
    }
    Ok((out, false))
}

fn socket(groups: u32) -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("netlink socket");
    }
    // SAFETY: fd was just returned by socket(2) and is ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = groups;
    // SAFETY: a valid fd and a sockaddr_nl of the size given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("bind netlink socket");
    }
    // 100,000 notifications take tens of megabytes of socket buffer if the reader falls
    // behind; root may go past rmem_max.
    let size: libc::c_int = 256 << 20;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: valid fd, option values of the sizes given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    Ok(fd)
}

/// Reads one datagram; `Ok(None)` on the receive timeout.
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    // SAFETY: a valid fd and a buffer of the length given.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(n as usize))
}

/// Which routes count: IPv4, main table, protocol `protocol`, inside `range`.
#[derive(Clone, Copy, Debug)]
pub struct Filter {
    pub protocol: u8,
    pub range: Ipv4Net,
}

impl Filter {
    fn counts(&self, e: &RouteEvent) -> bool {
        e.table == MAIN_TABLE && e.protocol == self.protocol && self.range.contains(&e.dst)
    }
}

/// How many routes the namespace of the calling thread has that `f` counts, from a dump.
pub fn dump_count(f: Filter) -> Result<usize> {
    let fd = socket(0)?;
    let mut req = Vec::with_capacity(NLMSG_HDRLEN + RTMSG_LEN);
    req.extend_from_slice(&((NLMSG_HDRLEN + RTMSG_LEN) as u32).to_ne_bytes());
    req.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    let mut rt = [0u8; RTMSG_LEN];
    rt[0] = libc::AF_INET as u8;
    req.extend_from_slice(&rt);
    // SAFETY: a valid fd and the request buffer.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error()).context("netlink dump request");
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    let started = Instant::now();
    loop {
        let Some(len) = recv(&fd, &mut buf)? else {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("route dump did not end within 30 s");
            }
            continue;
        };
        let (events, done) = parse(&buf[..len])?;
        n += events.iter().filter(|e| f.counts(e)).count();
        if done {
            return Ok(n);
        }
    }
}

/// When the routes arrived.
#[derive(Clone, Copy, Debug)]
pub struct Filled {
    pub first: Instant,
    pub all: Instant,
    /// Notifications were lost; `all` comes from dumps this far apart at worst.
    pub dumped_every: Option<Duration>,
}

/// Watches the namespace of the calling thread until `n` routes that `f` counts are there or
/// `stop` says to give up (it is polled every 50 ms); subscribed before it returns `ready`.
pub fn watch(
    f: Filter,
    n: usize,
    ready: std::sync::mpsc::Sender<()>,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Filled> {
    use std::sync::atomic::Ordering;
    let fd = socket(RTMGRP_IPV4_ROUTE)?;
    let already = dump_count(f)?;
    if already != 0 {
        bail!("{already} routes of the table are in the kernel before the round");
    }
    let _ = ready.send(());
    let mut seen: HashSet<Ipv4Net> = HashSet::with_capacity(n);
    let mut first = None;
    let mut buf = vec![0u8; 1 << 20];
    while !stop.load(Ordering::Relaxed) {
        let len = match recv(&fd, &mut buf) {
            Ok(Some(len)) => len,
            Ok(None) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                return by_dumps(f, n, first.unwrap_or_else(Instant::now), stop);
            }
            Err(e) => return Err(e).context("reading route notifications"),
        };
        let (events, _) = parse(&buf[..len])?;
        for e in events.iter().filter(|e| f.counts(e)) {
            if e.added {
                first.get_or_insert_with(Instant::now);
                seen.insert(e.dst);
            } else {
                seen.remove(&e.dst);
            }
        }
        if seen.len() >= n {
            let all = Instant::now();
            return Ok(Filled {
                first: first.unwrap_or(all),
                all,
                dumped_every: None,
            });
        }
    }
    bail!(
        "{} of {n} routes in the kernel when told to stop",
        seen.len()
    )
}

fn by_dumps(
    f: Filter,
    n: usize,
    first: Instant,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Filled> {
    let mut worst = Duration::ZERO;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let t = Instant::now();
        let c = dump_count(f)?;
        worst = worst.max(t.elapsed());
        if c >= n {
            return Ok(Filled {
                first,
                all: Instant::now(),
                dumped_every: Some(worst),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("not every route in the kernel when told to stop")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_msg(kind: u16, dst: [u8; 4], len: u8, proto: u8, table: u32) -> Vec<u8> {
        let mut body = vec![libc::AF_INET as u8, len, 0, 0, 254, proto, 0, 1, 0, 0, 0, 0];
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&RTA_TABLE.to_ne_bytes());
        body.extend_from_slice(&table.to_ne_bytes());
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&RTA_DST.to_ne_bytes());
        body.extend_from_slice(&dst);
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn route_messages_give_their_destination_protocol_and_table() {
        let mut buf = route_msg(RTM_NEWROUTE, [10, 0, 7, 0], 24, 12, 254);
        buf.extend(route_msg(RTM_DELROUTE, [10, 1, 0, 0], 24, 151, 100));
        let (events, done) = parse(&buf).unwrap();
        assert!(!done);
        assert_eq!(
            events,
            [
                RouteEvent {
                    added: true,
                    dst: "10.0.7.0/24".parse().unwrap(),
                    protocol: 12,
                    table: 254
                },
                RouteEvent {
                    added: false,
                    dst: "10.1.0.0/24".parse().unwrap(),
                    protocol: 151,
                    table: 100
                }
            ]
        );
        let f = Filter {
            protocol: 12,
            range: "10.0.0.0/7".parse().unwrap(),
        };
        assert!(f.counts(&events[0]));
        assert!(!f.counts(&events[1]));
    }

    #[test]
    fn a_dump_ends_at_done_and_a_truncated_message_ends_the_buffer() {
        let mut buf = route_msg(RTM_NEWROUTE, [10, 0, 7, 0], 24, 12, 254);
        let mut done = Vec::new();
        done.extend_from_slice(&20u32.to_ne_bytes());
        done.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        done.extend_from_slice(&[0; 14]);
        buf.extend(&done);
        let (events, done) = parse(&buf).unwrap();
        assert_eq!((events.len(), done), (1, true));
        let cut = route_msg(RTM_NEWROUTE, [10, 0, 7, 0], 24, 12, 254);
        assert_eq!(parse(&cut[..30]).unwrap(), (vec![], false));
    }
}
