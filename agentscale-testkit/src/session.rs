//! The session-store suite: 10 checks every
//! [`SessionStore`] backend runs.
//!
//! Each check gets a store built from [`SessionParams`] (a fresh namespace)
//! and a fresh random tenant. A backend passes only if versions are exact
//! compare-and-set (create with 0, one winner per round among concurrent
//! writers, no lost updates), state and history expire after the TTL,
//! history keeps the newest `history_cap` entries, a delete leaves a
//! tombstone that refuses late writes until it expires, tenants never mix,
//! and arbitrary bytes round-trip. Expiry is awaited by polling (up to
//! 30 s), never by a fixed sleep.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{ErrorKind, SessionKey, SessionStore};
use bytes::Bytes;

use crate::harness::{unchanged, StateCheck};
use crate::setup::SessionParams;
use crate::support::{b, eventually, EXPIRY_WAIT, SHORT_TTL};

fn key(tenant: &str, session: &str) -> SessionKey {
    SessionKey::new(tenant, session).expect("valid key")
}

fn short_ttl(p: &mut SessionParams) {
    p.ttl = SHORT_TTL;
}

fn history_cap_5(p: &mut SessionParams) {
    p.history_cap = 5;
}

/// Every SessionStore check, in the order they are listed.
pub(crate) fn checks() -> Vec<StateCheck<SessionParams, dyn SessionStore>> {
    vec![
        StateCheck {
            name: "create_only_with_zero",
            configure: unchanged,
            requires: None,
            run: |s, t| Box::pin(create_only_with_zero(s, t)),
        },
        StateCheck {
            name: "version_increments",
            configure: unchanged,
            requires: None,
            run: |s, t| Box::pin(version_increments(s, t)),
        },
        StateCheck {
            name: "cas_single_winner",
            configure: unchanged,
            requires: None,
            run: |s, t| Box::pin(cas_single_winner(s, t)),
        },
        StateCheck {
            name: "no_lost_updates",
            configure: unchanged,
            requires: None,
            run: |s, t| Box::pin(no_lost_updates(s, t)),
        },
        StateCheck {
            name: "ttl_expiry",
            configure: short_ttl,
            requires: None,
            run: |s, t| Box::pin(ttl_expiry(s, t)),
        },
        StateCheck {
            name: "history_cap",
            configure: history_cap_5,
            requires: None,
            run: |s, t| Box::pin(history_cap(s, t)),
        },
        StateCheck {
            name: "tombstone_refuses_late_writes",
            configure: unchanged,
            requires: None,
            run: |s, t| Box::pin(tombstone_refuses_late_writes(s, t)),
        },
        StateCheck {
            name: "tombstone_expires",
            configure: short_ttl,
            requires: None,
            run: |s, t| Box::pin(tombstone_expires(s, t)),
        },
        StateCheck {
            name: "tenant_isolation",
            configure: unchanged,
            requires: None,
            run: |s, t| Box::pin(tenant_isolation(s, t)),
        },
        StateCheck {
            name: "binary_data_round_trips",
            configure: unchanged,
            requires: None,
            run: |s, t| Box::pin(binary_data_round_trips(s, t)),
        },
    ]
}

/// Expected 0 creates version 1; a second create is a conflict; missing
/// sessions read as absent.
async fn create_only_with_zero(s: Arc<dyn SessionStore>, t: String) {
    let k = key(&t, "s1");
    assert_eq!(s.get(&k).await.expect("get"), None);
    assert!(s.history(&k, 10).await.expect("history").is_empty());
    assert_eq!(s.put(&k, 0, b("one")).await.expect("create"), 1);
    let err = s
        .put(&k, 0, b("again"))
        .await
        .expect_err("second create must conflict");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let st = s.get(&k).await.expect("get").expect("present");
    assert_eq!((st.version, st.data), (1, b("one")));
    // A write naming a version that does not exist yet is a conflict too.
    let fresh = key(&t, "s2");
    let err = s
        .put(&fresh, 5, b("x"))
        .await
        .expect_err("expected 5 on a missing session");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(s.get(&fresh).await.expect("get"), None);
}

