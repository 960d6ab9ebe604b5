//! The labeling HTTP API against a real `rlhf label serve` process: every status code of
//! docs/reference.md §7, leases, labels per pair, undo, stats, bad input and verbatim text.

mod label_support;

use std::time::Duration;

use label_support::*;
use serde_json::{json, Value};

const NASTY_PROMPT: &str = "<b>not bold</b> & <script>alert('x')</script> \"quoted\" 'single'";
const NASTY_A: &str = "Robert'); DROP TABLE labels; -- \u{1F600} \\n \u{0} tab\there";
/// Ends in "é" decomposed (e + U+0301), which import stores composed (NFC), as training data is.
const NASTY_B: &str = "<img src=x onerror=alert(1)> &amp; &lt;/textarea&gt; 👍🏽 e\u{301}";
const NASTY_B_NFC: &str = "<img src=x onerror=alert(1)> &amp; &lt;/textarea&gt; 👍🏽 \u{e9}";

#[test]
fn page_files_are_served_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&database_with(dir.path(), &numbered_pairs(1)), &[]);
    let anonymous = Client::new(&server.url, "");
    for (path, content_type, needle) in
        [("/", "text/html", "<script src=\"/app.js\""), ("/app.js", "text/javascript", "textContent"), ("/style.css", "text/css", "@media")]
    {
        let mut response = ureq::get(format!("{}{path}", server.url)).call().unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        assert!(header("content-type").starts_with(content_type), "{path}: {}", header("content-type"));
        assert!(header("content-security-policy").contains("script-src 'self'"), "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert!(response.body_mut().read_to_string().unwrap().contains(needle), "{path}");
    }
    for path in ["/index.html", "/labeling-ui/app.js", "/Cargo.toml", "/app.js/", "/favicon.ico"] {
        assert_eq!(anonymous.get(path).status, 404, "{path}");
    }
    for path in ["/../Cargo.toml", "/..%2fCargo.toml", "/%2e%2e/%2e%2e/etc/passwd", "/static/../../src/main.rs"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        assert_eq!(raw_status(&server.addr, &request), 404, "{path}");
    }
}

#[test]
fn every_api_route_needs_a_valid_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with(dir.path(), &numbered_pairs(2));
    let token = add_annotator(&db, "alice");
    let server = Server::start(&db, &[]);
    let label = json!({"pair_id": 1, "preferred": "left"}).to_string();
    for authorization in [None, Some("Bearer not-a-token".to_string()), Some(format!("Basic {token}")), Some("Bearer ".into())] {
        let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
        let with_auth = |request: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match &authorization {
            Some(value) => request.header("Authorization", value),
            None => request,
        };
        let with_auth_body = |request: ureq::RequestBuilder<ureq::typestate::WithBody>| match &authorization {
            Some(value) => request.header("Authorization", value),
            None => request,
        };
        let url = |path: &str| format!("{}{path}", server.url);
        let responses = [
            ("GET /api/pairs/next", with_auth(agent.get(url("/api/pairs/next"))).call().unwrap()),
            ("GET /api/stats", with_auth(agent.get(url("/api/stats"))).call().unwrap()),
            ("GET /api/nope", with_auth(agent.get(url("/api/nope"))).call().unwrap()),
            ("DELETE /api/labels/last", with_auth(agent.delete(url("/api/labels/last"))).call().unwrap()),
            ("POST /api/labels", with_auth_body(agent.post(url("/api/labels"))).send(&label).unwrap()),
        ];
        for (route, response) in responses {
            assert_eq!(response.status(), 401, "{route} with {authorization:?}");
            assert_eq!(response.headers().get("www-authenticate").unwrap(), "Bearer", "{route}");
        }
    }
    // Nothing was handed out or labeled by those requests.
    let assignments: Vec<(i64,)> = db_rows(&db, "SELECT count(*) FROM assignments");
    assert_eq!(assignments, [(0,)]);
    // The real token opens the same routes; an unknown API route is then a 404.
    let alice = server.client(&token);
    assert_eq!(alice.get("/api/pairs/next").status, 200);
    assert_eq!(alice.get("/api/nope").status, 404);
    // The scheme name is case-insensitive (RFC 7235 §2.1); the token is not.
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let request = format!("GET /api/stats HTTP/1.1\r\nHost: x\r\nAuthorization: {scheme} {token}\r\nConnection: close\r\n\r\n");
        assert_eq!(raw_status(&server.addr, &request), 200, "{scheme}");
    }
    let request =
        format!("GET /api/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n", token.to_uppercase());
    assert_eq!(raw_status(&server.addr, &request), 401);
}

