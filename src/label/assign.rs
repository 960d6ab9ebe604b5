//! Handing pairs to annotators and recording their labels.
//!
//! An assignment leases a pair to one annotator, in a random left/right order, until the lease
//! runs out. A pair is handed out while it has fewer than `labels_per_pair` claims (open leases
//! plus judgements), never twice to the same annotator. Leases that ran out are expired lazily,
//! at the next request for a pair, so abandoned pairs come back without a background task.
//! Skips do not use up a slot: the pair goes on to someone else.

use std::time::Duration;

use super::store::{now_ms, Store};
use super::LabelError;

/// How pairs are handed out; set by `rlhf label serve`.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Labels (left, right or tie) wanted per pair, each from a different annotator.
    pub labels_per_pair: u32,
    /// How long a pair stays reserved for the annotator it was handed to.
    pub lease: Duration,
    /// How long after labeling an annotator may still take their label back.
    pub undo_window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self { labels_per_pair: 1, lease: Duration::from_secs(600), undo_window: Duration::from_secs(30) }
    }
}

/// An annotator's answer, relative to what they saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preferred {
    Left,
    Right,
    Tie,
    Skip,
}

impl Preferred {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Right => "right",
            Self::Tie => "tie",
            Self::Skip => "skip",
        }
    }

    /// Parses what the database holds (its CHECK constraint admits only these).
    pub(crate) fn from_db(text: &str) -> Result<Self, LabelError> {
        match text {
            "left" => Ok(Self::Left),
            "right" => Ok(Self::Right),
            "tie" => Ok(Self::Tie),
            "skip" => Ok(Self::Skip),
            other => Err(LabelError::Database(sqlx::Error::Decode(format!("unknown label `{other}`").into()))),
        }
    }
}

/// A pair as one annotator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShownPair {
    pub pair_id: i64,
    pub prompt: String,
    pub left: String,
    pub right: String,
}

impl ShownPair {
    fn new(pair_id: i64, prompt: String, response_a: String, response_b: String, swapped: bool) -> Self {
        let (left, right) = if swapped { (response_b, response_a) } else { (response_a, response_b) };
        Self { pair_id, prompt, left, right }
    }
}

/// A label as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecordedLabel {
    pub pair_id: i64,
    pub preferred: Preferred,
    pub labeled_at_ms: i64,
}

type PairRow = (i64, String, String, String, bool);

impl Store {
    /// The pair this annotator should label now: the one they already hold if its lease runs,
    /// else a new one; `None` when nothing is left for them.
    pub async fn next_pair(&self, annotator_id: i64, policy: &Policy) -> Result<Option<ShownPair>, LabelError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE assignments SET state = 'expired' WHERE state = 'open' AND expires_at <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let held: Option<PairRow> = sqlx::query_as(
            "SELECT p.id, p.prompt, p.response_a, p.response_b, a.swapped FROM assignments a \
             JOIN pairs p ON p.id = a.pair_id WHERE a.annotator_id = ? AND a.state = 'open'",
        )
        .bind(annotator_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((pair_id, prompt, response_a, response_b, swapped)) = held {
            tx.commit().await?;
            return Ok(Some(ShownPair::new(pair_id, prompt, response_a, response_b, swapped)));
        }
        // An annotator's own expired lease does not exclude the pair: it comes back to them
        // (in the order they saw it) when nobody else took it.
        let candidate: Option<(i64, String, String, String)> = sqlx::query_as(
            "SELECT p.id, p.prompt, p.response_a, p.response_b FROM pairs p \
             WHERE p.claims < ?1 AND NOT EXISTS (SELECT 1 FROM assignments a \
                 WHERE a.pair_id = p.id AND a.annotator_id = ?2 AND a.state != 'expired') \
             ORDER BY p.claims DESC, p.id LIMIT 1",
        )
        .bind(policy.labels_per_pair)
        .bind(annotator_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((pair_id, prompt, response_a, response_b)) = candidate else {
            tx.commit().await?;
            return Ok(None);
        };
        // Drawn before the query: the thread-local RNG must not live across an await.
        let random_order: bool = rand::random();
        let swapped: bool = sqlx::query_scalar(
            "INSERT INTO assignments (pair_id, annotator_id, swapped, state, assigned_at, expires_at) \
             VALUES (?1, ?2, ?3, 'open', ?4, ?5) \
             ON CONFLICT (pair_id, annotator_id) DO UPDATE \
                 SET state = 'open', assigned_at = excluded.assigned_at, expires_at = excluded.expires_at \
             RETURNING swapped",
        )
        .bind(pair_id)
        .bind(annotator_id)
        .bind(random_order)
        .bind(now)
        .bind(now.saturating_add(duration_ms(policy.lease)))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(ShownPair::new(pair_id, prompt, response_a, response_b, swapped)))
    }

