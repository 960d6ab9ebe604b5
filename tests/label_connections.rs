//! `rlhf label serve` under slow, stalled and idle clients, live over raw sockets: header, request
//! and idle timeouts, the shutdown deadline, and the connection cap under a low open-file limit.
//! Each limit is set small (2 s) and the others large, so that only the one tested can close.

mod label_support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use label_support::*;

/// The limits not under test: far beyond any test's length.
const LONG: &str = "60";

fn labeling_database(dir: &tempfile::TempDir) -> (PathBuf, String) {
    let db = database_with(dir.path(), &numbered_pairs(5));
    let token = add_annotator(&db, "alice");
    (db, token)
}

fn connect(addr: &str) -> TcpStream {
    TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Reads until the server closes the connection and returns what it sent and how long after
/// `since` it closed; panics if it is still open `limit` after `since`.
fn read_until_closed(stream: &mut TcpStream, since: Instant, limit: Duration) -> (String, Duration) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = limit.checked_sub(since.elapsed()).filter(|left| !left.is_zero());
        let Some(left) = left else { panic!("connection still open {limit:?} on; received {:?}", String::from_utf8_lossy(&received)) };
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => panic!("reading: {e}"),
        }
    }
    (String::from_utf8_lossy(&received).into_owned(), since.elapsed())
}

/// Reads one answer (headers, then `Content-Length` bytes) and leaves the connection open.
fn read_answer(stream: &mut TcpStream) -> (u16, String) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut received = Vec::new();
    let mut byte = [0u8; 1];
    while !received.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed within the headers: {:?}", String::from_utf8_lossy(&received));
        received.push(byte[0]);
    }
    let head = String::from_utf8(received).unwrap();
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("no status line: {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|value| value.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("no Content-Length: {head:?}"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

fn next_pair_request(token: &str) -> String {
    format!("GET /api/pairs/next HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\r\n")
}

/// A label whose body is promised (100 bytes) but only begun (10): the server waits for the rest.
fn stalled_label_request(token: &str) -> String {
    let start = "{\"pair_id\"";
    assert_eq!(start.len(), 10);
    format!("POST /api/labels HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{start}")
}

fn assert_between(what: &str, took: Duration, low: f64, high: f64) {
    let secs = took.as_secs_f64();
    eprintln!("{what}: {secs:.2} s");
    assert!((low..=high).contains(&secs), "{what} after {secs:.2} s, expected {low}–{high} s");
}

#[test]
fn headers_must_arrive_within_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (db, token) = labeling_database(&dir);
    let server = Server::start(&db, &["--header-timeout-secs", "2", "--request-timeout-secs", LONG, "--idle-timeout-secs", LONG]);

    let since = Instant::now();
    let mut half = connect(&server.addr);
    half.write_all(b"GET /api/pairs/next HTTP/1.1\r\nHost: test\r\n").unwrap();
    let mut silent = connect(&server.addr);
    // A kept-alive connection waits for its next request's headers under the same timeout.
    let mut kept_alive = connect(&server.addr);
    kept_alive.write_all(next_pair_request(&token).as_bytes()).unwrap();
    let (status, _) = read_answer(&mut kept_alive);
    assert_eq!(status, 200);
    let answered = Instant::now();

    let (_, took) = read_until_closed(&mut half, since, Duration::from_secs(6));
    assert_between("half the headers: closed", took, 1.8, 6.0);
    let (_, took) = read_until_closed(&mut silent, since, Duration::from_secs(6));
    assert_between("nothing sent: closed", took, 1.8, 6.0);
    let (_, took) = read_until_closed(&mut kept_alive, answered, Duration::from_secs(6));
    assert_between("kept alive after an answer: closed", took, 1.8, 6.0);

    // The server itself goes on.
    assert!(server.client(&token).next().is_some());
}

