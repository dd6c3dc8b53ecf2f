//! The UPDATE encoder: any UPDATE we can read, sent on through `update::fit`, comes out as
//! messages within the 4,096-byte limit that read back to the same prefixes, each announced
//! or withdrawn as before (or withdrawn when its attributes cannot fit).
#![no_main]

use std::collections::BTreeSet;

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use twill_bgp::attribute::{MpReach, MpUnreach};
use twill_bgp::message::{decode, Message, MAX_LEN};
use twill_bgp::update::{fit, Update};

/// (announced, withdrawn) prefixes of an UPDATE.
fn prefixes(u: &Update) -> (BTreeSet<IpNet>, BTreeSet<IpNet>) {
    let mut a: BTreeSet<IpNet> = u.nlri.iter().map(|p| IpNet::V4(*p)).collect();
    match &u.attrs.mp_reach {
        Some(MpReach::V4 { nlri, .. }) => a.extend(nlri.iter().map(|p| IpNet::V4(*p))),
        Some(MpReach::V6 { nlri, .. }) => a.extend(nlri.iter().map(|p| IpNet::V6(*p))),
        None => {}
    }
    let mut w: BTreeSet<IpNet> = u.withdrawn.iter().map(|p| IpNet::V4(*p)).collect();
    match &u.attrs.mp_unreach {
        Some(MpUnreach::V4(ps)) => w.extend(ps.iter().map(|p| IpNet::V4(*p))),
        Some(MpUnreach::V6(ps)) => w.extend(ps.iter().map(|p| IpNet::V6(*p))),
        None => {}
    }
    (a, w)
}

fuzz_target!(|data: &[u8]| {
    for four in [false, true] {
        let Ok(u) = Update::decode(data, four) else {
            continue;
        };
        // Treat-as-withdraw and discarded attributes are the reader's verdicts: what is sent
        // on is what was kept.
        if u.withdraw_reason.is_some() || !u.discarded.is_empty() {
            continue;
        }
        let (announced, withdrawn) = prefixes(&u);
        let fitted = fit(vec![u], four);
        let (mut got_a, mut got_w) = (BTreeSet::new(), BTreeSet::new());
        for m in &fitted.messages {
            assert!(m.len() <= MAX_LEN, "a message of {} bytes", m.len());
            let (msg, used) = decode(m, four)
                .expect("our own message reads back")
                .expect("a whole message");
            assert_eq!(used, m.len());
            let Message::Update(d) = msg else {
                panic!("not an UPDATE: {msg:?}")
            };
            let (a, w) = prefixes(&d);
            got_a.extend(a);
            got_w.extend(w);
        }
        let unfit: BTreeSet<IpNet> = fitted.unfit.iter().copied().collect();
        let want_a: BTreeSet<IpNet> = announced.difference(&unfit).copied().collect();
        let want_w: BTreeSet<IpNet> = withdrawn.union(&unfit).copied().collect();
        assert_eq!(got_a, want_a);
        assert_eq!(got_w, want_w);
    }
});
