//! Alerts raised while a stage trains, from its stream of metric lines: a non-finite loss or
//! gradient (the stage stops), overfitting, a preference model stuck near chance, a KL running
//! away, a high clip fraction, entropy collapse. Each is logged as a warning and appended to
//! `<run>/alerts.jsonl`, naming the metric, the step and the rule.
//!
//! The rules see nothing but the metric lines, so a resumed stage rebuilds their state by
//! replaying the lines it kept, and raises exactly the alerts an uninterrupted run would.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::run::{Metrics, RunDirError};

/// `<run>/alerts.jsonl`: one alert per line, every stage's.
pub const ALERTS_FILE: &str = "alerts.jsonl";

/// The `[alerts]` table: the rules' thresholds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// Overfitting: evaluations in a row whose eval loss rose while the training loss fell.
    #[serde(default = "defaults::patience")]
    pub patience: u64,
    /// A preference model's eval accuracy at or below 0.5 + this, after half its steps, is
    /// "near chance".
    #[serde(default = "defaults::chance_margin")]
    pub chance_margin: f64,
    /// A KL above this multiple of the stage's KL target (PPO's adaptive controller).
    #[serde(default = "defaults::kl_target_multiple")]
    pub kl_target_multiple: f64,
    /// A KL above this, for stages without a target (absent: no bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_max: Option<f64>,
    /// A policy clip fraction above this: updates far outside the trust region.
    #[serde(default = "defaults::clip_fraction_max")]
    pub clip_fraction_max: f64,
    /// Entropy below this fraction of its first value: the policy collapsed onto few tokens.
    #[serde(default = "defaults::entropy_floor")]
    pub entropy_floor: f64,
}

#[rustfmt::skip]
mod defaults {
    pub fn patience() -> u64 { 3 }
    pub fn chance_margin() -> f64 { 0.05 }
    pub fn kl_target_multiple() -> f64 { 2.0 }
    pub fn clip_fraction_max() -> f64 { 0.3 }
    pub fn entropy_floor() -> f64 { 0.1 }
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            patience: defaults::patience(),
            chance_margin: defaults::chance_margin(),
            kl_target_multiple: defaults::kl_target_multiple(),
            kl_max: None,
            clip_fraction_max: defaults::clip_fraction_max(),
            entropy_floor: defaults::entropy_floor(),
        }
    }
}

impl AlertSettings {
    /// Values that parse but cannot work, as `(key, what is expected)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.patience == 0 {
            return Err(("patience", "≥ 1".into()));
        }
        if !(0.0..=0.5).contains(&self.chance_margin) {
            return Err(("chance_margin", format!("a value in [0, 0.5], got {}", self.chance_margin)));
        }
        if !(self.kl_target_multiple > 0.0) {
            return Err(("kl_target_multiple", format!("a value > 0, got {}", self.kl_target_multiple)));
        }
        if let Some(kl_max) = self.kl_max.filter(|kl| !(*kl > 0.0)) {
            return Err(("kl_max", format!("a value > 0, got {kl_max}")));
        }
        if !(self.clip_fraction_max > 0.0 && self.clip_fraction_max <= 1.0) {
            return Err(("clip_fraction_max", format!("a value in (0, 1], got {}", self.clip_fraction_max)));
        }
        if !(0.0..1.0).contains(&self.entropy_floor) {
            return Err(("entropy_floor", format!("a value in [0, 1), got {}", self.entropy_floor)));
        }
        Ok(())
    }
}

/// The metrics of a stage kind that the rules watch (declared with its figures); a rule whose
/// metric a kind does not have does not apply to it. Losses and gradient norms need no
/// declaring: every metric whose name says it is one is checked for non-finite values.
#[derive(Debug, Clone, Copy, Default)]
pub struct Watched {
    pub train_loss: Option<&'static str>,
    pub eval_loss: Option<&'static str>,
    /// A preference model's held-out accuracy (chance is 0.5).
    pub preference_accuracy: Option<&'static str>,
    pub kl: Option<&'static str>,
    pub clip_fraction: Option<&'static str>,
    pub entropy: Option<&'static str>,
}

impl Watched {
    /// Nothing watched (a kind that trains nothing).
    pub const NOTHING: Watched =
        Watched { train_loss: None, eval_loss: None, preference_accuracy: None, kl: None, clip_fraction: None, entropy: None };
}

