//! The SQLite database behind labeling: opening it (migrations, WAL, foreign keys), the
//! connection pools, and annotators with their hashed tokens.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Sqlite, Transaction};

use super::LabelError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

const LEASE_SWEEP_INTERVAL_MS: i64 = 1000;
const MMAP_BYTES: u64 = 1 << 30;
const CACHE_KIB: u64 = 64 * 1024;

/// Readers run side by side under WAL; more than a few buys nothing on a small machine.
const READER_CONNECTIONS: u32 = 4;

/// An open labeling database. Cloning is cheap (the pools are shared).
///
/// Every write goes through a single connection, one `BEGIN IMMEDIATE` transaction per write:
/// SQLite allows one writer at a time anyway, and queueing in the pool is fairer and faster
/// than SQLite's sleep-and-retry busy handler. WAL with `synchronous = NORMAL` makes a commit
/// durable against a killed process (the WAL is written before COMMIT returns); only a power
/// cut can lose the last commits.
#[derive(Clone)]
pub struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
    path: PathBuf,
    /// When leases were last swept for expiry (unix ms); see `lease_sweep_due`.
    lease_swept_at: Arc<AtomicI64>,
}

/// An annotator, as the server knows them after checking a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotator {
    pub id: i64,
    pub name: String,
    pub role: Role,
}

/// What a token may do: label (and see only one's own progress), or read every figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Annotator,
    /// Reads agreement and per-annotator figures (`GET /api/admin/stats`); does not label, so
    /// that no judgement is made by someone who can see the others'.
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Annotator => "annotator",
            Self::Admin => "admin",
        }
    }
}

impl Store {
    /// Opens the database at `path`, creating it when missing (import, annotator add).
    pub async fn open_or_create(path: &Path) -> Result<Self, LabelError> {
        Self::connect(path, true).await
    }

    /// Opens an existing database (serve, export, stats): a missing file is an error rather
    /// than a new, empty database.
    pub async fn open(path: &Path) -> Result<Self, LabelError> {
        if !path.exists() {
            return Err(LabelError::NoDatabase(path.into()));
        }
        Self::connect(path, false).await
    }

