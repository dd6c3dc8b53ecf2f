//! A BGP injector for benchmarks: a whole table encoded before the session starts, then written
//! to the receiver in one go, so that the receiver, not the sender, sets the pace.
//!
//! The table is packed as a router sends a full table: every prefix shares one set of path
//! attributes, so each UPDATE carries as many NLRI as fit in RFC 4271's 4,096 bytes, and the
//! table ends with End-of-RIB (RFC 4724 §2). The session side is the least a real peer does:
//! OPEN with 4-octet AS (RFC 6793) and multiprotocol IPv4 unicast (RFC 4760), KEEPALIVE to
//! confirm, keepalives at a third of the negotiated hold time until told to stop, and a
//! NOTIFICATION (Cease) if the receiver breaks the session.
//!
//! The encoding is twill_bgp's own ([`twill_bgp::message::encode`]); this module only decides
//! how many prefixes go in each message.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twill_bgp::attribute::{Attributes, Origin, Segment, AS_SEQUENCE};
use twill_bgp::message::{self, Message, HEADER_LEN, MAX_LEN};
use twill_bgp::notification::Notification;
use twill_bgp::open::{Capability, Open, AFI_IPV4, SAFI_UNICAST};
use twill_bgp::update::Update;

/// Where the injected table lives: 10.0.0.0/7, one /24 after another.
pub const TABLE_RANGE: &str = "10.0.0.0/7";

/// The most /24s [`TABLE_RANGE`] holds.
pub const MAX_PREFIXES: u32 = 1 << 17;

/// The `n` prefixes of the injected table: 10.0.0.0/24, 10.0.1.0/24, … (at most
/// [`MAX_PREFIXES`]).
pub fn table(n: u32) -> Result<Vec<Ipv4Net>> {
    if n > MAX_PREFIXES {
        bail!("at most {MAX_PREFIXES} /24s fit in {TABLE_RANGE}, not {n}");
    }
    (0..n)
        .map(|i| {
            Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24)
                .context("a /24 is a valid prefix length")
        })
        .collect()
}

/// The path attributes every injected route shares, as an eBGP neighbour in `asn` sends them:
/// ORIGIN IGP, AS_PATH `asn`, NEXT_HOP `next_hop` (its own address), and no LOCAL_PREF, which
/// is not sent over eBGP (RFC 4271 §5.1.5).
pub fn ebgp_attributes(asn: u32, next_hop: Ipv4Addr) -> Attributes {
    Attributes {
        origin: Some(Origin::Igp),
        as_path: Some(vec![Segment {
            kind: AS_SEQUENCE,
            asns: vec![asn],
        }]),
        next_hop: Some(next_hop),
        ..Default::default()
    }
}

/// A table encoded as it goes on the wire: UPDATEs, then End-of-RIB.
#[derive(Debug)]
pub struct Packed {
    pub bytes: Vec<u8>,
    /// UPDATEs carrying prefixes (End-of-RIB not counted).
    pub updates: usize,
    pub prefixes: usize,
}

/// Bytes a prefix takes in an NLRI field: its length, then the octets its length covers.
fn nlri_len(p: &Ipv4Net) -> usize {
    1 + usize::from(p.prefix_len()).div_ceil(8)
}

/// Packs `prefixes` (in order) into UPDATEs sharing `attrs`, each filled to the 4,096-byte
/// limit before the next starts, then End-of-RIB. `four`: 4-octet AS numbers were negotiated.
pub fn pack(prefixes: &[Ipv4Net], attrs: &Attributes, four: bool) -> Result<Packed> {
    // Header, the two length fields, the attributes: what every UPDATE carries besides NLRI.
    let mut a = Vec::new();
    twill_bgp::attribute::encode(attrs, four, &mut a);
    let fixed = HEADER_LEN + 4 + a.len();
    let room = MAX_LEN
        .checked_sub(fixed)
        .filter(|r| *r >= 5)
        .with_context(|| format!("{} bytes of attributes leave no room for NLRI", a.len()))?;
    let mut out = Packed {
        bytes: Vec::with_capacity(prefixes.len() * 5 + prefixes.len() / 800 * fixed + 64),
        updates: 0,
        prefixes: 0,
    };
    let mut rest = prefixes;
    while !rest.is_empty() {
        let mut used = 0;
        let take = rest
            .iter()
            .take_while(|p| {
                used += nlri_len(p);
                used <= room
            })
            .count();
        let (chunk, after) = rest.split_at(take);
        let m = message::encode(
            &Message::Update(Box::new(Update {
                attrs: attrs.clone(),
                nlri: chunk.to_vec(),
                ..Default::default()
            })),
            four,
        );
        if m.len() > MAX_LEN {
            bail!("an UPDATE of {} bytes (limit {MAX_LEN})", m.len());
        }
        out.bytes.extend_from_slice(&m);
        out.updates += 1;
        out.prefixes += chunk.len();
        rest = after;
    }
    out.bytes
        .extend_from_slice(&message::encode(&Message::Update(Box::default()), four));
    Ok(out)
}