#[test]
fn a_stalled_body_gets_408_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (db, token) = labeling_database(&dir);
    let server = Server::start(&db, &["--request-timeout-secs", "2", "--header-timeout-secs", LONG, "--idle-timeout-secs", LONG]);

    let since = Instant::now();
    let mut stalled = connect(&server.addr);
    stalled.write_all(stalled_label_request(&token).as_bytes()).unwrap();

    let asked = Instant::now();
    let pair = server.client(&token).next();
    assert!(pair.is_some(), "another connection is served meanwhile");
    assert_between("a normal request meanwhile: answered", asked.elapsed(), 0.0, 1.0);

    let (answer, took) = read_until_closed(&mut stalled, since, Duration::from_secs(6));
    assert_between("stalled body: answered and closed", took, 1.8, 6.0);
    assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer:?}");
    assert!(answer.contains("\"error\""), "answer: {answer:?}");
    assert!(server.log_shows("408", Duration::from_secs(5)), "the timeout is logged; log:\n{}", server.log());
}

#[test]
fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (db, token) = labeling_database(&dir);
    let server = Server::start(&db, &["--idle-timeout-secs", "2", "--header-timeout-secs", LONG, "--request-timeout-secs", LONG]);

    let mut stream = connect(&server.addr);
    stream.write_all(next_pair_request(&token).as_bytes()).unwrap();
    let (status, _) = read_answer(&mut stream);
    assert_eq!(status, 200);
    let answered = Instant::now();
    // Still open (and usable) before the limit.
    std::thread::sleep(Duration::from_millis(1000));
    stream.write_all(next_pair_request(&token).as_bytes()).unwrap();
    let (status, _) = read_answer(&mut stream);
    assert_eq!(status, 200, "the connection serves a second request within the idle timeout");
    assert!(answered.elapsed() < Duration::from_secs(2));
    let answered = Instant::now();

    let (_, took) = read_until_closed(&mut stream, answered, Duration::from_secs(6));
    assert_between("idle kept-alive connection: closed", took, 1.8, 6.0);
}

#[test]
fn sigterm_stops_the_server_by_the_shutdown_deadline_despite_stalled_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (db, token) = labeling_database(&dir);
    let mut server = Server::start(
        &db,
        &["--shutdown-grace-secs", "2", "--header-timeout-secs", LONG, "--request-timeout-secs", LONG, "--idle-timeout-secs", LONG],
    );

    let mut half = connect(&server.addr);
    half.write_all(b"GET /api/pairs/next HTTP/1.1\r\nHost: test\r\n").unwrap();
    let mut stalled = connect(&server.addr);
    stalled.write_all(stalled_label_request(&token).as_bytes()).unwrap();
    // Let the server take both in (the label's handler then waits for its body).
    std::thread::sleep(Duration::from_millis(500));

    let signalled = Instant::now();
    let status = server.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}; log:\n{}", server.log());
    assert_between("SIGTERM with stalled clients: exited", signalled.elapsed(), 1.8, 4.5);
    assert!(server.log_shows("shutdown deadline", Duration::from_secs(5)), "log:\n{}", server.log());
    for stream in [&mut half, &mut stalled] {
        read_until_closed(stream, Instant::now(), Duration::from_secs(2));
    }
}

#[test]
fn idle_connections_cannot_lock_out_an_annotator_under_a_low_open_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (db, token) = labeling_database(&dir);
    // Only the cap can make room: no timeout closes a connection during the test.
    let server = Server::start_with_fd_limit(
        &db,
        128,
        &["--header-timeout-secs", LONG, "--request-timeout-secs", LONG, "--idle-timeout-secs", "120"],
    );
    let expected_cap = 128 - rlhf_lab::http::connections::RESERVED_FDS;
    let announced = format!("serving at most {expected_cap} connections at once");
    assert!(server.log_shows(&announced, Duration::from_secs(5)), "no `{announced}` in the log:\n{}", server.log());

    let mut idle: Vec<TcpStream> = (0..150).map(|_| connect(&server.addr)).collect();
    let asked = Instant::now();
    let pair = server.client(&token).next();
    assert!(pair.is_some());
    assert_between("a normal request beside 150 idle connections: answered", asked.elapsed(), 0.0, 3.0);

    // Room was made by closing the longest-idle connections, the first opened among them.
    read_until_closed(&mut idle[0], Instant::now(), Duration::from_secs(2));
    assert!(!server.log().contains("cannot accept"), "the cap kept the server within its file limit; log:\n{}", server.log());
}