#[test]
fn annotators_see_only_their_own_progress_and_admins_see_the_rest_without_labeling() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with(dir.path(), &numbered_pairs(2));
    let (alice_token, bob_token) = (add_annotator(&db, "alice"), add_annotator(&db, "bob"));
    let admin_token = rlhf_ok(&["label", "annotator", "add", "--db", path_str(&db), "--admin", "lead"]).trim().to_string();
    let server = Server::start(&db, &["--labels-per-pair", "2"]);
    let (alice, bob, admin) = (server.client(&alice_token), server.client(&bob_token), server.client(&admin_token));
    for (client, side) in [(&alice, "left"), (&bob, "right")] {
        let id = client.next().unwrap()["pair_id"].as_i64().unwrap();
        assert_eq!(client.label(id, side).status, 201);
    }
    // With two labels per pair, bob could otherwise read whether alice agreed, undo and flip.
    let stats = bob.get("/api/stats").json();
    assert_eq!(stats, json!({"labels_per_pair": 2, "undo_secs": 30, "you": {"name": "bob", "labels": 1, "remaining": 1}}));
    assert_eq!(bob.get("/api/admin/stats").status, 403, "annotators do not see the figures");
    let everything = admin.get("/api/admin/stats").json();
    let names: Vec<&str> = everything["annotators"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alice", "bob"], "the admin is not an annotator");
    assert_eq!(everything["agreement"]["items"], 1);
    assert_eq!(everything["labels"], 2);
    // The admin reads but does not judge.
    assert_eq!(admin.try_get("/api/pairs/next").unwrap().status, 403);
    assert_eq!(admin.label(1, "left").status, 403);
}

/// The server rechecks a token against the database at least once a second: a removed or
/// rotated-away token answers 401 (never 500) within `seconds`.
fn assert_refused_within_seconds(client: &Client, seconds: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        let status = client.try_get("/api/stats").unwrap().status;
        if status == 401 {
            return;
        }
        assert_eq!(status, 200, "until refused, the token still works");
        assert!(std::time::Instant::now() < deadline, "token still accepted {seconds} s after it was revoked");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn removed_and_rotated_tokens_stop_working_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with(dir.path(), &numbered_pairs(3));
    let (alice_token, bob_token) = (add_annotator(&db, "alice"), add_annotator(&db, "bob"));
    let server = Server::start(&db, &[]);
    let (alice, bob) = (server.client(&alice_token), server.client(&bob_token));
    let first = alice.next().unwrap()["pair_id"].as_i64().unwrap();
    assert_eq!(alice.label(first, "left").status, 201);
    let held = alice.next().unwrap()["pair_id"].as_i64().unwrap();
    assert_eq!(bob.get("/api/stats").status, 200);

    let removed = rlhf(&["label", "annotator", "remove", "--db", path_str(&db), "alice"]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    assert_refused_within_seconds(&alice, 2);
    assert_eq!(alice.label(held, "left").status, 401);
    // The pair she held goes to someone else at once; her label stays.
    let ids: Vec<i64> = std::iter::from_fn(|| {
        bob.next().map(|p| p["pair_id"].as_i64().unwrap()).inspect(|&id| {
            assert_eq!(bob.label(id, "right").status, 201);
        })
    })
    .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&held), "{ids:?}");
    assert_eq!(export(&db, dir.path(), &[]).iter().filter(|r| r["annotator"] == "alice").count(), 1);

    let new_token = rlhf_ok(&["label", "annotator", "rotate", "--db", path_str(&db), "bob"]).trim().to_string();
    assert_eq!(new_token.len(), 64);
    assert_refused_within_seconds(&bob, 2);
    let stats = server.client(&new_token).get("/api/stats").json();
    assert_eq!(stats["you"]["name"], "bob");
    assert_eq!(stats["you"]["labels"], 2, "same annotator, same labels");

    // Errors name the annotator; a removed name is not reused.
    assert!(rlhf_err(&["label", "annotator", "remove", "--db", path_str(&db), "carol"]).contains("no annotator named `carol`"));
    assert!(rlhf_err(&["label", "annotator", "rotate", "--db", path_str(&db), "alice"]).contains("`alice` was removed"));
    assert!(rlhf_err(&["label", "annotator", "add", "--db", path_str(&db), "alice"]).contains("`alice` was removed"));
    let text = rlhf_ok(&["label", "stats", "--db", path_str(&db)]);
    assert!(text.lines().any(|line| line.contains("alice") && line.contains("(removed)")), "{text}");
}

