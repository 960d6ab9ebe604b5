//! Handing pairs to annotators and recording their labels.
//!
//! An assignment leases a pair to one annotator, in a random left/right order, until the lease
//! runs out. A pair is handed out while it has fewer than `labels_per_pair` claims (open leases
//! plus judgements), never twice to the same annotator. Leases that ran out are expired lazily,
//! by requests for pairs at most once a second, so abandoned pairs come back (within a second of
//! the lease's end) without a background task.
//! Skips do not use up a slot: the pair goes on to someone else.

use std::time::Duration;

use super::store::{now_ms, Store};
use super::LabelError;
use crate::data::chat::Message;

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

    /// What the label says about the stored responses, given the order the annotator saw them
    /// in (`swapped`: left showed response B); `None` for a skip, which judges nothing.
    pub fn outcome(self, swapped: bool) -> Option<Outcome> {
        match (self, swapped) {
            (Self::Left, false) | (Self::Right, true) => Some(Outcome::A),
            (Self::Left, true) | (Self::Right, false) => Some(Outcome::B),
            (Self::Tie, _) => Some(Outcome::Tie),
            (Self::Skip, _) => None,
        }
    }
}

/// A judgement in terms of the stored responses: A (`response_a`) or B preferred, or a tie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    A,
    B,
    Tie,
}

/// A pair as one annotator sees it; a conversational prompt comes with its `messages`, which the
/// page shows turn by turn.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShownPair {
    pub pair_id: i64,
    pub prompt: String,
    pub messages: Option<Vec<Message>>,
    pub left: String,
    pub right: String,
}

/// A leased pair as the queries below read it (`messages` as stored, JSON).
#[derive(sqlx::FromRow)]
struct LeasedRow {
    pair_id: i64,
    swapped: bool,
    prompt: String,
    messages: Option<String>,
    response_a: String,
    response_b: String,
}

/// The lease an annotator holds, with its expiry.
#[derive(sqlx::FromRow)]
struct HeldRow {
    expires_at: i64,
    #[sqlx(flatten)]
    pair: LeasedRow,
}

impl From<LeasedRow> for ShownPair {
    fn from(row: LeasedRow) -> Self {
        let (left, right) = if row.swapped { (row.response_b, row.response_a) } else { (row.response_a, row.response_b) };
        // The schema admits only JSON arrays, and only `import_pairs` writes them.
        let messages = row.messages.and_then(|json| serde_json::from_str(&json).ok());
        ShownPair { pair_id: row.pair_id, prompt: row.prompt, messages, left, right }
    }
}

/// A label as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecordedLabel {
    pub pair_id: i64,
    pub preferred: Preferred,
    pub labeled_at_ms: i64,
}

impl Store {
    /// The pair this annotator should label now: the one they already hold if its lease runs,
    /// else a new one; `None` when nothing is left for them.
    ///
    /// Handing out a pair is a single statement (so a single, short write transaction, and a
    /// single trip to the database): it leases the best candidate unless the annotator already
    /// holds a lease, and returns the pair's texts.
    pub async fn next_pair(&self, annotator_id: i64, policy: &Policy) -> Result<Option<ShownPair>, LabelError> {
        let now = now_ms();
        if self.lease_sweep_due(now) {
            self.expire_leases(now).await?;
        }
        // Drawn before the query: the thread-local RNG must not live across an await.
        let random_order: bool = rand::random();
        // Three rounds at most: a lease held at the insert may be labeled or expire before it
        // is read back.
        for _ in 0..3 {
            // An annotator's own expired lease does not exclude the pair: it comes back to them
            // (in the order they saw it) when nobody else took it.
            let leased: Option<LeasedRow> = sqlx::query_as(
                "INSERT INTO assignments (pair_id, annotator_id, swapped, state, assigned_at, expires_at) \
                 SELECT p.id, ?2, ?3, 'open', ?4, ?5 FROM pairs p \
                 WHERE p.claims < ?1 \
                   AND NOT EXISTS (SELECT 1 FROM assignments a \
                                   WHERE a.pair_id = p.id AND a.annotator_id = ?2 AND a.state != 'expired') \
                   AND NOT EXISTS (SELECT 1 FROM assignments h WHERE h.annotator_id = ?2 AND h.state = 'open') \
                 ORDER BY p.claims DESC, p.id LIMIT 1 \
                 ON CONFLICT (pair_id, annotator_id) DO UPDATE \
                     SET state = 'open', assigned_at = excluded.assigned_at, expires_at = excluded.expires_at \
                 RETURNING pair_id, swapped, \
                     (SELECT prompt FROM pairs WHERE id = pair_id) AS prompt, \
                     (SELECT messages FROM pairs WHERE id = pair_id) AS messages, \
                     (SELECT response_a FROM pairs WHERE id = pair_id) AS response_a, \
                     (SELECT response_b FROM pairs WHERE id = pair_id) AS response_b",
            )
            .bind(policy.labels_per_pair)
            .bind(annotator_id)
            .bind(random_order)
            .bind(now)
            .bind(now.saturating_add(duration_ms(policy.lease)))
            .fetch_optional(self.writer())
            .await?;
            if let Some(row) = leased {
                return Ok(Some(row.into()));
            }
            // Nothing was leased: the annotator holds a lease already, or nothing is left.
            let held: Option<HeldRow> = sqlx::query_as(
                "SELECT a.expires_at, p.id AS pair_id, a.swapped, p.prompt, p.messages, p.response_a, p.response_b \
                 FROM assignments a JOIN pairs p ON p.id = a.pair_id \
                 WHERE a.annotator_id = ? AND a.state = 'open'",
            )
            .bind(annotator_id)
            .fetch_optional(self.reader())
            .await?;
            match held {
                None => return Ok(None),
                Some(held) if held.expires_at > now => return Ok(Some(held.pair.into())),
                Some(_) => self.expire_leases(now).await?,
            }
        }
        Ok(None)
    }

