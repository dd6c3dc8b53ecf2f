//! Byte-level tests of the BGP codec: exact encodings, round trips, header errors, and RFC 7606
//! handling of broken attributes. Plus: no input makes a decoder panic.

use proptest::prelude::*;
use twill_bgp::attribute::*;
use twill_bgp::message::{decode, encode, Message};
use twill_bgp::notification::Notification;
use twill_bgp::update::Update;

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut b = vec![0xff; 16];
    b.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    b.push(kind);
    b.extend_from_slice(body);
    b
}

/// An UPDATE body from raw attribute bytes and IPv4 NLRI bytes.
fn update_body(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0];
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    b
}

fn update(
    attrs: &[u8],
    nlri: &[u8],
    four: bool,
) -> Result<Update, twill_bgp::notification::DecodeError> {
    match decode(&frame(2, &update_body(attrs, nlri)), four)? {
        Some((Message::Update(u), _)) => Ok(*u),
        other => panic!("not an update: {other:?}"),
    }
}

const ORIGIN_IGP: [u8; 4] = [0x40, 1, 1, 0];
const PATH_65001_2: [u8; 7] = [0x40, 2, 4, 2, 1, 0xfd, 0xe9];
const NH: [u8; 7] = [0x40, 3, 4, 192, 0, 2, 1];
const NLRI: [u8; 4] = [24, 10, 244, 1];

fn good_attrs() -> Vec<u8> {
    [&ORIGIN_IGP[..], &PATH_65001_2, &NH].concat()
}

#[test]
fn keepalive_notification_and_route_refresh_bytes() {
    let k = encode(&Message::Keepalive, true);
    assert_eq!(k, frame(4, &[]));
    assert_eq!(decode(&k, true).unwrap(), Some((Message::Keepalive, 19)));
    assert_eq!(
        decode(&k[..18], true).unwrap(),
        None,
        "incomplete header waits for more"
    );

    let n = Message::Notification(Notification::new(6, 2, vec![]));
    assert_eq!(encode(&n, true), frame(3, &[6, 2]));
    assert_eq!(decode(&frame(3, &[6, 2]), true).unwrap(), Some((n, 21)));

    let rr = Message::RouteRefresh { afi: 1, safi: 1 };
    assert_eq!(encode(&rr, true), frame(5, &[0, 1, 0, 1]));
    assert_eq!(
        decode(&frame(5, &[0, 1, 0, 1]), true).unwrap(),
        Some((rr, 23))
    );
}

#[test]
fn header_errors_map_to_message_header_notifications() {
    let code = |b: &[u8]| {
        let e = decode(b, true).unwrap_err();
        (e.notification.code, e.notification.subcode)
    };
    let mut bad_marker = frame(4, &[]);
    bad_marker[3] = 0;
    assert_eq!(code(&bad_marker), (1, 1));
    let mut short = frame(4, &[]);
    short[17] = 18;
    assert_eq!(code(&short), (1, 2));
    assert_eq!(code(&frame(9, &[])), (1, 3));
    assert_eq!(
        code(&frame(4, &[0])),
        (1, 2),
        "a KEEPALIVE is exactly 19 bytes"
    );
    assert_eq!(
        code(&frame(5, &[0, 1, 0, 1, 0])).0,
        7,
        "ROUTE-REFRESH of the wrong length"
    );
}