#[test]
fn labels_are_recorded_once_and_bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with(dir.path(), &numbered_pairs(3));
    let alice_token = add_annotator(&db, "alice");
    let server = Server::start(&db, &[]);
    let alice = server.client(&alice_token);

    let first = alice.next().expect("a pair");
    let keys: Vec<&String> = first.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["left", "messages", "pair_id", "prompt", "right"]);
    assert_eq!(first["messages"], Value::Null, "a plain-text prompt has no messages");
    let id = first["pair_id"].as_i64().unwrap();
    let mut texts = [first["left"].as_str().unwrap(), first["right"].as_str().unwrap()];
    texts.sort();
    assert_eq!(texts, [format!("a{}", id - 1), format!("b{}", id - 1)]);
    // Asking again returns the held pair, in the same order.
    assert_eq!(alice.next().unwrap(), first);

    // Malformed bodies: 400 for broken JSON, 422 for JSON of the wrong shape, 413 over 64 KiB.
    for (body, status) in [
        ("", 400),
        ("{\"pair_id\": 1,", 400),
        ("pair_id=1&preferred=left", 400),
        ("[1, \"left\"]", 422),
        ("{\"pair_id\": \"1\", \"preferred\": \"left\"}", 422),
        ("{\"pair_id\": 1.5, \"preferred\": \"left\"}", 422),
        ("{\"pair_id\": 1}", 422),
        ("{\"preferred\": \"left\"}", 422),
        ("{\"pair_id\": 1, \"preferred\": \"middle\"}", 422),
        ("{\"pair_id\": 1, \"preferred\": null}", 422),
    ] {
        let reply = alice.post("/api/labels", body);
        assert_eq!(reply.status, status, "{body:?}: {}", reply.body);
        assert!(!reply.error().is_empty());
    }
    let oversized = format!("{{\"pair_id\": {id}, \"preferred\": \"left\", \"pad\": \"{}\"}}", "x".repeat(70 * 1024));
    let reply = alice.post("/api/labels", &oversized);
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert!(reply.error().contains("64 KiB"), "{}", reply.error());

    // Unknown pair: 404. A pair that exists but was not handed to alice: 409.
    let reply = alice.label(999_999, "left");
    assert_eq!((reply.status, reply.error()), (404, "unknown pair 999999".to_string()));
    let other = if id == 1 { 2 } else { 1 };
    assert_eq!(alice.label(other, "left").status, 409);
    let labels: Vec<(i64,)> = db_rows(&db, "SELECT count(*) FROM labels");
    assert_eq!(labels, [(0,)], "refused requests leave no label");

    let reply = alice.label(id, "right");
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!((reply.json()["pair_id"].as_i64(), reply.json()["preferred"].as_str()), (Some(id), Some("right")));
    let reply = alice.label(id, "left");
    assert_eq!(reply.status, 409);
    assert!(reply.error().contains("already labeled"), "{}", reply.error());

    // Label the rest, then nothing is left: 204.
    let mut shown = vec![first.clone()];
    while let Some(pair) = alice.next() {
        assert_eq!(alice.label(pair["pair_id"].as_i64().unwrap(), "left").status, 201);
        shown.push(pair);
    }
    assert_eq!(shown.len(), 3);
    assert_eq!(alice.get("/api/pairs/next").status, 204);

    // Export maps left/right back to the responses alice saw.
    let records = export(&db, dir.path(), &[]);
    assert_eq!(records.len(), 3);
    for (record, pair) in records.iter().zip(&shown) {
        let (chosen, rejected) = if record["pair_id"] == first["pair_id"] { ("right", "left") } else { ("left", "right") };
        assert_eq!(record["pair_id"], pair["pair_id"]);
        assert_eq!(record["chosen"], pair[chosen], "{record}");
        assert_eq!(record["rejected"], pair[rejected], "{record}");
        assert_eq!(record["annotator"], "alice");
        assert_eq!(record["judgement"], "preference");
    }
}