    /// Marks leases that ran out by `now` as expired, which frees their pairs.
    async fn expire_leases(&self, now: i64) -> Result<(), LabelError> {
        sqlx::query("UPDATE assignments SET state = 'expired' WHERE state = 'open' AND expires_at <= ?")
            .bind(now)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// Records a label for a pair handed to this annotator. A label that arrives after the lease
    /// ran out is still taken while the pair has room beside the others' live claims — their
    /// judgements and their leases that still run — so a late label never takes the slot of
    /// someone labeling the pair right now (who would then be refused and handed the same pair
    /// again until their lease ran out). Skips are always taken.
    pub async fn record_label(
        &self,
        annotator_id: i64,
        pair_id: i64,
        preferred: Preferred,
        policy: &Policy,
    ) -> Result<RecordedLabel, LabelError> {
        let now = now_ms();
        // One statement, so one transaction: it stores the label only when every condition
        // holds, and a trigger settles the assignment with it.
        let stored: Option<i64> = sqlx::query_scalar(&format!(
            "INSERT INTO labels (assignment_id, preferred, labeled_at, time_spent_ms) \
             SELECT a.id, ?3, ?4, max(?4 - a.assigned_at, 0) FROM assignments a \
             WHERE a.pair_id = ?1 AND a.annotator_id = ?2 AND a.state IN ('open', 'expired') \
               AND (?3 = 'skip' OR ?5 > ({})) \
             RETURNING id",
            others_live_claims_sql("a.pair_id", "a.id", "?4")
        ))
        .bind(pair_id)
        .bind(annotator_id)
        .bind(preferred.as_str())
        .bind(now)
        .bind(policy.labels_per_pair)
        .fetch_optional(self.writer())
        .await?;
        match stored {
            Some(_) => Ok(RecordedLabel { pair_id, preferred, labeled_at_ms: now }),
            None => Err(self.label_refusal(annotator_id, pair_id).await?),
        }
    }

    /// Why a label for this pair was not stored.
    async fn label_refusal(&self, annotator_id: i64, pair_id: i64) -> Result<LabelError, LabelError> {
        let found: Option<(i64, Option<String>)> = sqlx::query_as(
            "SELECT p.id, a.state FROM pairs p \
             LEFT JOIN assignments a ON a.pair_id = p.id AND a.annotator_id = ?2 WHERE p.id = ?1",
        )
        .bind(pair_id)
        .bind(annotator_id)
        .fetch_optional(self.reader())
        .await?;
        Ok(match found {
            None => LabelError::UnknownPair(pair_id),
            Some((_, None)) => LabelError::NotAssigned(pair_id),
            Some((_, Some(state))) if state == "judged" || state == "skipped" => LabelError::AlreadyLabeled(pair_id),
            Some(_) => {
                // Others filled the pair: close this annotator's lease on it too, so that the
                // next request hands them another pair rather than this one again.
                sqlx::query("UPDATE assignments SET state = 'expired' WHERE pair_id = ? AND annotator_id = ? AND state = 'open'")
                    .bind(pair_id)
                    .bind(annotator_id)
                    .execute(self.writer())
                    .await?;
                LabelError::PairFull(pair_id)
            }
        })
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
        // A judgement held a slot and keeps it; a skip held none, and taking it back claims one,
        // which others may have filled meanwhile (the pair would come back unlabelable).
        if preferred == Preferred::Skip.as_str() {
            let others: i64 = sqlx::query_scalar(&others_live_claims_sql("?1", "?2", "?3"))
                .bind(pair_id)
                .bind(assignment_id)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            if others >= i64::from(policy.labels_per_pair) {
                return Err(LabelError::UndoPairTaken(pair_id));
            }
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

/// SQL counting the claims on `pair` of annotators other than the one holding `assignment` that
/// are alive at `now` (SQL expressions, e.g. placeholders): judgements and leases that still run.
fn others_live_claims_sql(pair: &str, assignment: &str, now: &str) -> String {
    format!(
        "SELECT count(*) FROM assignments j WHERE j.pair_id = {pair} AND j.id != {assignment} \
         AND (j.state = 'judged' OR (j.state = 'open' AND j.expires_at > {now}))"
    )
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