/// Who the injector is and whom it sends to.
#[derive(Clone, Debug)]
pub struct Injector {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// The receiver, port 179.
    pub peer: Ipv4Addr,
    /// Proposed in the OPEN; the session uses the smaller of both sides'.
    pub hold_time: u16,
}

/// When the table went out, by the injector's clock.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    /// Just before the first byte of the first UPDATE was written.
    pub first_byte: Instant,
    /// The last byte was taken by the kernel (the write returned).
    pub written: Duration,
    /// The receiver's TCP had acknowledged every byte (the send queue was empty), from
    /// `first_byte`: how soon the receiver read it all. `None` if not seen before the stop.
    pub acked: Option<Duration>,
    pub bytes: usize,
    pub updates: usize,
}

/// How long connecting is retried while the receiver is not listening yet.
const CONNECT_WITHIN: Duration = Duration::from_secs(30);

/// Connects to the receiver (retrying while nothing listens), brings the session up, writes
/// `table` (encoded by [`pack`] for 4-octet AS numbers), reports the times on `sent`, and keeps
/// the session up until `stop` fires or the receiver closes it. Run it in the injector's
/// namespace.
pub async fn run(
    inj: Injector,
    table: Vec<Ipv4Net>,
    sent: std::sync::mpsc::Sender<Sent>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<()> {
    let attrs = ebgp_attributes(inj.local_as, inj.router_id);
    let addr = SocketAddr::from((inj.peer, 179));
    let deadline = Instant::now() + CONNECT_WITHIN;
    let mut s = loop {
        match TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connect to {addr}")),
        }
    };
    s.set_nodelay(true)?;
    let open = Open {
        asn: inj.local_as,
        hold_time: inj.hold_time,
        bgp_id: inj.router_id,
        capabilities: vec![
            Capability::Multiprotocol {
                afi: AFI_IPV4,
                safi: SAFI_UNICAST,
            },
            Capability::FourOctetAs(inj.local_as),
        ],
    };
    s.write_all(&message::encode(&Message::Open(open), false))
        .await?;
    let mut buf = Vec::with_capacity(8192);
    let theirs = match next_message(&mut s, &mut buf, false).await? {
        Message::Open(o) => o,
        other => bail!("{addr} answered the OPEN with {other:?}"),
    };
    let four = theirs.four_octet_as();
    let hold = inj.hold_time.min(theirs.hold_time);
    // Encoded before the timing starts; most receivers negotiate 4-octet AS numbers.
    let packed = pack(&table, &attrs, four)?;
    s.write_all(&message::encode(&Message::Keepalive, four))
        .await?;
    // OpenConfirm: the receiver's KEEPALIVE establishes the session (RFC 4271 §8.2.2).
    match next_message(&mut s, &mut buf, four).await? {
        Message::Keepalive => {}
        Message::Notification(n) => bail!("{addr} refused the session: {n:?}"),
        other => bail!("{addr} sent {other:?} before confirming the session"),
    }
    let first_byte = Instant::now();
    s.write_all(&packed.bytes).await?;
    let written = first_byte.elapsed();
    let mut report = Sent {
        first_byte,
        written,
        acked: None,
        bytes: packed.bytes.len(),
        updates: packed.updates,
    };
    let keepalive = Duration::from_secs(u64::from(hold / 3).max(1));
    let mut ka = tokio::time::interval_at((Instant::now() + keepalive).into(), keepalive);
    let mut acked_check = tokio::time::interval(Duration::from_millis(1));
    let mut reported = false;
    let (mut rd, mut wr) = s.into_split();
    let mut chunk = vec![0u8; 65536];
    let result = loop {
        tokio::select! {
            _ = &mut stop => break Ok(()),
            _ = ka.tick() => {
                wr.write_all(&message::encode(&Message::Keepalive, four)).await?;
            }
            _ = acked_check.tick(), if !reported => {
                if unacked(wr.as_ref())? == 0 {
                    report.acked = Some(first_byte.elapsed());
                    let _ = sent.send(report);
                    reported = true;
                } else if first_byte.elapsed() > Duration::from_secs(60) {
                    let _ = sent.send(report);
                    reported = true;
                }
            }
            r = rd.read(&mut chunk) => match r {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    let mut closed = false;
                    while let Some((m, used)) = message::decode(&buf, four)
                        .map_err(|e| anyhow::anyhow!("from {addr}: {}", e.reason))?
                    {
                        buf.drain(..used);
                        // A receiver being stopped says goodbye; the session is over.
                        closed |= matches!(m, Message::Notification(_));
                    }
                    if closed {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e).with_context(|| format!("reading from {addr}")),
            },
        }
    };
    if !reported {
        let _ = sent.send(report);
    }
    // Cease / Administrative Shutdown (RFC 4486), then close.
    let bye = Message::Notification(Notification::new(6, 2, Vec::new()));
    let _ = wr.write_all(&message::encode(&bye, four)).await;
    result
}

