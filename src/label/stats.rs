//! Counts, annotator throughput and inter-annotator agreement (Cohen's κ for two annotators,
//! Fleiss' κ for more), for `GET /api/admin/stats` and `rlhf label stats`, and each annotator's
//! own progress for `GET /api/stats`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use super::assign::{Outcome, Preferred};
use super::store::{now_ms, rfc3339_sql, Store};
use super::LabelError;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Stats {
    pub pairs: i64,
    /// Pairs with at least one judgement (left, right or tie).
    pub pairs_labeled: i64,
    /// Every label: judgements and skips.
    pub labels: i64,
    /// Labels that prefer one response.
    pub preferences: i64,
    pub ties: i64,
    pub skips: i64,
    /// Pairs handed out whose lease still runs.
    pub open_assignments: i64,
    pub annotators: Vec<AnnotatorStats>,
    /// Over pairs judged by at least two annotators; `None` when there are none.
    pub agreement: Option<Agreement>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AnnotatorStats {
    pub name: String,
    pub labels: i64,
    pub preferences: i64,
    pub ties: i64,
    pub skips: i64,
    pub first_label_at: Option<String>,
    pub last_label_at: Option<String>,
    /// Labels over the time from the first to the last one; `None` below two labels.
    pub labels_per_hour: Option<f64>,
    /// Mean time from being handed a pair to labeling it.
    pub mean_seconds_per_label: Option<f64>,
    /// Removed with `rlhf label annotator remove`: their token no longer works, their labels stay.
    pub removed: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Agreement {
    /// Pairs judged by at least two annotators.
    pub items: usize,
    pub annotators: usize,
    /// Share of annotator pairs on the same item that gave the same judgement.
    pub pairwise_agreement: f64,
    /// `None` when chance agreement is already perfect (every judgement the same).
    pub kappa: Option<f64>,
    pub kappa_kind: KappaKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KappaKind {
    Cohen,
    Fleiss,
}

/// One annotator's progress, for the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// Their labels, skips included.
    pub labels: i64,
    /// Pairs that still want labels and that they have neither labeled nor skipped.
    pub remaining: i64,
}

/// Name, labels, ties, skips, first and last label time, span in ms, mean seconds per label,
/// removed.
type AnnotatorRow = (String, i64, i64, i64, Option<String>, Option<String>, Option<i64>, Option<f64>, bool);

impl Store {
    pub async fn stats(&self) -> Result<Stats, LabelError> {
        let db = self.reader();
        let (pairs, pairs_labeled): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pairs), \
                    (SELECT count(DISTINCT pair_id) FROM assignments WHERE state = 'judged')",
        )
        .fetch_one(db)
        .await?;
        let open_assignments: i64 = sqlx::query_scalar("SELECT count(*) FROM assignments WHERE state = 'open' AND expires_at > ?")
            .bind(now_ms())
            .fetch_one(db)
            .await?;
        let rows: Vec<AnnotatorRow> = sqlx::query_as(&format!(
            "SELECT n.name, \
                     count(l.id), \
                     coalesce(sum(l.preferred = 'tie'), 0), \
                     coalesce(sum(l.preferred = 'skip'), 0), \
                     {first}, {last}, max(l.labeled_at) - min(l.labeled_at), \
                     avg(l.time_spent_ms) / 1000.0, n.removed_at IS NOT NULL \
                 FROM annotators n \
                 LEFT JOIN assignments a ON a.annotator_id = n.id \
                 LEFT JOIN labels l ON l.assignment_id = a.id \
                 WHERE n.role = 'annotator' \
                 GROUP BY n.id ORDER BY n.name",
            first = rfc3339_sql("min(l.labeled_at)"),
            last = rfc3339_sql("max(l.labeled_at)"),
        ))
        .fetch_all(db)
        .await?;
        let annotators: Vec<AnnotatorStats> = rows
            .into_iter()
            .map(|(name, labels, ties, skips, first_label_at, last_label_at, span_ms, mean_seconds_per_label, removed)| {
                let labels_per_hour = match span_ms {
                    Some(span_ms) if labels >= 2 && span_ms > 0 => Some(labels as f64 * 3_600_000.0 / span_ms as f64),
                    _ => None,
                };
                AnnotatorStats {
                    name,
                    labels,
                    preferences: labels - ties - skips,
                    ties,
                    skips,
                    first_label_at,
                    last_label_at,
                    labels_per_hour,
                    mean_seconds_per_label,
                    removed,
                }
            })
            .collect();
        let labels = annotators.iter().map(|a| a.labels).sum();
        let ties = annotators.iter().map(|a| a.ties).sum();
        let skips = annotators.iter().map(|a| a.skips).sum();
        Ok(Stats {
            pairs,
            pairs_labeled,
            labels,
            preferences: labels - ties - skips,
            ties,
            skips,
            open_assignments,
            annotators,
            agreement: self.agreement().await?,
        })
    }

    async fn agreement(&self) -> Result<Option<Agreement>, LabelError> {
        let rows: Vec<(i64, i64, String, bool)> = sqlx::query_as(
            "SELECT a.pair_id, a.annotator_id, l.preferred, a.swapped FROM assignments a \
             JOIN labels l ON l.assignment_id = a.id \
             WHERE a.state = 'judged' AND a.pair_id IN \
                 (SELECT pair_id FROM assignments WHERE state = 'judged' GROUP BY pair_id HAVING count(*) >= 2) \
             ORDER BY a.pair_id",
        )
        .fetch_all(self.reader())
        .await?;
        let mut judgements: Vec<(i64, i64, Outcome)> = Vec::with_capacity(rows.len());
        for (pair_id, annotator_id, preferred, swapped) in rows {
            // Judged assignments hold no skips.
            if let Some(outcome) = Preferred::from_db(&preferred)?.outcome(swapped) {
                judgements.push((pair_id, annotator_id, outcome));
            }
        }
        Ok(agreement(&judgements))
    }

    pub async fn progress(&self, annotator_id: i64, labels_per_pair: u32) -> Result<Progress, LabelError> {
        let (labels, remaining): (i64, i64) = sqlx::query_as(
            "SELECT \
                 (SELECT count(*) FROM assignments WHERE annotator_id = ?1 AND state IN ('judged', 'skipped')), \
                 (SELECT count(*) FROM pairs p \
                  WHERE (SELECT count(*) FROM assignments j WHERE j.pair_id = p.id AND j.state = 'judged') < ?2 \
                    AND NOT EXISTS (SELECT 1 FROM assignments m WHERE m.pair_id = p.id AND m.annotator_id = ?1 \
                                    AND m.state IN ('judged', 'skipped')))",
        )
        .bind(annotator_id)
        .bind(labels_per_pair)
        .fetch_one(self.reader())
        .await?;
        Ok(Progress { labels, remaining })
    }
}