#[test]
fn a_pair_is_leased_to_one_annotator_until_the_lease_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with(dir.path(), &numbered_pairs(1));
    let (alice_token, bob_token) = (add_annotator(&db, "alice"), add_annotator(&db, "bob"));
    let (server, clock) = Server::start_with_clock(&db, &["--lease-secs", "60"]);
    let (alice, bob) = (server.client(&alice_token), server.client(&bob_token));

    let held = alice.next().expect("alice gets the pair");
    clock.advance(Duration::from_secs(59));
    assert_eq!(bob.next(), None, "the pair is leased to alice");
    clock.advance(Duration::from_secs(2));
    let reassigned = bob.next().expect("after the lease the pair goes to bob");
    assert_eq!(reassigned["pair_id"], held["pair_id"]);
    assert_eq!(alice.next(), None, "now bob holds it");

    // Alice's late label would take the slot bob is labeling under a live lease: refused, and
    // alice is not handed the pair again; bob's label is taken.
    let id = held["pair_id"].as_i64().unwrap();
    let late = alice.label(id, "left");
    assert_eq!(late.status, 409, "{}", late.body);
    assert!(late.error().contains("your lease on it had run out"), "{}", late.error());
    assert_eq!(alice.next(), None, "after a 409 the next pair is another one or none");
    assert_eq!(bob.label(id, "right").status, 201, "the live lease-holder is never stuck");
    let labels: Vec<(String,)> =
        db_rows(&db, "SELECT n.name FROM labels l JOIN assignments a ON a.id = l.assignment_id JOIN annotators n ON n.id = a.annotator_id");
    assert_eq!(labels, [("bob".to_string(),)]);
}

#[test]
fn a_late_label_counts_while_nobody_holds_the_pair_and_never_leaves_anyone_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with(dir.path(), &numbered_pairs(2));
    let (alice_token, bob_token) = (add_annotator(&db, "alice"), add_annotator(&db, "bob"));
    let (server, clock) = Server::start_with_clock(&db, &["--lease-secs", "60"]);
    let (alice, bob) = (server.client(&alice_token), server.client(&bob_token));

    // Alice's lease runs out and nobody took the pair: her late label counts.
    let first = alice.next().unwrap()["pair_id"].as_i64().unwrap();
    clock.advance(Duration::from_secs(61));
    assert_eq!(alice.label(first, "left").status, 201);

    // Bob's lease on the second pair runs out; alice takes it and labels it; bob's late label
    // then finds it full (409), and his next request offers no pair rather than that one.
    let second = bob.next().unwrap()["pair_id"].as_i64().unwrap();
    assert_ne!(second, first);
    clock.advance(Duration::from_secs(61));
    assert_eq!(alice.next().unwrap()["pair_id"].as_i64(), Some(second));
    assert_eq!(alice.label(second, "tie").status, 201);
    assert_eq!(bob.label(second, "left").status, 409);
    assert_eq!(bob.next(), None);

    // Undoing a skip after someone else labeled the pair: refused, not a pair that comes back
    // unlabelable (the loop the review found).
    let dir = tempfile::tempdir().unwrap();
    let db = database_with(dir.path(), &numbered_pairs(1));
    let (carol_token, dave_token) = (add_annotator(&db, "carol"), add_annotator(&db, "dave"));
    let server = Server::start(&db, &["--undo-secs", "600"]);
    let (carol, dave) = (server.client(&carol_token), server.client(&dave_token));
    let id = carol.next().unwrap()["pair_id"].as_i64().unwrap();
    assert_eq!(carol.label(id, "skip").status, 201);
    assert_eq!(dave.next().unwrap()["pair_id"].as_i64(), Some(id));
    assert_eq!(dave.label(id, "left").status, 201);
    let undo = carol.delete("/api/labels/last");
    assert_eq!(undo.status, 409, "{}", undo.body);
    assert!(undo.error().contains("cannot be undone"), "{}", undo.error());
    assert_eq!(carol.next(), None);
    // While dave merely holds it, the same undo is refused too: his lease is live.
    let dir = tempfile::tempdir().unwrap();
    let db = database_with(dir.path(), &numbered_pairs(1));
    let (erin_token, frank_token) = (add_annotator(&db, "erin"), add_annotator(&db, "frank"));
    let server = Server::start(&db, &["--undo-secs", "600"]);
    let (erin, frank) = (server.client(&erin_token), server.client(&frank_token));
    let id = erin.next().unwrap()["pair_id"].as_i64().unwrap();
    assert_eq!(erin.label(id, "skip").status, 201);
    assert_eq!(frank.next().unwrap()["pair_id"].as_i64(), Some(id));
    assert_eq!(erin.delete("/api/labels/last").status, 409);
    assert_eq!(frank.label(id, "right").status, 201, "frank labels the pair he holds");
}