    /// Records a label for a pair handed to this annotator. A label that arrives after the lease
    /// ran out is still taken while the pair lacks labels (skips always are).
    pub async fn record_label(
        &self,
        annotator_id: i64,
        pair_id: i64,
        preferred: Preferred,
        policy: &Policy,
    ) -> Result<RecordedLabel, LabelError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let found: Option<(Option<i64>, Option<String>, Option<i64>, i64)> = sqlx::query_as(
            "SELECT a.id, a.state, a.assigned_at, \
                 (SELECT count(*) FROM assignments j WHERE j.pair_id = p.id AND j.state = 'judged') \
             FROM pairs p LEFT JOIN assignments a ON a.pair_id = p.id AND a.annotator_id = ?2 \
             WHERE p.id = ?1",
        )
        .bind(pair_id)
        .bind(annotator_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((assignment, state, assigned_at, judged)) = found else {
            return Err(LabelError::UnknownPair(pair_id));
        };
        let (Some(assignment_id), Some(state), Some(assigned_at)) = (assignment, state, assigned_at) else {
            return Err(LabelError::NotAssigned(pair_id));
        };
        if state == "judged" || state == "skipped" {
            return Err(LabelError::AlreadyLabeled(pair_id));
        }
        if preferred != Preferred::Skip && judged >= i64::from(policy.labels_per_pair) {
            return Err(LabelError::PairFull(pair_id));
        }
        sqlx::query("INSERT INTO labels (assignment_id, preferred, labeled_at, time_spent_ms) VALUES (?, ?, ?, ?)")
            .bind(assignment_id)
            .bind(preferred.as_str())
            .bind(now)
            .bind((now - assigned_at).max(0))
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE assignments SET state = ? WHERE id = ?")
            .bind(if preferred == Preferred::Skip { "skipped" } else { "judged" })
            .bind(assignment_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RecordedLabel { pair_id, preferred, labeled_at_ms: now })
    }

    /// Takes back this annotator's most recent label if it is younger than the undo window; the
    /// pair becomes theirs to label again (same left/right), and the pair they held instead is
    /// released.
    pub async fn undo_last_label(&self, annotator_id: i64, policy: &Policy) -> Result<RecordedLabel, LabelError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let last: Option<(i64, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT l.id, a.id, a.pair_id, l.preferred, l.labeled_at FROM labels l \
             JOIN assignments a ON a.id = l.assignment_id \
             WHERE a.annotator_id = ? ORDER BY l.id DESC LIMIT 1",
        )
        .bind(annotator_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((label_id, assignment_id, pair_id, preferred, labeled_at)) = last else {
            return Err(LabelError::NothingToUndo);
        };
        if now.saturating_sub(labeled_at) > duration_ms(policy.undo_window) {
            return Err(LabelError::UndoTooLate(policy.undo_window.as_secs()));
        }
        sqlx::query("DELETE FROM labels WHERE id = ?").bind(label_id).execute(&mut *tx).await?;
        sqlx::query("UPDATE assignments SET state = 'expired', expires_at = ? WHERE annotator_id = ? AND state = 'open'")
            .bind(now)
            .bind(annotator_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE assignments SET state = 'open', assigned_at = ?, expires_at = ? WHERE id = ?")
            .bind(now)
            .bind(now.saturating_add(duration_ms(policy.lease)))
            .bind(assignment_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RecordedLabel { pair_id, preferred: Preferred::from_db(&preferred)?, labeled_at_ms: labeled_at })
    }
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
