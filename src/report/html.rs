//! index.html: one self-contained page (inline CSS, no script, no network), charts referenced
//! as files in `plots/` beside it, so that it opens from disk anywhere.

use std::fmt::Write;

use super::comparison::SideBySide;
use super::plots::{HEIGHT, WIDTH};
use super::table::Table;
use super::Report;

const STYLE: &str = r#"
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1600px; padding: 1.5rem 2rem 4rem; color: #1d1d1f; }
h1 { margin-bottom: 0.2rem; }
.subtitle { color: #666; margin-top: 0; }
.verdict { background: #eef6ee; border-left: 4px solid #2ca02c; padding: 0.6rem 1rem; margin: 1rem 0; }
.verdict p { margin: 0.3rem 0; }
.notes { background: #fff7e6; border-left: 4px solid #ff7f0e; padding: 0.5rem 1rem 0.5rem 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f6; }
td.best { background: #e3f1e3; font-weight: 600; }
.scroll { overflow-x: auto; }
/* Two charts a row on a laptop or wide screen (each at most its 760 px), one on a narrow one. */
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 560px), 1fr)); gap: 1rem; }
figure { margin: 0; border: 1px solid #e4e4e8; padding: 0.4rem; background: #fff; box-sizing: border-box; max-width: 780px; }
figure img { display: block; width: 100%; height: auto; }
figcaption { font-size: 0.85rem; color: #555; }
.samples td { max-width: 28rem; }
.completion { white-space: pre-wrap; }
.scores { color: #666; font-size: 0.85rem; }
code { background: #f4f4f6; padding: 0 0.2rem; }
"#;

pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

fn table(out: &mut String, table: &Table) {
    out.push_str("<div class=\"scroll\"><table>\n<tr>");
    for header in &table.headers {
        let _ = write!(out, "<th>{}</th>", escape(header));
    }
    out.push_str("</tr>\n");
    for row in &table.rows {
        out.push_str("<tr>");
        for cell in row {
            let class = if cell.best { " class=\"best\"" } else { "" };
            let _ = write!(out, "<td{class}>{}</td>", escape(&cell.text));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table></div>\n");
}

fn samples(out: &mut String, samples: &SideBySide) {
    let _ = writeln!(out, "<h2 id=\"samples\">Samples side by side</h2>\n<p>Responses of each run to the same prompts at its last evaluation of stage <code>{}</code>.</p>", escape(&samples.stage));
    out.push_str("<div class=\"scroll\"><table class=\"samples\">\n<tr><th>prompt</th>");
    for run in &samples.runs {
        let _ = write!(out, "<th>{}</th>", escape(run));
    }
    out.push_str("</tr>\n");
    for row in &samples.rows {
        let _ = write!(out, "<tr><td class=\"completion\">{}</td>", escape(&row.prompt));
        for cell in &row.cells {
            match cell {
                Some((completion, scores)) => {
                    let _ = write!(
                        out,
                        "<td><div class=\"completion\">{}</div><div class=\"scores\">{}</div></td>",
                        escape(completion),
                        escape(scores)
                    );
                }
                None => out.push_str("<td>—</td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table></div>\n");
}

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>rlhf report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(&report.runs.iter().map(|(label, _)| label.as_str()).collect::<Vec<_>>().join(" vs "))
    );
    let _ = writeln!(
        out,
        "<h1>Run comparison</h1>\n<p class=\"subtitle\">{} run(s) · baseline <strong>{}</strong> · written by <code>rlhf report</code></p>",
        report.runs.len(),
        escape(&report.baseline)
    );
    if !report.verdict.is_empty() {
        out.push_str("<section class=\"verdict\" id=\"verdict\">\n");
        for line in &report.verdict {
            let _ = writeln!(out, "<p>{}</p>", escape(line));
        }
        out.push_str("</section>\n");
    }
    out.push_str("<h2 id=\"runs\">Runs</h2>\n<ul>\n");
    for (label, path) in &report.runs {
        let _ = writeln!(out, "<li><strong>{}</strong> — <code>{}</code></li>", escape(label), escape(&path.display().to_string()));
    }
    out.push_str("</ul>\n");
    if !report.notes.is_empty() {
        out.push_str("<h2 id=\"notes\">Notes on the input</h2>\n<ul class=\"notes\">\n");
        for note in &report.notes {
            let _ = writeln!(out, "<li><strong>{}</strong>: {}</li>", escape(&note.run), escape(&note.message));
        }
        out.push_str("</ul>\n");
    }

    if let Some(alerts) = &report.alerts {
        let _ = writeln!(out, "<h2 id=\"alerts\">Alerts</h2>\n<p>{}</p>", escape(super::alerts::ABOUT));
        table(&mut out, alerts);
    }
    out.push_str("<h2 id=\"figures\">Final figures</h2>\n<p>The last value each run wrote. The best of a column is highlighted only where its figure has a direction and compares between these runs: no KL (a cost paid for reward), no reward-model score across reward models. <em>@ KL k</em>: the gold score where each run's evaluations first reach a KL all of them reached.</p>\n");
    table(&mut out, &report.figures);
    if let Some((win_rates, rates)) = &report.win_rates {
        let _ = writeln!(
            out,
            "<h2 id=\"win-rates\">Win rate against the baseline</h2>\n<p>Judged by the {} on the responses of stage <code>{}</code>'s final evaluation (every evaluated prompt, else the last samples), prompt by prompt, where two runs share at least {} prompts; a tie counts ½; interval by a seeded percentile bootstrap.</p>",
            escape(&win_rates.judge),
            escape(&win_rates.stage),
            super::winrate::MIN_SHARED_PROMPTS
        );
        table(&mut out, rates);
    }
    if let Some(leaderboard) = &report.leaderboard {
        let _ = writeln!(
            out,
            "<h2 id=\"leaderboard\">Human preference leaderboard</h2>\n<p>From <code>{}</code>. {}</p>",
            escape(&leaderboard.db.display().to_string()),
            escape(&leaderboard.summary)
        );
        if let Some(ratings) = &leaderboard.table {
            table(&mut out, ratings);
        }
    }
    if let Some(costs) = &report.costs {
        out.push_str("<h2 id=\"costs\">RL stages: where they ended and what it cost</h2>\n<p>The last evaluation's KL, gold and proxy scores, and the training's cost summed over its steps (evaluations not counted): wall time, tokens sampled, and sequences passed forward and backward through a model outside generation. Best-of-n trains nothing: its cost is drawing and scoring all its samples.</p>\n");
        table(&mut out, costs);
    }
    if let Some(memory) = &report.memory {
        out.push_str("<h2 id=\"memory\">Peak memory per stage</h2>\n<p>The largest resident set size (RSS) of the process while the stage ran, from <code>summary.json</code>: host memory only (the memory of CUDA devices is not measured yet), the process's baseline included (about 380 MiB with libtorch loaded, before any model). <em>process peak</em>: the peak could not be reset when the stage started, so the figure is the process's peak since it started (it may be an earlier stage's). A resumed stage's figure is that of the process that finished it.</p>\n");
        table(&mut out, memory);
    }
    if let Some(sweep) = &report.sweep {
        out.push_str("<h2 id=\"sweep\">Sweep: mean ± std over seeds</h2>\n");
        table(&mut out, sweep);
    }
    if let Some(diff) = &report.config_diff {
        out.push_str("<h2 id=\"config-diff\">Config differences</h2>\n");
        if diff.rows.is_empty() {
            out.push_str("<p>The runs' configs are identical.</p>\n");
        } else {
            out.push_str("<p>Only the keys whose values differ between runs (— : not set in that run).</p>\n");
            table(&mut out, diff);
        }
    }
    for (stage, charts) in &report.charts {
        let _ = writeln!(out, "<h2 id=\"stage-{0}\">Stage <code>{0}</code></h2>\n<div class=\"charts\">", escape(stage));
        for chart in charts {
            let _ = writeln!(
                out,
                "<figure><img src=\"{}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" alt=\"{}\"><figcaption>{} · <a href=\"{}\">SVG</a></figcaption></figure>",
                escape(&chart.png),
                escape(&chart.title),
                escape(&chart.title),
                escape(&chart.svg)
            );
        }
        out.push_str("</div>\n");
    }
    if let Some(side_by_side) = &report.samples {
        samples(&mut out, side_by_side);
    }
    out.push_str("</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<b>\"a\" & 'b'</b>"), "&lt;b&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/b&gt;");
    }
}