/// The rules an alert comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    NonFinite,
    Overfitting,
    NearChance,
    KlHigh,
    ClipFractionHigh,
    EntropyCollapse,
}

impl Rule {
    /// Its name in alerts.jsonl.
    pub fn name(self) -> &'static str {
        match self {
            Rule::NonFinite => "non_finite",
            Rule::Overfitting => "overfitting",
            Rule::NearChance => "near_chance",
            Rule::KlHigh => "kl_high",
            Rule::ClipFractionHigh => "clip_fraction_high",
            Rule::EntropyCollapse => "entropy_collapse",
        }
    }
}

/// One alert, as written to alerts.jsonl (`value` is `null` when it is not finite).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub stage: String,
    pub step: u64,
    pub rule: Rule,
    pub metric: String,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub message: String,
}

impl Alert {
    /// A non-finite loss or gradient stops the stage; the other rules only warn.
    pub fn is_fatal(&self) -> bool {
        self.rule == Rule::NonFinite
    }
}

/// What the rules need to know about a stage besides its metrics.
#[derive(Debug, Clone, Copy)]
pub struct MonitorSettings<'a> {
    pub stage: &'a str,
    pub steps: u64,
    pub watched: Watched,
    /// The KL the stage aims at (PPO's adaptive controller), if any.
    pub kl_target: Option<f64>,
    pub thresholds: &'a AlertSettings,
}

/// The rules' state over one stage's metric lines.
pub struct Monitor<'a> {
    settings: MonitorSettings<'a>,
    /// Training losses since the last evaluation, and the mean of those before it.
    train_losses: Vec<f64>,
    previous: Option<(f64, f64)>,
    rising: u64,
    first_entropy: Option<f64>,
    /// Rules whose condition held at the last line: an alert is raised when one starts to hold.
    active: BTreeSet<(Rule, String)>,
}

impl<'a> Monitor<'a> {
    pub fn new(settings: MonitorSettings<'a>) -> Self {
        Monitor { settings, train_losses: Vec::new(), previous: None, rising: 0, first_entropy: None, active: BTreeSet::new() }
    }

