//! The "Human preference leaderboard" section (`rlhf report --labels DB`): the checkpoints rated
//! by people's judgements in a labeling database, as `rlhf label leaderboard` rates them.

use std::path::{Path, PathBuf};

use super::table::{Cell, Table};
use super::ReportError;
use crate::label::leaderboard::{self, Leaderboard, Settings};
use crate::label::LabelError;

#[derive(Debug, Clone)]
pub struct Section {
    pub db: PathBuf,
    /// What the table rates and how, or why there is no table.
    pub summary: String,
    /// Best first; the top rating marked best.
    pub table: Option<Table>,
}

/// The section for the database at `db`. A database without pairs between models, or without
/// judgements on them, gives a section that says so; a missing or unreadable one is an error.
pub fn section(db: &Path, settings: Settings) -> Result<Section, ReportError> {
    let (summary, table) = match leaderboard::read_leaderboard(db, settings) {
        Ok(board) => (summary(&board), Some(table(&board))),
        Err(error @ (LabelError::NoModelPairs | LabelError::NothingJudged(_))) => (format!("No leaderboard: {error}."), None),
        Err(error) => return Err(ReportError::Labels { path: db.into(), message: error.to_string() }),
    };
    Ok(Section { db: db.into(), summary, table })
}

fn summary(board: &Leaderboard) -> String {
    format!(
        "{} checkpoints rated from {} human judgements of pairs whose responses come from two of them: a Bradley–Terry model \
         fitted by maximum likelihood (a tie counts ½ to each side), on Elo's scale (400 points are odds of 10 to 1) around \
         1000; {:.0} % percentile-bootstrap intervals over the judgements ({} resamples, seed {}).",
        board.models.len(),
        board.judgements,
        board.confidence * 100.0,
        board.rounds,
        board.seed
    )
}

fn table(board: &Leaderboard) -> Table {
    let headers =
        ["rank", "checkpoint", "rating", &format!("{:.0} % interval", board.confidence * 100.0), "wins", "losses", "ties", "comparisons"];
    // Marked best only when it is ahead of the next.
    let leader = board.models.len() >= 2 && board.models[0].rating > board.models[1].rating;
    let rows = board
        .models
        .iter()
        .enumerate()
        .map(|(rank, m)| {
            let mut rating = Cell::text(format!("{:.0}", m.rating));
            rating.best = rank == 0 && leader;
            vec![
                Cell::text((rank + 1).to_string()),
                Cell::text(&m.model),
                rating,
                Cell::text(format!("[{:.0}, {:.0}]", m.rating_low, m.rating_high)),
                Cell::text(m.wins.to_string()),
                Cell::text(m.losses.to_string()),
                Cell::text(m.ties.to_string()),
                Cell::text(m.comparisons.to_string()),
            ]
        })
        .collect();
    Table { headers: headers.iter().map(|h| h.to_string()).collect(), rows }
}