#[test]
fn full_update_encodes_exactly_and_round_trips() {
    let u = Update {
        withdrawn: vec!["10.244.9.0/24".parse().unwrap()],
        attrs: Attributes {
            origin: Some(Origin::Igp),
            as_path: Some(vec![Segment {
                kind: AS_SEQUENCE,
                asns: vec![65001, 4_200_000_001],
            }]),
            next_hop: Some("192.0.2.1".parse().unwrap()),
            med: Some(10),
            local_pref: Some(100),
            atomic_aggregate: true,
            aggregator: Some((65001, "192.0.2.1".parse().unwrap())),
            communities: vec![0xfde9_0064],
            originator_id: Some("192.0.2.7".parse().unwrap()),
            cluster_list: vec!["192.0.2.100".parse().unwrap()],
            ..Default::default()
        },
        nlri: vec!["10.244.1.0/24".parse().unwrap()],
        withdraw_reason: None,
        discarded: vec![],
    };
    let bytes = encode(&Message::Update(Box::new(u.clone())), true);
    let attrs: Vec<u8> = vec![
        0x40, 1, 1, 0, // ORIGIN IGP
        0x40, 2, 10, 2, 2, 0, 0, 0xfd, 0xe9, 0xfa, 0x56, 0xea, 0x01, // AS_PATH, 4-octet
        0x40, 3, 4, 192, 0, 2, 1, // NEXT_HOP
        0x80, 4, 4, 0, 0, 0, 10, // MED
        0x40, 5, 4, 0, 0, 0, 100, // LOCAL_PREF
        0x40, 6, 0, // ATOMIC_AGGREGATE
        0xc0, 7, 8, 0, 0, 0xfd, 0xe9, 192, 0, 2, 1, // AGGREGATOR
        0xc0, 8, 4, 0xfd, 0xe9, 0, 0x64, // COMMUNITIES 65001:100
        0x80, 9, 4, 192, 0, 2, 7, // ORIGINATOR_ID
        0x80, 10, 4, 192, 0, 2, 100, // CLUSTER_LIST
    ];
    let mut body = vec![0, 4, 24, 10, 244, 9];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(&attrs);
    body.extend_from_slice(&NLRI);
    assert_eq!(bytes, frame(2, &body));
    assert_eq!(
        decode(&bytes, true).unwrap(),
        Some((Message::Update(Box::new(u)), bytes.len()))
    );
}

#[test]
fn two_octet_as_path_and_as4_path() {
    let u = update(&good_attrs(), &NLRI, false).unwrap();
    assert_eq!(
        u.attrs.as_path,
        Some(vec![Segment {
            kind: AS_SEQUENCE,
            asns: vec![65001]
        }])
    );
    let as4 = [0xc0, 17, 6, 2, 1, 0xfa, 0x56, 0xea, 0x01];
    let u = update(&[&good_attrs()[..], &as4].concat(), &NLRI, false).unwrap();
    assert_eq!(
        u.attrs.as4_path,
        Some(vec![Segment {
            kind: AS_SEQUENCE,
            asns: vec![4_200_000_001]
        }])
    );
}

#[test]
fn ipv6_in_mp_reach_and_unreach() {
    let u = Update {
        attrs: Attributes {
            origin: Some(Origin::Igp),
            as_path: Some(vec![]),
            mp_reach: Some(MpReach::V6 {
                next_hop: vec!["2001:db8::1".parse().unwrap()],
                nlri: vec!["fd00:10:244:1::/64".parse().unwrap()],
            }),
            mp_unreach: Some(MpUnreach::V6(vec!["fd00:10:244:9::/64".parse().unwrap()])),
            ..Default::default()
        },
        ..Default::default()
    };
    let bytes = encode(&Message::Update(Box::new(u.clone())), true);
    let mp_reach = [
        0x80, 14, 30, 0, 2, 1, 16, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0,
        64, 0xfd, 0, 0, 0x10, 2, 0x44, 0, 1,
    ];
    assert!(
        bytes.windows(mp_reach.len()).any(|w| w == mp_reach),
        "MP_REACH bytes: {bytes:?}"
    );
    assert_eq!(
        decode(&bytes, true).unwrap(),
        Some((Message::Update(Box::new(u)), bytes.len()))
    );
}

#[test]
fn end_of_rib_is_an_empty_update() {
    let u = update(&[], &[], true).unwrap();
    assert!(u.is_end_of_rib());
    assert!(!update(&good_attrs(), &NLRI, true).unwrap().is_end_of_rib());
}