    /// The alerts the metric line of `step` raises.
    pub fn observe(&mut self, step: u64, metrics: &Metrics) -> Vec<Alert> {
        let MonitorSettings { watched, thresholds, .. } = self.settings;
        let mut holding: Vec<(Rule, &str, f64, Option<f64>, String)> = Vec::new();

        for (name, value) in metrics {
            if is_non_finite(name, *value) {
                holding.push((Rule::NonFinite, name, *value, None, format!("`{name}` is {value}: the stage stops")));
            }
        }
        if let Some(loss) = watched.train_loss.and_then(|name| metrics.get(name)).filter(|v| v.is_finite()) {
            self.train_losses.push(*loss);
        }
        if let Some((name, eval_loss)) = watched.eval_loss.and_then(|name| Some((name, *metrics.get(name)?))).filter(|(_, v)| v.is_finite())
        {
            // The training loss is averaged over the steps between evaluations: single steps are noisy.
            let train_loss = (!self.train_losses.is_empty())
                .then(|| self.train_losses.iter().sum::<f64>() / self.train_losses.len() as f64)
                .or(self.previous.map(|(_, train)| train));
            self.train_losses.clear();
            if let (Some((previous_eval, previous_train)), Some(train_loss)) = (self.previous, train_loss) {
                self.rising = if eval_loss > previous_eval && train_loss < previous_train { self.rising + 1 } else { 0 };
            }
            if let Some(train_loss) = train_loss {
                self.previous = Some((eval_loss, train_loss));
            }
            if self.rising >= thresholds.patience {
                let message = format!("`{name}` rose for {} evaluations in a row while the training loss fell: overfitting", self.rising);
                holding.push((Rule::Overfitting, name, eval_loss, Some(thresholds.patience as f64), message));
            }
        }
        if let Some((name, accuracy)) = watched.preference_accuracy.and_then(|name| Some((name, *metrics.get(name)?))) {
            let ceiling = 0.5 + thresholds.chance_margin;
            if 2 * step >= self.settings.steps && accuracy.is_finite() && accuracy <= ceiling {
                let message = format!("`{name}` = {accuracy:.3} after {step} of {} steps: near chance (0.5)", self.settings.steps);
                holding.push((Rule::NearChance, name, accuracy, Some(ceiling), message));
            }
        }
        let kl_bound = self.settings.kl_target.map(|target| target * thresholds.kl_target_multiple).or(thresholds.kl_max);
        if let (Some(bound), Some((name, kl))) = (kl_bound, watched.kl.and_then(|name| Some((name, *metrics.get(name)?)))) {
            if kl > bound {
                let why = match self.settings.kl_target {
                    Some(target) => format!("{}× the target {target}", thresholds.kl_target_multiple),
                    None => "`kl_max`".to_string(),
                };
                holding.push((Rule::KlHigh, name, kl, Some(bound), format!("`{name}` = {kl:.3} is above {bound} ({why})")));
            }
        }
        if let Some((name, fraction)) = watched.clip_fraction.and_then(|name| Some((name, *metrics.get(name)?))) {
            if fraction > thresholds.clip_fraction_max {
                let message = format!("`{name}` = {fraction:.3}: most updates leave the trust region (lower the learning rate)");
                holding.push((Rule::ClipFractionHigh, name, fraction, Some(thresholds.clip_fraction_max), message));
            }
        }
        if let Some((name, entropy)) = watched.entropy.and_then(|name| Some((name, *metrics.get(name)?))).filter(|(_, v)| v.is_finite()) {
            let first = *self.first_entropy.get_or_insert(entropy);
            let floor = first * thresholds.entropy_floor;
            if entropy < floor {
                let message =
                    format!("`{name}` = {entropy:.3}, below {} of its first value {first:.3}: entropy collapse", thresholds.entropy_floor);
                holding.push((Rule::EntropyCollapse, name, entropy, Some(floor), message));
            }
        }

        let now: BTreeSet<(Rule, String)> = holding.iter().map(|(rule, name, ..)| (*rule, name.to_string())).collect();
        let alerts = holding
            .into_iter()
            .filter(|(rule, name, ..)| *rule == Rule::NonFinite || !self.active.contains(&(*rule, name.to_string())))
            .map(|(rule, name, value, threshold, message)| Alert {
                stage: self.settings.stage.to_string(),
                step,
                rule,
                metric: name.to_string(),
                value: value.is_finite().then_some(value),
                threshold,
                message,
            })
            .collect();
        self.active = now;
        alerts
    }
}

/// Whether `value` of metric `name` says the weights are lost: a non-finite loss, or a NaN
/// gradient norm. An infinite gradient norm is not: it is fp16 loss scaling's overflow, a skipped
/// step (the optimizer halves the scale).
pub fn is_non_finite(name: &str, value: f64) -> bool {
    let last = name.rsplit('/').next().unwrap_or(name);
    let loss = (name.starts_with("loss/") || last.contains("loss")) && !value.is_finite();
    let gradient = last.ends_with("grad_norm") && value.is_nan();
    loss || gradient
}

/// `<run>/alerts.jsonl`, appended to as alerts are raised.
pub struct AlertLog {
    path: PathBuf,
    /// The stage's alerts already in the file: a resumed stage that replays steps does not write
    /// them twice.
    written: Vec<Alert>,
}

impl AlertLog {
    pub fn open(run_dir: &Path, stage: &str) -> Result<Self, RunDirError> {
        let path = run_dir.join(ALERTS_FILE);
        let written = read_alerts(&path)?.into_iter().filter(|alert| alert.stage == stage).collect();
        Ok(AlertLog { path, written })
    }

    /// Logs the alert as a warning and appends it (unless this stage already wrote it).
    pub fn raise(&mut self, alert: Alert) -> Result<(), RunDirError> {
        tracing::warn!(stage = alert.stage, step = alert.step, rule = ?alert.rule, metric = alert.metric, "{}", alert.message);
        if self.written.contains(&alert) {
            return Ok(());
        }
        let line = serde_json::to_string(&alert).expect("an alert serialises");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
            writeln!(file, "{line}")
        };
        write().map_err(|source| RunDirError::Write { path: self.path.clone(), source })?;
        self.written.push(alert);
        Ok(())
    }
}