/// Bytes written and not yet acknowledged by the peer (SIOCOUTQ).
fn unacked(s: &TcpStream) -> Result<i32> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: a valid socket fd and a pointer to an int, as TIOCOUTQ expects.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) } != 0 {
        return Err(std::io::Error::last_os_error()).context("ioctl TIOCOUTQ");
    }
    Ok(n)
}

/// Reads until one whole message is in `buf`; returns it and drops its bytes.
async fn next_message(s: &mut TcpStream, buf: &mut Vec<u8>, four: bool) -> Result<Message> {
    let within = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((m, used)) =
            message::decode(buf, four).map_err(|e| anyhow::anyhow!("{}", e.reason))?
        {
            buf.drain(..used);
            return Ok(m);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(within, s.read(&mut chunk))
            .await
            .context("no message from the receiver within 30 s")??;
        if n == 0 {
            bail!("the receiver closed the connection");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(bytes: &[u8]) -> Vec<(usize, Update)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let (m, used) = message::decode(&bytes[at..], true)
                .expect("decodes")
                .expect("whole");
            match m {
                Message::Update(u) => out.push((used, *u)),
                other => panic!("{other:?}"),
            }
            at += used;
        }
        out
    }

    #[test]
    fn a_packed_table_decodes_to_every_prefix_once_in_order_then_end_of_rib() {
        let prefixes = table(100_000).unwrap();
        let attrs = ebgp_attributes(65000, "192.0.2.200".parse().unwrap());
        let p = pack(&prefixes, &attrs, true).unwrap();
        let got = messages(&p.bytes);
        let (_, last) = got.last().unwrap();
        assert!(last.is_end_of_rib());
        let mut nlri = Vec::new();
        for (len, u) in &got[..got.len() - 1] {
            assert!(*len <= MAX_LEN, "{len} bytes");
            assert_eq!(u.attrs, attrs);
            assert!(u.withdrawn.is_empty());
            nlri.extend(u.nlri.iter().copied());
        }
        assert_eq!(nlri, prefixes);
        assert_eq!((p.updates, p.prefixes), (got.len() - 1, 100_000));
    }

    #[test]
    fn every_update_but_the_last_is_full() {
        let prefixes = table(5_000).unwrap();
        let attrs = ebgp_attributes(65000, "192.0.2.200".parse().unwrap());
        let p = pack(&prefixes, &attrs, true).unwrap();
        let got = messages(&p.bytes);
        let updates = &got[..got.len() - 1];
        for (len, _) in &updates[..updates.len() - 1] {
            // A /24 takes 4 bytes: a full message has fewer than 4 bytes left.
            assert!(MAX_LEN - len < 4, "{len} bytes");
        }
        // 4,096 − 19 − 4 − 20 bytes of attributes = 4,053: 1,013 /24s per UPDATE.
        assert_eq!(updates[0].1.nlri.len(), 1013);
        assert_eq!(p.updates, 5_000usize.div_ceil(1013));
    }

    #[test]
    fn two_octet_sessions_get_the_short_as_path() {
        let attrs = ebgp_attributes(65000, "192.0.2.200".parse().unwrap());
        let p = pack(&table(3).unwrap(), &attrs, false).unwrap();
        let (m, _) = message::decode(&p.bytes, false).unwrap().unwrap();
        let Message::Update(u) = m else {
            panic!("{m:?}")
        };
        assert_eq!(u.attrs, attrs);
        assert_eq!(u.nlri.len(), 3);
    }

    #[test]
    fn the_table_stays_inside_its_range() {
        let range: Ipv4Net = TABLE_RANGE.parse().unwrap();
        let t = table(MAX_PREFIXES).unwrap();
        assert!(t.iter().all(|p| range.contains(p)));
        assert_eq!(t[1].to_string(), "10.0.1.0/24");
        assert_eq!(t[65_536].to_string(), "11.0.0.0/24");
        let distinct: std::collections::BTreeSet<_> = t.iter().collect();
        assert_eq!(distinct.len(), t.len());
        assert!(table(MAX_PREFIXES + 1).is_err());
    }

    #[test]
    fn an_empty_table_is_end_of_rib_alone() {
        let attrs = ebgp_attributes(65000, "192.0.2.200".parse().unwrap());
        let p = pack(&[], &attrs, true).unwrap();
        assert_eq!(p.updates, 0);
        assert_eq!(p.bytes.len(), HEADER_LEN + 4);
    }
}