#[test]
fn each_pair_gets_k_labels_from_different_annotators_and_agreement_is_measured() {
    let dir = tempfile::tempdir().unwrap();
    // "good" is response_a in pair 1 and response_b in pairs 2 and 3.
    let pairs = [
        json!({"prompt": "p1", "response_a": "good 1", "response_b": "bad 1"}),
        json!({"prompt": "p2", "response_a": "bad 2", "response_b": "good 2"}),
        json!({"prompt": "p3", "response_a": "bad 3", "response_b": "good 3"}),
    ];
    let db = database_with(dir.path(), &pairs);
    let tokens: Vec<String> = ["alice", "bob", "carol"].iter().map(|name| add_annotator(&db, name)).collect();
    let server = Server::start(&db, &["--labels-per-pair", "2"]);
    let [alice, bob, carol] = [0, 1, 2].map(|i| server.client(&tokens[i]));

    // Alice and bob pick "good" everywhere except bob on pair 3: agreement on 2 of 3 pairs.
    let side_of = |pair: &Value, word: &str| if pair["left"].as_str().unwrap().starts_with(word) { "left" } else { "right" };
    let mut seen_by_alice = Vec::new();
    while let Some(pair) = alice.next() {
        seen_by_alice.push(pair["pair_id"].as_i64().unwrap());
        assert_eq!(alice.label(pair["pair_id"].as_i64().unwrap(), side_of(&pair, "good")).status, 201);
        std::thread::sleep(Duration::from_millis(5)); // so that her labels span some time
    }
    assert_eq!(seen_by_alice, [1, 2, 3], "alice never gets a pair twice");
    let bob_pair = bob.next().unwrap();
    let carol_pair = carol.next().unwrap();
    assert_ne!(bob_pair["pair_id"], carol_pair["pair_id"], "a pair is not handed to two annotators at once");
    assert_eq!(carol.label(carol_pair["pair_id"].as_i64().unwrap(), "skip").status, 201, "carol skips hers");
    let mut bob_pair = Some(bob_pair);
    while let Some(pair) = bob_pair {
        let id = pair["pair_id"].as_i64().unwrap();
        let word = if id == 3 { "bad" } else { "good" };
        assert_eq!(bob.label(id, side_of(&pair, word)).status, 201);
        bob_pair = bob.next();
    }
    assert_eq!(carol.next(), None, "every pair has its two labels");

    assert_eq!(alice.get("/api/stats").json()["you"], json!({"name": "alice", "labels": 3, "remaining": 0}));
    let admin_token = rlhf_ok(&["label", "annotator", "add", "--db", path_str(&db), "--admin", "lead"]).trim().to_string();
    let stats = server.client(&admin_token).get("/api/admin/stats").json();
    assert_eq!((stats["pairs"].as_i64(), stats["labels"].as_i64()), (Some(3), Some(7)));
    assert_eq!((stats["preferences"].as_i64(), stats["skips"].as_i64(), stats["ties"].as_i64()), (Some(6), Some(1), Some(0)));
    let annotators: Vec<(&str, i64)> =
        stats["annotators"].as_array().unwrap().iter().map(|a| (a["name"].as_str().unwrap(), a["labels"].as_i64().unwrap())).collect();
    assert_eq!(annotators, [("alice", 3), ("bob", 3), ("carol", 1)]);
    assert!(stats["annotators"][0]["labels_per_hour"].as_f64().unwrap() > 0.0);
    // Outcomes (alice, bob): (A, A), (B, B), (B, A): p_o = 2/3, p_e = 4/9, Cohen's κ = 0.4.
    let agreement = &stats["agreement"];
    assert_eq!((agreement["items"].as_i64(), agreement["annotators"].as_i64()), (Some(3), Some(2)));
    assert_eq!(agreement["kappa_kind"], "cohen");
    assert!((agreement["pairwise_agreement"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9, "{agreement}");
    assert!((agreement["kappa"].as_f64().unwrap() - 0.4).abs() < 1e-9, "{agreement}");
}

#[test]
fn undo_takes_back_the_last_label_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with(dir.path(), &numbered_pairs(3));
    let token = add_annotator(&db, "alice");
    let (server, clock) = Server::start_with_clock(&db, &["--undo-secs", "60"]);
    let alice = server.client(&token);

    assert_eq!(alice.delete("/api/labels/last").status, 404, "nothing to undo yet");
    let first = alice.next().unwrap();
    let first_id = first["pair_id"].as_i64().unwrap();
    assert_eq!(alice.label(first_id, "tie").status, 201);
    let second = alice.next().unwrap();
    assert_ne!(second["pair_id"], first["pair_id"]);

    clock.advance(Duration::from_secs(55));
    let undone = alice.delete("/api/labels/last");
    assert_eq!(undone.status, 200, "{}", undone.body);
    assert_eq!((undone.json()["pair_id"].as_i64(), undone.json()["preferred"].as_str()), (Some(first_id), Some("tie")));
    assert_eq!(alice.next().unwrap(), first, "the undone pair comes back, same order");
    let labels: Vec<(i64,)> = db_rows(&db, "SELECT count(*) FROM labels");
    assert_eq!(labels, [(0,)]);
    assert_eq!(alice.delete("/api/labels/last").status, 404, "one undo per label");

    assert_eq!(alice.label(first_id, "left").status, 201);
    clock.advance(Duration::from_secs(61));
    let late = alice.delete("/api/labels/last");
    assert_eq!(late.status, 409, "{}", late.body);
    assert!(late.error().contains("older than 60 s"), "{}", late.error());
    // The pair released by the undo comes back later, in the order alice first saw it.
    assert_eq!(alice.next().unwrap(), second);
}

#[test]
fn markup_quotes_sql_and_emoji_are_stored_and_returned_verbatim_in_nfc() {
    let dir = tempfile::tempdir().unwrap();
    let pair = json!({"prompt": NASTY_PROMPT, "response_a": NASTY_A, "response_b": NASTY_B, "note": "<i>meta</i>"});
    let db = database_with(dir.path(), &[pair]);
    let token = add_annotator(&db, "O'Brien <admin>");
    let server = Server::start(&db, &[]);
    let client = server.client(&token);

    let shown = client.next().unwrap();
    assert_eq!(shown["prompt"], NASTY_PROMPT);
    let mut responses = [shown["left"].as_str().unwrap(), shown["right"].as_str().unwrap()];
    responses.sort();
    let mut expected = [NASTY_A, NASTY_B_NFC];
    expected.sort();
    assert_eq!(responses, expected);
    let chosen = shown["left"].clone();
    assert_eq!(client.label(shown["pair_id"].as_i64().unwrap(), "left").status, 201);
    assert_eq!(client.get("/api/stats").json()["you"]["name"], "O'Brien <admin>");

    let records = export(&db, dir.path(), &[]);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["prompt"], NASTY_PROMPT);
    assert_eq!(records[0]["chosen"], chosen);
    assert_eq!(records[0]["note"], "<i>meta</i>", "metadata kept");
    assert_eq!(records[0]["annotator"], "O'Brien <admin>");
    let tables: Vec<(String,)> = db_rows(&db, "SELECT name FROM sqlite_master WHERE name = 'labels'");
    assert_eq!(tables.len(), 1, "the SQL in the data stayed data");
}

#[test]
fn sigterm_stops_the_server_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with(dir.path(), &numbered_pairs(1));
    let mut server = Server::start(&db, &[]);
    let status = server.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(server.log_shows("server stopped", Duration::from_secs(5)), "{}", server.log());
}

#[test]
fn serve_listens_on_loopback_by_default_and_needs_an_existing_database() {
    let help = rlhf_ok(&["label", "serve", "--help"]);
    assert!(help.contains("[default: 127.0.0.1:8080]"), "{help}");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let error = rlhf_err(&["label", "serve", "--db", path_str(&missing), "--bind", "127.0.0.1:0"]);
    assert!(error.contains("no labeling database at") && error.contains("missing.db"), "{error}");
    assert!(!missing.exists(), "serve does not create a database");
}