/// Agreement over `(item, annotator, outcome)` judgements, rows of one item adjacent.
fn agreement(judgements: &[(i64, i64, Outcome)]) -> Option<Agreement> {
    let items: Vec<&[(i64, i64, Outcome)]> = judgements.chunk_by(|x, y| x.0 == y.0).filter(|item| item.len() >= 2).collect();
    if items.is_empty() {
        return None;
    }
    let annotators: BTreeSet<i64> = items.iter().flat_map(|item| item.iter().map(|j| j.1)).collect();
    let (mut agreeing, mut compared) = (0usize, 0usize);
    for item in &items {
        for (i, first) in item.iter().enumerate() {
            for second in &item[i + 1..] {
                compared += 1;
                agreeing += usize::from(first.2 == second.2);
            }
        }
    }
    let (kappa, kappa_kind) = if annotators.len() == 2 {
        // Two annotators: every item holds exactly one judgement from each.
        let ordered: Vec<(Outcome, Outcome)> =
            items.iter().map(|item| if item[0].1 < item[1].1 { (item[0].2, item[1].2) } else { (item[1].2, item[0].2) }).collect();
        (cohen_kappa(&ordered), KappaKind::Cohen)
    } else {
        let counts: Vec<HashMap<Outcome, usize>> = items
            .iter()
            .map(|item| {
                item.iter().fold(HashMap::new(), |mut counts, j| {
                    *counts.entry(j.2).or_insert(0) += 1;
                    counts
                })
            })
            .collect();
        (fleiss_kappa(&counts), KappaKind::Fleiss)
    };
    Some(Agreement {
        items: items.len(),
        annotators: annotators.len(),
        pairwise_agreement: agreeing as f64 / compared as f64,
        kappa,
        kappa_kind,
    })
}

/// Cohen's κ of two raters' judgements, one `(first rater, second rater)` tuple per item.
fn cohen_kappa<C: Copy + Eq + std::hash::Hash>(ratings: &[(C, C)]) -> Option<f64> {
    let n = ratings.len() as f64;
    let observed = ratings.iter().filter(|(x, y)| x == y).count() as f64 / n;
    let mut marginals: HashMap<C, (f64, f64)> = HashMap::new();
    for &(x, y) in ratings {
        marginals.entry(x).or_default().0 += 1.0;
        marginals.entry(y).or_default().1 += 1.0;
    }
    let chance: f64 = marginals.values().map(|(x, y)| (x / n) * (y / n)).sum();
    kappa(observed, chance)
}

