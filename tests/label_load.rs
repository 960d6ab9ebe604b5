//! The labeling server under concurrent annotators on 127.0.0.1, and killed with SIGKILL under
//! load: no acknowledged label is lost, none is duplicated, none is half-written.

mod label_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use label_support::*;

/// An acknowledged label: (pair id, annotator, preferred).
type Ack = (i64, String, String);

/// What annotator `index` answers for `pair_id`: some skips (even annotators only, so every pair
/// still finds someone to judge it), otherwise left, right or tie.
fn answer_for(index: usize, pair_id: i64) -> &'static str {
    if index.is_multiple_of(2) && pair_id % 7 == 0 {
        return "skip";
    }
    ["left", "right", "tie"][(pair_id as usize + index) % 3]
}

/// Every label in the database as (pair id, annotator, preferred).
fn stored_labels(db: &Path) -> Vec<Ack> {
    db_rows(
        db,
        "SELECT a.pair_id, n.name, l.preferred FROM labels l JOIN assignments a ON a.id = l.assignment_id \
         JOIN annotators n ON n.id = a.annotator_id",
    )
}

/// The invariants a consistent database keeps, whatever happened to the server.
fn assert_consistent(db: &Path) {
    let integrity: Vec<(String,)> = db_rows(db, "PRAGMA integrity_check");
    assert_eq!(integrity, [("ok".to_string(),)]);
    let broken_keys: Vec<(String, i64)> = db_rows(db, "SELECT \"table\", rowid FROM pragma_foreign_key_check");
    assert_eq!(broken_keys, []);
    // A label exists exactly for the assignments marked labeled, and matches their state.
    let mismatched: Vec<(i64,)> = db_rows(
        db,
        "SELECT a.id FROM assignments a LEFT JOIN labels l ON l.assignment_id = a.id \
         WHERE (a.state IN ('judged', 'skipped')) != (l.id IS NOT NULL) \
            OR (a.state = 'skipped') != (coalesce(l.preferred, '') = 'skip')",
    );
    assert_eq!(mismatched, [], "assignments whose state and label disagree");
    let wrong_claims: Vec<(i64,)> = db_rows(
        db,
        "SELECT p.id FROM pairs p WHERE p.claims != \
         (SELECT count(*) FROM assignments a WHERE a.pair_id = p.id AND a.state IN ('open', 'judged'))",
    );
    assert_eq!(wrong_claims, [], "pairs whose claim counter is off");
    let over_full: Vec<(i64,)> = db_rows(db, "SELECT pair_id FROM assignments WHERE state = 'judged' GROUP BY pair_id HAVING count(*) > 1");
    assert_eq!(over_full, [], "pairs with more than one judgement (K = 1)");
}