#[test]
fn rfc7606_treat_as_withdraw() {
    let bad_origin = [&[0x40, 1, 1, 5][..], &PATH_65001_2, &NH].concat();
    let u = update(&bad_origin, &NLRI, false).unwrap();
    assert!(u
        .withdraw_reason
        .as_deref()
        .unwrap_or("")
        .contains("ORIGIN"));
    assert_eq!(
        u.withdrawn_v4(),
        vec!["10.244.1.0/24".parse().unwrap()],
        "the announcement is withdrawn"
    );

    let no_next_hop = [&ORIGIN_IGP[..], &PATH_65001_2].concat();
    let u = update(&no_next_hop, &NLRI, false).unwrap();
    assert!(u
        .withdraw_reason
        .as_deref()
        .unwrap_or("")
        .contains("NEXT_HOP"));

    let bad_med = [&good_attrs()[..], &[0x80, 4, 3, 0, 0, 1]].concat();
    assert!(update(&bad_med, &NLRI, false)
        .unwrap()
        .withdraw_reason
        .is_some());

    let bad_communities = [&good_attrs()[..], &[0xc0, 8, 3, 0, 0, 1]].concat();
    assert!(update(&bad_communities, &NLRI, false)
        .unwrap()
        .withdraw_reason
        .is_some());

    let well_known_flagged_optional = [&[0xc0, 1, 1, 0][..], &PATH_65001_2, &NH].concat();
    assert!(update(&well_known_flagged_optional, &NLRI, false)
        .unwrap()
        .withdraw_reason
        .is_some());

    let bad_path = [&ORIGIN_IGP[..], &[0x40, 2, 4, 7, 1, 0xfd, 0xe9], &NH].concat();
    assert!(update(&bad_path, &NLRI, false)
        .unwrap()
        .withdraw_reason
        .is_some());

    // An attribute whose length runs past the attribute field.
    let overrun = [&good_attrs()[..], &[0x80, 4, 9, 0, 0]].concat();
    assert!(update(&overrun, &NLRI, false)
        .unwrap()
        .withdraw_reason
        .is_some());
}

#[test]
fn rfc7606_attribute_discard_and_unknown_attributes() {
    let atomic_with_data = [&good_attrs()[..], &[0x40, 6, 1, 0]].concat();
    let u = update(&atomic_with_data, &NLRI, false).unwrap();
    assert!(u.withdraw_reason.is_none() && !u.attrs.atomic_aggregate);
    assert_eq!(u.discarded.len(), 1);

    let twice = [
        &good_attrs()[..],
        &[0x80, 4, 4, 0, 0, 0, 1],
        &[0x80, 4, 4, 0, 0, 0, 2],
    ]
    .concat();
    let u = update(&twice, &NLRI, false).unwrap();
    assert_eq!(
        u.attrs.med,
        Some(1),
        "the first of a repeated attribute is kept"
    );

    let unknown_transitive = [&good_attrs()[..], &[0xc0, 99, 2, 7, 7]].concat();
    let u = update(&unknown_transitive, &NLRI, false).unwrap();
    assert_eq!(
        u.attrs.unknown,
        vec![(0xe0, 99, vec![7, 7])],
        "kept, marked partial"
    );
    let unknown_local = [&good_attrs()[..], &[0x80, 99, 2, 7, 7]].concat();
    assert!(update(&unknown_local, &NLRI, false)
        .unwrap()
        .attrs
        .unknown
        .is_empty());
}

#[test]
fn errors_that_reset_the_session() {
    let code = |attrs: &[u8], nlri: &[u8]| {
        let e = update(attrs, nlri, false).unwrap_err();
        (e.notification.code, e.notification.subcode)
    };
    assert_eq!(
        code(&[&good_attrs()[..], &[0x40, 99, 0]].concat(), &NLRI),
        (3, 2),
        "unknown well-known"
    );
    assert_eq!(
        code(&[&good_attrs()[..], &[0x80, 14, 3, 0, 2, 1]].concat(), &[]),
        (3, 9),
        "broken MP_REACH"
    );
    assert_eq!(
        code(&good_attrs(), &[33, 10, 0, 0, 0, 0]),
        (3, 10),
        "prefix longer than 32"
    );
    let dup_mp = [&[0x80, 15, 3, 0, 1, 1][..], &[0x80, 15, 3, 0, 1, 1]].concat();
    assert_eq!(code(&dup_mp, &[]), (3, 1), "MP_UNREACH twice");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever follows a valid header, decoding returns a message or an error, never a panic.
    #[test]
    fn decoders_never_panic(kind in 1u8..=5, body in proptest::collection::vec(any::<u8>(), 0..300), four in any::<bool>()) {
        let _ = decode(&frame(kind, &body), four);
    }

    /// Random attribute fields inside an otherwise valid UPDATE.
    #[test]
    fn attribute_decoder_never_panics(attrs in proptest::collection::vec(any::<u8>(), 0..200), four in any::<bool>()) {
        let _ = decode(&frame(2, &update_body(&attrs, &NLRI)), four);
    }
}