/// Versions go 1, 2, 3…; stale and future expected versions conflict and
/// change nothing.
async fn version_increments(s: Arc<dyn SessionStore>, t: String) {
    let k = key(&t, "s");
    let mut v = 0;
    for i in 1..=10u64 {
        v = s.put(&k, v, b(&format!("state-{i}"))).await.expect("put");
        assert_eq!(v, i);
    }
    for stale in [0, 3, 9, 11, 99] {
        let err = s.put(&k, stale, b("stale")).await.expect_err("stale write");
        assert_eq!(err.kind(), ErrorKind::Conflict, "expected {stale}: {err}");
    }
    let st = s.get(&k).await.expect("get").expect("present");
    assert_eq!((st.version, st.data), (10, b("state-10")));
}

/// N writers with the same expected version: exactly one wins, per round.
async fn cas_single_winner(s: Arc<dyn SessionStore>, t: String) {
    let k = key(&t, "race");
    const WRITERS: usize = 16;
    const ROUNDS: u64 = 8;
    let mut expected = 0;
    for round in 0..ROUNDS {
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (s, k) = (s.clone(), k.clone());
                tokio::spawn(async move { s.put(&k, expected, b(&format!("r{round}-w{w}"))).await })
            })
            .collect();
        let mut wins = Vec::new();
        let mut conflicts = 0;
        for (w, t) in tasks.into_iter().enumerate() {
            match t.await.expect("join") {
                Ok(v) => wins.push((w, v)),
                Err(e) if e.kind() == ErrorKind::Conflict => conflicts += 1,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(wins.len(), 1, "round {round}: winners {wins:?}");
        assert_eq!(conflicts, WRITERS - 1);
        let (winner, version) = wins[0];
        assert_eq!(version, expected + 1);
        let st = s.get(&k).await.expect("get").expect("present");
        assert_eq!(st.version, version);
        assert_eq!(
            st.data,
            b(&format!("r{round}-w{winner}")),
            "the winner's data is stored"
        );
        expected = version;
    }
}