#[test]
fn sixteen_concurrent_annotators_lose_and_duplicate_no_label() {
    const ANNOTATORS: usize = 16;
    const PAIRS: usize = 1200;
    let dir = tempfile::tempdir().unwrap();
    let db = database_with(dir.path(), &numbered_pairs(PAIRS));
    let tokens = add_annotators(&db, ANNOTATORS);
    let server = Server::start(&db, &[]);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);

    let workers: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(index, token)| {
            let client = server.client(token);
            std::thread::spawn(move || {
                let mut acked: Vec<Ack> = Vec::new();
                while let Some(pair) = client.next() {
                    assert!(Instant::now() < deadline, "annotator {index} still labeling after 60 s");
                    let pair_id = pair["pair_id"].as_i64().unwrap();
                    let preferred = answer_for(index, pair_id);
                    let reply = client.label(pair_id, preferred);
                    assert_eq!(reply.status, 201, "annotator {index}, pair {pair_id}: {}", reply.body);
                    acked.push((pair_id, format!("annotator-{index:02}"), preferred.to_string()));
                }
                acked
            })
        })
        .collect();
    let mut acked: Vec<Ack> = workers.into_iter().flat_map(|worker| worker.join().expect("annotator thread")).collect();
    let elapsed = started.elapsed();
    // A pair skipped while the others had already finished is still waiting: skips go back to
    // the pool, and one annotator who never skips picks up exactly those.
    let sweeper = server.client(&tokens[1]);
    let skipped_only: BTreeSet<i64> = {
        let judged: BTreeSet<i64> = acked.iter().filter(|a| a.2 != "skip").map(|a| a.0).collect();
        acked.iter().filter(|a| !judged.contains(&a.0)).map(|a| a.0).collect()
    };
    let mut swept = BTreeSet::new();
    while let Some(pair) = sweeper.next() {
        let pair_id = pair["pair_id"].as_i64().unwrap();
        assert_eq!(sweeper.label(pair_id, "left").status, 201);
        acked.push((pair_id, "annotator-01".to_string(), "left".to_string()));
        swept.insert(pair_id);
    }
    assert_eq!(swept, skipped_only, "the sweep finds exactly the pairs that were only skipped");
    eprintln!(
        "{} labels by {ANNOTATORS} annotators in {elapsed:.2?} ({:.0} labels/s)",
        acked.len(),
        acked.len() as f64 / elapsed.as_secs_f64()
    );

    let acked_set: BTreeSet<Ack> = acked.iter().cloned().collect();
    assert_eq!(acked_set.len(), acked.len(), "no label acknowledged twice");
    let stored: Vec<Ack> = stored_labels(&db);
    let stored_set: BTreeSet<Ack> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), acked.len(), "as many labels stored as acknowledged");
    assert_eq!(stored_set, acked_set, "exactly the acknowledged labels are stored");
    let judged: BTreeSet<i64> = acked.iter().filter(|a| a.2 != "skip").map(|a| a.0).collect();
    assert_eq!(judged.len(), PAIRS, "every pair got its judgement");
    assert!(acked.iter().any(|a| a.2 == "skip"), "skips were exercised");
    let busy = acked.iter().map(|a| &a.1).collect::<BTreeSet<_>>().len();
    assert!(busy >= ANNOTATORS / 2, "work was shared: only {busy} annotators labeled");
    assert_consistent(&db);
    assert!(!server.log().contains("ERROR"), "{}", server.log());
}

#[test]
fn a_killed_server_keeps_every_acknowledged_label() {
    const ANNOTATORS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let db = database_with(dir.path(), &numbered_pairs(20_000));
    let tokens = add_annotators(&db, ANNOTATORS);
    let mut server = Server::start(&db, &[]);

    let acked_count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(index, token)| {
            let client = server.client(token);
            let (acked_count, stop) = (acked_count.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut acked: Vec<Ack> = Vec::new();
                // Runs until the server dies under it (or, as a bound, until told to stop).
                while !stop.load(Ordering::Relaxed) {
                    let Ok(reply) = client.try_get("/api/pairs/next") else { break };
                    assert_eq!(reply.status, 200, "{}", reply.body);
                    let pair_id = reply.json()["pair_id"].as_i64().unwrap();
                    let preferred = answer_for(index, pair_id);
                    let body = serde_json::json!({"pair_id": pair_id, "preferred": preferred}).to_string();
                    let Ok(reply) = client.try_post("/api/labels", &body) else { break };
                    assert_eq!(reply.status, 201, "{}", reply.body);
                    acked.push((pair_id, format!("annotator-{index:02}"), preferred.to_string()));
                    acked_count.fetch_add(1, Ordering::Relaxed);
                }
                acked
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(30);
    while acked_count.load(Ordering::Relaxed) < 400 {
        assert!(Instant::now() < deadline, "the load never got going");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill_hard();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<Ack> = workers.into_iter().flat_map(|worker| worker.join().expect("annotator thread")).collect();
    assert!(acked.len() >= 400);

    // Restarting recovers the WAL; then every acknowledged label must be there.
    let server = Server::start(&db, &[]);
    let stored: BTreeSet<Ack> = stored_labels(&db).into_iter().collect();
    let missing: Vec<&Ack> = acked.iter().filter(|ack| !stored.contains(*ack)).collect();
    assert_eq!(missing, Vec::<&Ack>::new(), "acknowledged labels lost by the crash");
    // Only requests in flight at the kill may have been stored without an answer: one per annotator.
    assert!(stored.len() <= acked.len() + ANNOTATORS, "{} stored, {} acknowledged", stored.len(), acked.len());
    assert_consistent(&db);

    // The restarted server goes on where it stopped: leases held at the kill still hold.
    for token in &tokens {
        let client = server.client(token);
        let pair = client.next().expect("pairs are left");
        let reply = client.label(pair["pair_id"].as_i64().unwrap(), "left");
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    assert_eq!(stored_labels(&db).len(), stored.len() + ANNOTATORS);
}