/// Fleiss' κ from per-item category counts; items may have different numbers of raters (each
/// item's agreement is taken over its own raters).
fn fleiss_kappa<C: Copy + Eq + std::hash::Hash>(items: &[HashMap<C, usize>]) -> Option<f64> {
    let mut totals: HashMap<C, f64> = HashMap::new();
    let mut all_ratings = 0.0;
    let mut mean_agreement = 0.0;
    for counts in items {
        let raters: usize = counts.values().sum();
        let same: usize = counts.values().map(|c| c * c.saturating_sub(1)).sum();
        mean_agreement += same as f64 / (raters * (raters - 1)) as f64;
        for (&category, &count) in counts {
            *totals.entry(category).or_default() += count as f64;
        }
        all_ratings += raters as f64;
    }
    mean_agreement /= items.len() as f64;
    let chance: f64 = totals.values().map(|t| (t / all_ratings).powi(2)).sum();
    kappa(mean_agreement, chance)
}

fn kappa(observed: f64, chance: f64) -> Option<f64> {
    (chance < 1.0 - 1e-12).then(|| (observed - chance) / (1.0 - chance))
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pairs: {} ({} with a judgement)", self.pairs, self.pairs_labeled)?;
        writeln!(
            f,
            "labels: {} ({} preferences, {} ties, {} skips); open assignments: {}",
            self.labels, self.preferences, self.ties, self.skips, self.open_assignments
        )?;
        writeln!(f, "annotators: {}", self.annotators.len())?;
        for a in &self.annotators {
            let rate = a.labels_per_hour.map_or("-".to_string(), |r| format!("{r:.0}/h"));
            let mean = a.mean_seconds_per_label.map_or("-".to_string(), |s| format!("{s:.1} s"));
            writeln!(
                f,
                "  {:<20} {:>6} labels ({} ties, {} skips)  {:>9}  {:>8} per label  last {}{}",
                a.name,
                a.labels,
                a.ties,
                a.skips,
                rate,
                mean,
                a.last_label_at.as_deref().unwrap_or("-"),
                if a.removed { "  (removed)" } else { "" }
            )?;
        }
        match &self.agreement {
            None => writeln!(f, "agreement: no pair judged by two annotators yet"),
            Some(a) => writeln!(
                f,
                "agreement: {} pairs, {} annotators, pairwise {:.3}, {} kappa {}",
                a.items,
                a.annotators,
                a.pairwise_agreement,
                match a.kappa_kind {
                    KappaKind::Cohen => "Cohen's",
                    KappaKind::Fleiss => "Fleiss'",
                },
                a.kappa.map_or("undefined (all judgements alike)".to_string(), |k| format!("{k:.3}"))
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cohen_kappa_matches_the_textbook_example() {
        // 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 → p_o = 0.7, p_e = 0.5, κ = 0.4.
        let mut ratings = Vec::new();
        ratings.extend(std::iter::repeat_n((true, true), 20));
        ratings.extend(std::iter::repeat_n((true, false), 5));
        ratings.extend(std::iter::repeat_n((false, true), 10));
        ratings.extend(std::iter::repeat_n((false, false), 15));
        let kappa = cohen_kappa(&ratings).unwrap();
        assert!((kappa - 0.4).abs() < 1e-12, "{kappa}");
        assert_eq!(cohen_kappa(&[(1, 1), (1, 1)]), None, "all alike: κ undefined");
    }

    #[test]
    fn fleiss_kappa_matches_the_textbook_example() {
        // Fleiss (1971) as worked on Wikipedia: 10 items, 14 raters, 5 categories → κ ≈ 0.210.
        let table = [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ];
        let items: Vec<HashMap<usize, usize>> =
            table.iter().map(|row| row.iter().enumerate().filter(|(_, &c)| c > 0).map(|(k, &c)| (k, c)).collect()).collect();
        let kappa = fleiss_kappa(&items).unwrap();
        assert!((kappa - 0.20993).abs() < 1e-4, "{kappa}");
    }

    #[test]
    fn agreement_picks_cohen_for_two_annotators_and_fleiss_for_more() {
        use Outcome::*;
        let two = [(1, 10, A), (1, 11, A), (2, 10, B), (2, 11, A), (3, 10, Tie)];
        let agreement = agreement(&two).unwrap();
        assert_eq!((agreement.items, agreement.annotators, agreement.kappa_kind), (2, 2, KappaKind::Cohen));
        assert_eq!(agreement.pairwise_agreement, 0.5);
        let three = [(1, 10, A), (1, 11, A), (1, 12, B), (2, 10, B), (2, 12, B)];
        let agreement = super::agreement(&three).unwrap();
        assert_eq!((agreement.items, agreement.annotators, agreement.kappa_kind), (2, 3, KappaKind::Fleiss));
        assert!((agreement.pairwise_agreement - 2.0 / 4.0).abs() < 1e-12);
        assert_eq!(super::agreement(&[(1, 10, A), (2, 11, B)]), None, "no item has two judgements");
    }
}
