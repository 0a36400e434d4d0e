//! Security changes through the controller (docs/replication.md, "The controller group"):
//! three `Engine`s in one process (engine/tests/common). A change proposed on a follower of
//! the controller is applied on all three nodes in the same order, and its proposer is
//! answered after its own node applied it; concurrent proposals from two nodes end up in one
//! order everywhere; a change the hook refuses is answered with the hook's reason; a node
//! down during a change gets it after its restart, and its security log survives the restart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use shardline_engine::{Engine, Error, NodeId, SecurityChanges};

mod common;
use common::{Net, start};

type Seen = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// Registers a hook on `e` that records every change it is given (replayed or applied) and
/// refuses the change `refuse-me`.
fn record(e: &Engine) -> Seen {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    e.on_security_change(Arc::new(move |c| {
        let mut s = s.lock().unwrap();
        match c {
            SecurityChanges::Replay(all) => s.extend(all.iter().cloned()),
            SecurityChanges::Applied(offset, change) => {
                if change == b"refuse-me" {
                    return Err("refused by the hook".into());
                }
                s.push((offset, change.to_vec()));
            }
        }
        Ok(())
    }))
    .unwrap();
    seen
}

fn values(seen: &Seen) -> Vec<Vec<u8>> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(_, v)| v.clone())
        .collect()
}

/// Waits (at most 15 s) until `f` holds.
fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "not within 15 s: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn controller_leader(net: &Net) -> NodeId {
    let mut leader = 0;
    wait("a controller leader", || {
        leader = net.engine(1).controller_leader().unwrap_or(0);
        leader != 0
    });
    leader
}

#[test]
fn security_changes_reach_every_node_in_one_order_and_survive_a_restart() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let net = Arc::new(Net::default());
    let mut seen: HashMap<NodeId, Seen> = HashMap::new();
    for n in 1..=3u64 {
        let e = start(&net, n, dirs[n as usize - 1].path());
        seen.insert(n, record(&e));
    }
    // Proposed on a follower: forwarded to the leader, answered once applied here.
    let leader = controller_leader(&net);
    let follower = if leader == 1 { 2 } else { 1 };
    block_on(
        net.engine(follower)
            .propose_security_change(b"first".to_vec()),
    )
    .unwrap();
    assert_eq!(values(&seen[&follower]), vec![b"first".to_vec()]);

    // Two nodes propose at once: one order, the same on every node.
    let (a, b) = (net.engine(2), net.engine(3));
    let ta = std::thread::spawn(move || {
        for i in 0..3 {
            block_on(a.propose_security_change(format!("a{i}").into_bytes())).unwrap();
        }
    });
    let tb = std::thread::spawn(move || {
        for i in 0..3 {
            block_on(b.propose_security_change(format!("b{i}").into_bytes())).unwrap();
        }
    });
    ta.join().unwrap();
    tb.join().unwrap();
    wait("7 changes on every node", || {
        (1..=3).all(|n| seen[&n].lock().unwrap().len() == 7)
    });
    let one = seen[&1].lock().unwrap().clone();
    for n in 2..=3 {
        assert_eq!(*seen[&n].lock().unwrap(), one, "node {n}'s order differs");
    }
    assert!(one.windows(2).all(|w| w[0].0 < w[1].0), "{one:?}");
    let a_order: Vec<_> = one.iter().filter(|(_, v)| v[0] == b'a').collect();
    assert_eq!(a_order.len(), 3);
    assert_eq!(net.engine(3).security_changes().unwrap(), one);

    // A refused change: the proposer hears the hook's reason.
    match block_on(net.engine(1).propose_security_change(b"refuse-me".to_vec())) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("refused by the hook"), "{m}"),
        other => panic!("a refused change answered {other:?}"),
    }
    assert!(matches!(
        block_on(net.engine(1).propose_security_change(Vec::new())),
        Err(Error::InvalidArgument(_))
    ));

    // Node 3 down during a change; after its restart it has everything, in the same order.
    net.stop(3);
    block_on(
        net.engine(1)
            .propose_security_change(b"while-down".to_vec()),
    )
    .unwrap();
    let e3 = start(&net, 3, dirs[2].path());
    // Its own security log survived the restart.
    assert!(e3.security_changes().unwrap().len() > one.len());
    let again = record(&e3);
    let want = net.engine(1).security_changes().unwrap();
    assert_eq!(want.last().unwrap().1, b"while-down".to_vec());
    wait("the restarted node has every change", || {
        *again.lock().unwrap() == want
    });
    for n in 1..=3 {
        net.stop(n);
    }
}
