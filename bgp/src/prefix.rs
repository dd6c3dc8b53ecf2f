//! NLRI prefixes as encoded on the wire: a length in bits, then only the bytes it needs.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// Why a prefix field could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrefixError {
    TooLong(u8),
    Truncated,
}

pub fn decode_v4(buf: &[u8]) -> Result<(Ipv4Net, usize), PrefixError> {
    let (&len, rest) = buf.split_first().ok_or(PrefixError::Truncated)?;
    if len > 32 {
        return Err(PrefixError::TooLong(len));
    }
    let n = (len as usize).div_ceil(8);
    let bytes = rest.get(..n).ok_or(PrefixError::Truncated)?;
    let mut a = [0u8; 4];
    a[..n].copy_from_slice(bytes);
    let net = Ipv4Net::new(Ipv4Addr::from(a), len).map_err(|_| PrefixError::TooLong(len))?;
    // Host bits set on the wire are ignored, as every implementation does.
    Ok((net.trunc(), 1 + n))
}

pub fn decode_v6(buf: &[u8]) -> Result<(Ipv6Net, usize), PrefixError> {
    let (&len, rest) = buf.split_first().ok_or(PrefixError::Truncated)?;
    if len > 128 {
        return Err(PrefixError::TooLong(len));
    }
    let n = (len as usize).div_ceil(8);
    let bytes = rest.get(..n).ok_or(PrefixError::Truncated)?;
    let mut a = [0u8; 16];
    a[..n].copy_from_slice(bytes);
    let net = Ipv6Net::new(Ipv6Addr::from(a), len).map_err(|_| PrefixError::TooLong(len))?;
    Ok((net.trunc(), 1 + n))
}

pub fn decode_all_v4(mut buf: &[u8]) -> Result<Vec<Ipv4Net>, PrefixError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (p, used) = decode_v4(buf)?;
        out.push(p);
        buf = &buf[used..];
    }
    Ok(out)
}

pub fn decode_all_v6(mut buf: &[u8]) -> Result<Vec<Ipv6Net>, PrefixError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (p, used) = decode_v6(buf)?;
        out.push(p);
        buf = &buf[used..];
    }
    Ok(out)
}

pub fn encode_v4(p: &Ipv4Net, out: &mut Vec<u8>) {
    let n = (p.prefix_len() as usize).div_ceil(8);
    out.push(p.prefix_len());
    out.extend_from_slice(&p.network().octets()[..n]);
}

pub fn encode_v6(p: &Ipv6Net, out: &mut Vec<u8>) {
    let n = (p.prefix_len() as usize).div_ceil(8);
    out.push(p.prefix_len());
    out.extend_from_slice(&p.network().octets()[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_use_only_the_bytes_they_need() {
        let mut b = Vec::new();
        encode_v4(&"10.244.3.0/24".parse().unwrap(), &mut b);
        encode_v4(&"0.0.0.0/0".parse().unwrap(), &mut b);
        encode_v4(&"192.0.2.1/32".parse().unwrap(), &mut b);
        assert_eq!(b, [24, 10, 244, 3, 0, 32, 192, 0, 2, 1]);
        let got = decode_all_v4(&b).unwrap();
        assert_eq!(got[0].to_string(), "10.244.3.0/24");
        assert_eq!(got[1].to_string(), "0.0.0.0/0");
        assert_eq!(got[2].to_string(), "192.0.2.1/32");
        let mut b6 = Vec::new();
        encode_v6(&"fd00:10:244:7::/64".parse().unwrap(), &mut b6);
        assert_eq!(b6, [64, 0xfd, 0, 0, 0x10, 2, 0x44, 0, 7]);
        assert_eq!(
            decode_all_v6(&b6).unwrap()[0].to_string(),
            "fd00:10:244:7::/64"
        );
    }

    #[test]
    fn bad_prefixes_are_errors() {
        assert_eq!(
            decode_v4(&[33, 1, 2, 3, 4, 5]),
            Err(PrefixError::TooLong(33))
        );
        assert_eq!(decode_v4(&[24, 10, 244]), Err(PrefixError::Truncated));
        assert_eq!(decode_v6(&[129]), Err(PrefixError::TooLong(129)));
        assert_eq!(decode_v4(&[]), Err(PrefixError::Truncated));
    }
}
