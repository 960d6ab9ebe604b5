//! summary.md: the page's tables as Markdown, for terminals and pull requests; charts as links.

use std::fmt::Write;

use super::table::Table;
use super::Report;

/// A table cell: pipes escaped, line breaks as `<br>` (a Markdown row is one line).
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace("\r\n", "<br>").replace('\n', "<br>")
}

fn table(out: &mut String, table: &Table) {
    let _ = writeln!(out, "| {} |", table.headers.iter().map(|h| cell(h)).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(table.headers.len()));
    for row in &table.rows {
        let cells: Vec<String> = row.iter().map(|c| if c.best { format!("**{}**", cell(&c.text)) } else { cell(&c.text) }).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Run comparison\n\n{} run(s), baseline **{}**.\n", report.runs.len(), report.baseline);
    for line in &report.verdict {
        let _ = writeln!(out, "> {line}");
    }
    if !report.verdict.is_empty() {
        out.push('\n');
    }
    out.push_str("## Runs\n\n");
    for (label, path) in &report.runs {
        let _ = writeln!(out, "- **{label}**: `{}`", path.display());
    }
    out.push('\n');
    if !report.notes.is_empty() {
        out.push_str("## Notes on the input\n\n");
        for note in &report.notes {
            let _ = writeln!(out, "- **{}**: {}", note.run, note.message);
        }
        out.push('\n');
    }
    if let Some(alerts) = &report.alerts {
        out.push_str(&format!("## Alerts\n\n{}\n\n", super::alerts::ABOUT));
        table(&mut out, alerts);
    }
    out.push_str("## Final figures\n\nThe last value each run wrote; **bold**: the best of its column, where its figure has a direction and compares between these runs (no KL, no reward-model score across reward models). *@ KL k*: the gold score where each run's evaluations first reach a KL all of them reached.\n\n");
    table(&mut out, &report.figures);
    if let Some((win_rates, rates)) = &report.win_rates {
        let _ = writeln!(out, "## Win rate against the baseline\n\nJudged by the {} on the responses of stage `{}`'s final evaluation, prompt by prompt, where two runs share at least {} prompts; a tie counts ½; seeded percentile bootstrap.\n", win_rates.judge, win_rates.stage, super::winrate::MIN_SHARED_PROMPTS);
        table(&mut out, rates);
    }
    if let Some(leaderboard) = &report.leaderboard {
        let _ = writeln!(out, "## Human preference leaderboard\n\nFrom `{}`. {}\n", leaderboard.db.display(), leaderboard.summary);
        if let Some(ratings) = &leaderboard.table {
            table(&mut out, ratings);
        }
    }
    if let Some(costs) = &report.costs {
        out.push_str("## RL stages: where they ended and what it cost\n\nThe last evaluation's KL, gold and proxy scores, and the training's cost summed over its steps (evaluations not counted). Best-of-n trains nothing: its cost is drawing and scoring all its samples.\n\n");
        table(&mut out, costs);
    }
    if let Some(memory) = &report.memory {
        out.push_str("## Peak memory per stage\n\nThe largest resident set size (RSS) of the process while the stage ran, from `summary.json`: host memory only (CUDA memory is not measured yet), the process's baseline included (about 380 MiB with libtorch loaded, before any model). *process peak*: the peak could not be reset when the stage started, so the figure is the process's peak since it started (it may be an earlier stage's). A resumed stage's figure is that of the process that finished it.\n\n");
        table(&mut out, memory);
    }
    if let Some(sweep) = &report.sweep {
        out.push_str("## Sweep: mean ± std over seeds\n\n");
        table(&mut out, sweep);
    }
    if let Some(diff) = &report.config_diff {
        out.push_str("## Config differences\n\n");
        if diff.rows.is_empty() {
            out.push_str("The runs' configs are identical.\n\n");
        } else {
            table(&mut out, diff);
        }
    }
    if !report.charts.is_empty() {
        out.push_str("## Charts\n\n");
        for (stage, charts) in &report.charts {
            let links: Vec<String> = charts.iter().map(|c| format!("[{}]({}) ([SVG]({}))", c.title, c.png, c.svg)).collect();
            let _ = writeln!(out, "- `{stage}`: {}", links.join(", "));
        }
        out.push('\n');
    }
    if let Some(samples) = &report.samples {
        let _ = writeln!(out, "## Samples side by side (stage `{}`)\n", samples.stage);
        for row in &samples.rows {
            let _ = writeln!(out, "**Prompt:** {}\n", cell(&row.prompt));
            for (run, response) in samples.runs.iter().zip(&row.cells) {
                match response {
                    Some((completion, scores)) => {
                        let _ = writeln!(out, "- **{run}** ({scores}): {}", cell(completion));
                    }
                    None => {
                        let _ = writeln!(out, "- **{run}**: —");
                    }
                }
            }
            out.push('\n');
        }
    }
    out
}