/// Concurrent read-modify-CAS loops lose no update.
async fn no_lost_updates(s: Arc<dyn SessionStore>, t: String) {
    let k = key(&t, "counter");
    assert_eq!(s.put(&k, 0, b("0")).await.expect("create"), 1);
    const WORKERS: u64 = 8;
    const INCREMENTS: u64 = 25;
    let conflicts = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (s, k, conflicts) = (s.clone(), k.clone(), conflicts.clone());
            tokio::spawn(async move {
                for _ in 0..INCREMENTS {
                    loop {
                        let st = s.get(&k).await.expect("get").expect("present");
                        let n: u64 = std::str::from_utf8(&st.data).expect("utf8").parse().expect("int");
                        match s.put(&k, st.version, b(&(n + 1).to_string())).await {
                            Ok(_) => break,
                            Err(e) if e.kind() == ErrorKind::Conflict => {
                                conflicts.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("unexpected error {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("join");
    }
    let st = s.get(&k).await.expect("get").expect("present");
    assert_eq!(st.data, b(&(WORKERS * INCREMENTS).to_string()));
    assert_eq!(st.version, 1 + WORKERS * INCREMENTS);
}

/// State and history expire after the TTL; afterwards the session can be
/// created again from version 0.
async fn ttl_expiry(s: Arc<dyn SessionStore>, t: String) {
    let k = key(&t, "short");
    assert_eq!(s.put(&k, 0, b("a")).await.expect("put"), 1);
    assert_eq!(s.append(&k, b("h1")).await.expect("append"), 1);
    eventually("session expires", || async {
        s.get(&k).await.expect("get").is_none()
    })
    .await;
    eventually("history expires", || async {
        s.history(&k, 10).await.expect("history").is_empty()
    })
    .await;
    assert_eq!(s.put(&k, 0, b("b")).await.expect("recreate"), 1);
    assert_eq!(s.history(&k, 10).await.expect("history"), Vec::<Bytes>::new());
}

/// History keeps the newest `cap` entries, oldest first.
async fn history_cap(s: Arc<dyn SessionStore>, t: String) {
    let k = key(&t, "hist");
    for i in 0..12u64 {
        let len = s.append(&k, b(&format!("e{i}"))).await.expect("append");
        assert_eq!(len, (i + 1).min(5));
    }
    let all: Vec<Bytes> = (7..12).map(|i| b(&format!("e{i}"))).collect();
    assert_eq!(s.history(&k, 100).await.expect("history"), all);
    assert_eq!(s.history(&k, 2).await.expect("history"), all[3..].to_vec());
    assert!(s.history(&k, 0).await.expect("history").is_empty());
    // History does not create a state version.
    assert_eq!(s.get(&k).await.expect("get"), None);
    assert_eq!(s.put(&k, 0, b("x")).await.expect("create"), 1);
}

/// A delete leaves a tombstone: late puts and appends get Conflict.
async fn tombstone_refuses_late_writes(s: Arc<dyn SessionStore>, t: String) {
    let k = key(&t, "gone");
    assert_eq!(s.put(&k, 0, b("a")).await.expect("put"), 1);
    assert_eq!(s.append(&k, b("h")).await.expect("append"), 1);
    assert!(s.delete(&k).await.expect("delete"), "existed");
    assert_eq!(s.get(&k).await.expect("get"), None);
    assert!(s.history(&k, 10).await.expect("history").is_empty());
    for expected in [0, 1, 2] {
        let err = s.put(&k, expected, b("late")).await.expect_err("late put");
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    }
    let err = s.append(&k, b("late")).await.expect_err("late append");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert_eq!(s.get(&k).await.expect("get"), None);
    assert!(!s.delete(&k).await.expect("delete again"), "already deleted");
    assert!(!s.delete(&key(&t, "never")).await.expect("delete missing"));
    // A session that only has history counts as existing.
    let h = key(&t, "only-history");
    s.append(&h, b("x")).await.expect("append");
    assert!(s.delete(&h).await.expect("delete"));
}

/// The tombstone lives for the TTL; after it the id can be used again.
async fn tombstone_expires(s: Arc<dyn SessionStore>, t: String) {
    let k = key(&t, "reborn");
    s.put(&k, 0, b("a")).await.expect("put");
    assert!(s.delete(&k).await.expect("delete"));
    let deadline = tokio::time::Instant::now() + EXPIRY_WAIT;
    let created = loop {
        match s.put(&k, 0, b("again")).await {
            Ok(v) => break v,
            Err(e) if e.kind() == ErrorKind::Conflict => {
                assert!(tokio::time::Instant::now() < deadline, "tombstone never expired");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    };
    assert_eq!(created, 1);
}

/// The same session id under two tenants never mixes.
async fn tenant_isolation(s: Arc<dyn SessionStore>, t: String) {
    let other = format!("{t}-b");
    let (a, bk) = (key(&t, "shared"), key(&other, "shared"));
    assert_eq!(s.put(&a, 0, b("A1")).await.expect("put a"), 1);
    assert_eq!(s.get(&bk).await.expect("get b"), None);
    assert_eq!(s.put(&bk, 0, b("B1")).await.expect("put b"), 1);
    assert_eq!(s.put(&a, 1, b("A2")).await.expect("put a"), 2);
    s.append(&a, b("ha")).await.expect("append a");
    assert!(s.history(&bk, 10).await.expect("history b").is_empty());
    assert_eq!(s.get(&bk).await.expect("get").expect("b").data, b("B1"));
    assert!(s.delete(&a).await.expect("delete a"));
    let st = s.get(&bk).await.expect("get").expect("b survives");
    assert_eq!((st.version, st.data), (1, b("B1")));
    assert_eq!(s.put(&bk, 1, b("B2")).await.expect("b still writable"), 2);
}

/// Arbitrary bytes (all 256 values, 1 MiB) round-trip exactly.
async fn binary_data_round_trips(s: Arc<dyn SessionStore>, t: String) {
    let k = key(&t, "bin");
    let data: Bytes = (0..(1usize << 20))
        .map(|i| (i % 256) as u8)
        .collect::<Vec<u8>>()
        .into();
    assert_eq!(s.put(&k, 0, data.clone()).await.expect("put"), 1);
    assert_eq!(s.get(&k).await.expect("get").expect("present").data, data);
    assert_eq!(s.put(&k, 1, Bytes::new()).await.expect("empty"), 2);
    let st = s.get(&k).await.expect("get").expect("empty state is present");
    assert_eq!((st.version, st.data.len()), (2, 0));
    s.append(&k, Bytes::from_static(&[0, 255, 10, 13]))
        .await
        .expect("append");
    assert_eq!(
        s.history(&k, 1).await.expect("history"),
        vec![Bytes::from_static(&[0, 255, 10, 13])]
    );
}