/// The alerts in a run's alerts.jsonl (none when it has no file); a truncated last line — a
/// killed run — is skipped.
pub fn read_alerts(path: &Path) -> Result<Vec<Alert>, RunDirError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(RunDirError::Read { path: path.into(), source }),
    };
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    let mut alerts = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(alert) => alerts.push(alert),
            Err(_) if index + 1 == lines.len() => {}
            Err(error) => return Err(RunDirError::Corrupt { path: path.into(), message: format!("line {}: {error}", index + 1) }),
        }
    }
    Ok(alerts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LM: Watched = Watched { train_loss: Some("train/loss"), eval_loss: Some("eval/loss"), ..Watched::NOTHING };
    const RL: Watched = Watched {
        kl: Some("objective/kl"),
        clip_fraction: Some("policy/clipfrac_avg"),
        entropy: Some("objective/entropy"),
        ..Watched::NOTHING
    };

    fn monitor<'a>(watched: Watched, steps: u64, kl_target: Option<f64>, thresholds: &'a AlertSettings) -> Monitor<'a> {
        Monitor::new(MonitorSettings { stage: "s", steps, watched, kl_target, thresholds })
    }

    fn line(values: &[(&str, f64)]) -> Metrics {
        values.iter().map(|(name, value)| (name.to_string(), *value)).collect()
    }

    /// Every alert of a stream of lines, as (step, rule, metric).
    fn run(monitor: &mut Monitor, lines: &[(u64, Metrics)]) -> Vec<(u64, Rule, String)> {
        lines.iter().flat_map(|(step, metrics)| monitor.observe(*step, metrics)).map(|a| (a.step, a.rule, a.metric)).collect()
    }

    /// An lm stage evaluated every 2 steps: the training loss falls throughout; the eval loss
    /// falls, then (when `overfit`) rises at steps 8, 10 and 12.
    fn lm_stream(overfit: bool) -> Vec<(u64, Metrics)> {
        (1..=12)
            .map(|step| {
                let mut values = vec![("train/loss", 3.0 - 0.2 * step as f64)];
                if step % 2 == 0 {
                    let eval = if overfit && step >= 8 { 2.0 + 0.1 * step as f64 } else { 3.0 - 0.1 * step as f64 };
                    values.push(("eval/loss", eval));
                }
                (step, line(&values))
            })
            .collect()
    }

    #[test]
    fn overfitting_after_patience_evaluations_of_rising_eval_loss() {
        let thresholds = AlertSettings::default();
        assert_eq!(run(&mut monitor(LM, 12, None, &thresholds), &lm_stream(false)), vec![]);
        // The third evaluation in a row with a rising eval loss raises it.
        let alerts = run(&mut monitor(LM, 12, None, &thresholds), &lm_stream(true));
        assert_eq!(alerts, vec![(12, Rule::Overfitting, "eval/loss".to_string())]);
        let patient = AlertSettings { patience: 4, ..AlertSettings::default() };
        assert_eq!(run(&mut monitor(LM, 12, None, &patient), &lm_stream(true)), vec![]);
    }

    #[test]
    fn non_finite_losses_and_nan_gradients_are_fatal_but_an_overflowed_fp16_step_is_not() {
        let thresholds = AlertSettings::default();
        let mut monitor = monitor(LM, 10, None, &thresholds);
        assert!(monitor.observe(1, &line(&[("train/loss", 2.0), ("grad_norm", f64::INFINITY)])).is_empty());
        let alerts = monitor.observe(2, &line(&[("train/loss", f64::NAN), ("grad_norm", f64::NAN), ("lr", 0.1)]));
        let named: Vec<(&str, bool, Option<f64>)> = alerts.iter().map(|a| (a.metric.as_str(), a.is_fatal(), a.value)).collect();
        assert_eq!(named, vec![("grad_norm", true, None), ("train/loss", true, None)]);
        let ppo = monitor.observe(3, &line(&[("loss/value_avg", f64::INFINITY)]));
        assert_eq!(ppo.len(), 1);
        assert!(ppo[0].is_fatal());
    }

    #[test]
    fn preference_accuracy_near_chance_only_after_half_the_steps() {
        let watched = Watched { preference_accuracy: Some("eval/accuracy"), ..Watched::default() };
        let thresholds = AlertSettings::default();
        let chance: Vec<(u64, Metrics)> = (1..=10).map(|step| (step * 10, line(&[("eval/accuracy", 0.52)]))).collect();
        assert_eq!(run(&mut monitor(watched, 100, None, &thresholds), &chance), vec![(50, Rule::NearChance, "eval/accuracy".into())]);
        let learning: Vec<(u64, Metrics)> =
            (1..=10).map(|step| (step * 10, line(&[("eval/accuracy", 0.5 + 0.04 * step as f64)]))).collect();
        assert_eq!(run(&mut monitor(watched, 100, None, &thresholds), &learning), vec![]);
    }

    #[test]
    fn kl_clip_fraction_and_entropy_rules_fire_once_when_they_start_to_hold() {
        let thresholds = AlertSettings::default();
        let healthy: Vec<(u64, Metrics)> = (1..=20)
            .map(|i| {
                (i, line(&[("objective/kl", 0.3 * i as f64), ("policy/clipfrac_avg", 0.1), ("objective/entropy", 2.0 - 0.05 * i as f64)]))
            })
            .collect();
        assert_eq!(run(&mut monitor(RL, 20, Some(6.0), &thresholds), &healthy), vec![]);
        // Without a target or kl_max, the KL has no bound.
        let runaway: Vec<(u64, Metrics)> = (1..=6)
            .map(|i| {
                let kl = [1.0, 13.0, 14.0, 3.0, 15.0, 2.0][i as usize - 1];
                let clip = if i == 3 { 0.5 } else { 0.1 };
                let entropy = if i >= 5 { 0.1 } else { 2.0 };
                (i, line(&[("objective/kl", kl), ("policy/clipfrac_avg", clip), ("objective/entropy", entropy)]))
            })
            .collect();
        assert_eq!(
            run(&mut monitor(RL, 6, Some(6.0), &thresholds), &runaway),
            vec![
                (2, Rule::KlHigh, "objective/kl".into()),
                (3, Rule::ClipFractionHigh, "policy/clipfrac_avg".into()),
                (5, Rule::KlHigh, "objective/kl".into()),
                (5, Rule::EntropyCollapse, "objective/entropy".into()),
            ]
        );
        assert_eq!(
            run(&mut monitor(RL, 6, None, &thresholds), &runaway).iter().filter(|a| a.1 == Rule::KlHigh).count(),
            0,
            "no target, no kl_max: no KL bound"
        );
        let bounded = AlertSettings { kl_max: Some(10.0), ..AlertSettings::default() };
        assert_eq!(run(&mut monitor(RL, 6, None, &bounded), &runaway).iter().filter(|a| a.1 == Rule::KlHigh).count(), 2);
    }

    #[test]
    fn the_alert_log_appends_and_does_not_repeat_a_replayed_alert() {
        let dir = tempfile::tempdir().unwrap();
        let alert = Alert {
            stage: "ppo".into(),
            step: 4,
            rule: Rule::KlHigh,
            metric: "objective/kl".into(),
            value: Some(13.0),
            threshold: Some(12.0),
            message: "m".into(),
        };
        AlertLog::open(dir.path(), "ppo").unwrap().raise(alert.clone()).unwrap();
        let mut reopened = AlertLog::open(dir.path(), "ppo").unwrap();
        reopened.raise(alert.clone()).unwrap();
        reopened.raise(Alert { step: 5, ..alert.clone() }).unwrap();
        let read = read_alerts(&dir.path().join(ALERTS_FILE)).unwrap();
        assert_eq!(read.iter().map(|a| a.step).collect::<Vec<_>>(), vec![4, 5]);
        let text = std::fs::read_to_string(dir.path().join(ALERTS_FILE)).unwrap();
        assert!(
            text.starts_with(r#"{"stage":"ppo","step":4,"rule":"kl_high","metric":"objective/kl","value":13.0,"threshold":12.0"#),
            "{text}"
        );
        for rule in [Rule::NonFinite, Rule::Overfitting, Rule::NearChance, Rule::KlHigh, Rule::ClipFractionHigh, Rule::EntropyCollapse] {
            assert_eq!(serde_json::to_value(rule).unwrap(), rule.name(), "the name written is the name shown");
        }
    }
}