    async fn connect(path: &Path, create: bool) -> Result<Self, LabelError> {
        let open_error = |source| LabelError::Open { path: path.into(), source };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // Pages read through a memory map and a 64 MiB cache: far fewer system calls than
            // SQLite's 2 MiB default cache and pread(), which dominate a busy server's time.
            .pragma("mmap_size", MMAP_BYTES.to_string())
            .pragma("cache_size", format!("-{CACHE_KIB}"))
            .disable_statement_logging();
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                options.clone().create_if_missing(create).journal_mode(SqliteJournalMode::Wal).synchronous(SqliteSynchronous::Normal),
            )
            .await
            .map_err(open_error)?;
        MIGRATOR.run(&writer).await.map_err(|source| LabelError::Migrate { path: path.into(), source })?;
        let reader =
            SqlitePoolOptions::new().max_connections(READER_CONNECTIONS).connect_with(options.read_only(true)).await.map_err(open_error)?;
        Ok(Self { writer, reader, path: path.into(), lease_swept_at: Arc::new(AtomicI64::new(0)) })
    }

    /// Runs `work` on the existing database at `db` for callers outside an async runtime (the
    /// reward stage, reports): a runtime of its own, the store closed afterwards.
    pub(crate) fn read_blocking<T>(db: &Path, work: impl AsyncFnOnce(&Store) -> Result<T, LabelError>) -> Result<T, LabelError> {
        if !db.is_file() {
            return Err(LabelError::NoDatabase(db.to_path_buf()));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| LabelError::Open { path: db.into(), source: sqlx::Error::Io(source) })?;
        runtime.block_on(async { Store::open(db).await?.run_and_close(work).await })
    }

    /// Runs `work` on the store, then closes it whether or not the work succeeded.
    pub async fn run_and_close<T, E>(self, work: impl AsyncFnOnce(&Store) -> Result<T, E>) -> Result<T, E> {
        let result = work(&self).await;
        self.close().await;
        result
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for open connections to finish and closes them (the last one checkpoints the WAL).
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// A write transaction; IMMEDIATE takes the write lock up front, so a transaction that
    /// reads before it writes cannot fail halfway because another process wrote meanwhile.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, LabelError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Whether leases should be swept for expiry now: at most once a second, so that handing
    /// out pairs does not pay for a sweep each time. Claims the sweep when it answers yes.
    pub(crate) fn lease_sweep_due(&self, now: i64) -> bool {
        let last = self.lease_swept_at.load(Ordering::Relaxed);
        now - last >= LEASE_SWEEP_INTERVAL_MS
            && self.lease_swept_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// For single-statement writes (each its own transaction).
    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Adds an annotator (or an admin) and returns their token; only its sha256 is stored.
    pub async fn add_annotator(&self, name: &str, role: Role) -> Result<String, LabelError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(LabelError::EmptyAnnotatorName);
        }
        let token = new_token();
        let mut tx = self.begin_write().await?;
        let taken: Option<Option<i64>> =
            sqlx::query_scalar("SELECT removed_at FROM annotators WHERE name = ?").bind(name).fetch_optional(&mut *tx).await?;
        match taken {
            None => {}
            Some(None) => return Err(LabelError::AnnotatorExists(name.into())),
            Some(Some(_)) => return Err(LabelError::AnnotatorRemoved(name.into())),
        }
        sqlx::query("INSERT INTO annotators (name, token_sha256, created_at, role) VALUES (?, ?, ?, ?)")
            .bind(name)
            .bind(sha256_hex(token.as_bytes()))
            .bind(now_ms())
            .bind(role.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Revokes an annotator's token at once (the server looks tokens up on every request) and
    /// releases the pair they hold. Their labels stay, under their name.
    pub async fn remove_annotator(&self, name: &str) -> Result<(), LabelError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let id = active_annotator_id(&mut tx, name).await?;
        sqlx::query("UPDATE annotators SET removed_at = ? WHERE id = ?").bind(now).bind(id).execute(&mut *tx).await?;
        sqlx::query("UPDATE assignments SET state = 'expired', expires_at = ? WHERE annotator_id = ? AND state = 'open'")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives an annotator a new token and returns it; the old one stops working at once.
    pub async fn rotate_token(&self, name: &str) -> Result<String, LabelError> {
        let token = new_token();
        let mut tx = self.begin_write().await?;
        let id = active_annotator_id(&mut tx, name).await?;
        sqlx::query("UPDATE annotators SET token_sha256 = ? WHERE id = ?")
            .bind(sha256_hex(token.as_bytes()))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(token)
    }

    /// The annotator whose token this is, if any and not removed.
    pub async fn annotator_by_token(&self, token: &str) -> Result<Option<Annotator>, LabelError> {
        let row: Option<(i64, String, String)> =
            sqlx::query_as("SELECT id, name, role FROM annotators WHERE token_sha256 = ? AND removed_at IS NULL")
                .bind(sha256_hex(token.as_bytes()))
                .fetch_optional(&self.reader)
                .await?;
        Ok(row.map(|(id, name, role)| Annotator { id, name, role: if role == "admin" { Role::Admin } else { Role::Annotator } }))
    }
}

/// 256 random bits as 64 hex digits.
fn new_token() -> String {
    hex::encode(rand::rng().random::<[u8; 32]>())
}

async fn active_annotator_id(tx: &mut Transaction<'static, Sqlite>, name: &str) -> Result<i64, LabelError> {
    let name = name.trim();
    let found: Option<(i64, Option<i64>)> =
        sqlx::query_as("SELECT id, removed_at FROM annotators WHERE name = ?").bind(name).fetch_optional(&mut **tx).await?;
    match found {
        Some((id, None)) => Ok(id),
        Some((_, Some(_))) => Err(LabelError::AnnotatorRemoved(name.into())),
        None => Err(LabelError::UnknownAnnotator(name.into())),
    }
}

/// A test-only hook: with `RLHF_TEST_CLOCK_SHIFT=FILE`, the labeling clock runs ahead of the
/// system's by the milliseconds written in FILE (read at each reading; none or no file: 0), so
/// that tests of leases and the undo window move time forward instead of sleeping through it and
/// racing it on a loaded machine.
const CLOCK_SHIFT: &str = "RLHF_TEST_CLOCK_SHIFT";

/// Milliseconds since the Unix epoch: how the database stores time.
pub fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let now = i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX);
    now.saturating_add(test_clock_shift_ms())
}

fn test_clock_shift_ms() -> i64 {
    static SHIFT_FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    let Some(file) = SHIFT_FILE.get_or_init(|| std::env::var_os(CLOCK_SHIFT).map(PathBuf::from)) else { return 0 };
    std::fs::read_to_string(file).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(0)
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SQL that formats a unix-milliseconds column as RFC 3339 UTC, e.g. `2025-01-31T12:00:00.250Z`.
pub(crate) fn rfc3339_sql(column: &str) -> String {
    format!("strftime('%Y-%m-%dT%H:%M:%fZ', {column} / 1000.0, 'unixepoch')")
}
