//! The loop every training stage runs, written once: restore the saved state, open the metric
//! and sample logs, step, evaluate on a cadence, keep the best weights, stop early, log (to
//! metrics.jsonl, TensorBoard's event file and the alert rules), and save the state for
//! `--resume`. A stage kind supplies only what differs — its step, its evaluation and what its
//! state holds — through [`Trainer`].
//!
//! Order within an evaluated step: step → evaluation (samples, best checkpoint) → metrics line
//! (with its events and alerts; a loss that is not finite stops the stage here, skipping the
//! evaluation) → state. A run killed anywhere before the state is saved replays the step on resume (its metric
//! and sample lines are dropped first); a run killed after it continues from the next step. The
//! state records whether the stage stopped early and the figures of its last evaluation, so a
//! stage resumed from its final state finishes with the same summary without training on.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::alerts::{is_non_finite, AlertLog, AlertSettings, Monitor, MonitorSettings, Watched};
use super::state::{self, Part, PartMut, StateError};
use crate::run::events::EventLog;
use crate::run::metrics::{metric_lines, metrics_with_nulls, read_kept, SampleLog};
use crate::run::progress::progress_bar;
use crate::run::{Metrics, MetricsWriter, RunDirError};

/// `<stage>/metrics.jsonl`: one line per step (`"step": 0` for figures before training).
pub const METRICS_FILE: &str = "metrics.jsonl";
/// `<stage>/samples.jsonl`: generations at each evaluation.
pub const SAMPLES_FILE: &str = "samples.jsonl";
/// `<stage>/state/`: what `--resume` needs.
pub const STATE_DIR: &str = "state";

/// A test-only hook: `RLHF_TEST_ABORT_AT=STAGE:STEP:POINT` aborts the process (as `kill -9`
/// would, nothing flushed or cleaned up) at POINT of the state save of step STEP of stage STAGE,
/// so that tests can stop a run at an exact point: after a file of the new state is written
/// (its name: `model.safetensors`, `policy.optimizer.safetensors`, `progress.json`, …), after
/// the old state is set aside (`swapped-out`) or the new one put in place (`swapped-in`), or once
/// the save is complete (`saved`).
const ABORT_AT: &str = "RLHF_TEST_ABORT_AT";

/// A test-only hook: `RLHF_TEST_NAN_AT=STAGE:STEP` makes the backward pass of step STEP of
/// stage STAGE produce NaN gradients (stages that support it: `lm`, `sft`), as a diverging run would.
const NAN_AT: &str = "RLHF_TEST_NAN_AT";

/// Whether the test hook [`NAN_AT`] asks for NaN gradients at this step.
pub fn nan_injected(stage: &str, step: u64) -> bool {
    std::env::var(NAN_AT).is_ok_and(|target| target == format!("{stage}:{step}"))
}

/// What one kind of stage trains. The loop calls `start` once (unless resumed), then `step` for
/// each step and `evaluate` at the evaluation cadence.
pub trait Trainer {
    /// What a resumed stage needs back besides the weights, the optimizers' moments and the
    /// loop's own counters (PPO: its KL coefficient and the starting policy's figures).
    type State: Serialize + DeserializeOwned + Default;
    type Error: From<RunDirError> + From<StateError> + From<Diverged>;

    /// The trained models and their optimizers, by the names their state files take.
    fn parts(&self) -> Vec<Part<'_>>;
    fn parts_mut(&mut self) -> Vec<PartMut<'_>>;
    fn state(&self) -> Self::State;
    fn restore(&mut self, state: Self::State);

    /// Before the first step of a stage that starts afresh; figures returned are logged as step 0.
    fn start(&mut self, _samples: &mut SampleLog) -> Result<Option<Metrics>, Self::Error> {
        Ok(None)
    }

    /// One optimizer step (PPO: one iteration); steps count from 1.
    fn step(&mut self, step: u64) -> Result<Metrics, Self::Error>;

    /// Held-out figures after step `step`; generations go to `samples`.
    fn evaluate(&mut self, step: u64, samples: &mut SampleLog) -> Result<Metrics, Self::Error>;

    /// The current weights are the best so far by the loop's selection metric.
    fn save_best(&self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Keeping the best weights by an evaluation figure that should fall (a loss), and stopping once
/// it has not improved for `patience` evaluations.
#[derive(Debug, Clone, Copy)]
pub struct Selection {
    pub metric: &'static str,
    /// A value counts as better only when below the best by more than this.
    pub min_delta: f64,
    pub patience: Option<u64>,
}

/// A loss or gradient stopped being finite: the stage stops, keeping the state it last saved.
#[derive(Debug, thiserror::Error)]
#[error("stage `{stage}` diverged at step {step}: `{metric}` is not finite. {kept} Lower the learning rate or clip gradients (`grad_clip`) and continue with `rlhf run --resume RUN_DIR`")]
pub struct Diverged {
    pub stage: String,
    pub step: u64,
    pub metric: String,
    kept: String,
}

/// How a stage's loop runs.
#[derive(Debug, Clone)]
pub struct LoopSettings<'a> {
    pub stage: &'a str,
    /// The run directory (its config and alerts.jsonl).
    pub run_dir: PathBuf,
    pub dir: PathBuf,
    /// Continue from the stage's saved state, if it has one.
    pub resume: bool,
    pub steps: u64,
    pub eval_every: u64,
    pub selection: Option<Selection>,
    /// Figures shown on the progress bar after each step.
    pub shown: &'a [&'a str],
    /// Figures named in the `evaluated` log line.
    pub logged: &'a [&'a str],
    /// Write TensorBoard's event file beside metrics.jsonl.
    pub tensorboard: bool,
    pub alerts: &'a AlertSettings,
    /// The stage kind's metrics the alert rules watch.
    pub watched: Watched,
    /// The KL the stage aims at, for the KL alert.
    pub kl_target: Option<f64>,
}

/// How the loop ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Steps taken in all (a resumed stage counts those before the restart).
    pub steps: u64,
    pub stopped_early: bool,
    /// The best value of the selection metric.
    pub best: Option<f64>,
    /// The metrics line of the last evaluated step: its training and held-out figures.
    pub last_evaluated: Metrics,
}

/// The loop's counters, saved with the trainer's state in `progress.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Progress<S> {
    step: u64,
    best: Option<f64>,
    evals_since_best: u64,
    stopped_early: bool,
    #[serde(deserialize_with = "metrics_with_nulls")]
    last_evaluated: Metrics,
    stage: S,
}

/// Runs `trainer` for the settings' steps (or until early stopping).
pub fn run<T: Trainer>(trainer: &mut T, settings: &LoopSettings) -> Result<Outcome, T::Error> {
    let state_dir = settings.dir.join(STATE_DIR);
    let mut progress = Progress {
        step: 0,
        best: None,
        evals_since_best: 0,
        stopped_early: false,
        last_evaluated: Metrics::new(),
        stage: T::State::default(),
    };
    let restored = settings.resume && state::recover(&state_dir)?;
    if restored {
        progress = state::restore(&state_dir, &mut trainer.parts_mut())?;
        trainer.restore(std::mem::take(&mut progress.stage));
        tracing::info!(stage = settings.stage, step = progress.step, "resuming");
    }
    // A stage that saved no state yet starts over, its files included.
    let keep_up_to = restored.then_some(progress.step);
    let mut metrics_log = MetricsWriter::open(&settings.dir.join(METRICS_FILE), keep_up_to)?;
    let mut samples = SampleLog::new(settings.dir.join(SAMPLES_FILE), keep_up_to);
    let mut lines = StageLines::open(settings, &metrics_log)?;
    if !restored {
        if let Some(figures) = trainer.start(&mut samples)? {
            metrics_log.log(0, &figures)?;
            lines.record(0, &figures, &mut samples)?;
        }
    }

    let bar = progress_bar(settings.steps, progress.step, settings.stage);
    let first = progress.step + 1;
    for step in first..=settings.steps {
        if progress.stopped_early {
            break;
        }
        let mut metrics = trainer.step(step)?;
        bar.set_position(step);
        bar.set_message(describe(&metrics, settings.shown));
        // A diverged step is not evaluated: its weights are lost.
        let diverged = metrics.iter().any(|(name, value)| is_non_finite(name, *value));
        let evaluate_now = (step % settings.eval_every == 0 || step == settings.steps) && !diverged;
        if evaluate_now {
            metrics.extend(trainer.evaluate(step, &mut samples)?);
            if let Some(selection) = &settings.selection {
                let value = metrics.get(selection.metric).copied().filter(|value| value.is_finite());
                let improved = value.is_some_and(|value| progress.best.is_none_or(|best| value < best - selection.min_delta));
                if improved {
                    progress.best = value;
                    progress.evals_since_best = 0;
                    trainer.save_best()?;
                } else {
                    progress.evals_since_best += 1;
                    progress.stopped_early = selection.patience.is_some_and(|patience| progress.evals_since_best >= patience);
                }
            }
            bar.suspend(|| tracing::info!(stage = settings.stage, step, "evaluated {}", describe(&metrics, settings.logged)));
        }
        metrics_log.log(step, &metrics)?;
        if let Some(metric) = bar.suspend(|| lines.record(step, &metrics, &mut samples))? {
            let kept = match progress.step {
                0 => "No state was saved yet: a resume starts the stage over.".to_string(),
                saved => format!("Its state of step {saved} is kept."),
            };
            return Err(Diverged { stage: settings.stage.to_string(), step, metric, kept }.into());
        }
        if evaluate_now {
            progress.step = step;
            progress.last_evaluated = metrics;
            progress.stage = trainer.state();
            let hook = |point: &str| abort_if_asked(settings.stage, step, point);
            state::save(&state_dir, &trainer.parts(), &progress, &hook)?;
            hook("saved");
            if progress.stopped_early {
                bar.suspend(|| {
                    tracing::info!(
                        stage = settings.stage,
                        step,
                        "early stopping: no better {} for {} evaluations",
                        settings.selection.map_or("", |s| s.metric),
                        progress.evals_since_best
                    )
                });
            }
        }
    }
    bar.finish_and_clear();
    Ok(Outcome {
        steps: progress.step,
        stopped_early: progress.stopped_early,
        best: progress.best,
        last_evaluated: progress.last_evaluated,
    })
}

/// Where a step's metric line goes besides metrics.jsonl: TensorBoard's event file (with the
/// samples logged since the last line) and the alert rules.
struct StageLines<'a> {
    events: Option<EventLog>,
    monitor: Monitor<'a>,
    alerts: AlertLog,
}

impl<'a> StageLines<'a> {
    /// Opens the event file and the alert log; a resumed stage replays the lines it kept into
    /// both (writing the event file anew, rebuilding the rules' state without raising again).
    fn open(settings: &'a LoopSettings, metrics_log: &MetricsWriter) -> Result<Self, RunDirError> {
        let mut monitor = Monitor::new(MonitorSettings {
            stage: settings.stage,
            steps: settings.steps,
            watched: settings.watched,
            kl_target: settings.kl_target,
            thresholds: settings.alerts,
        });
        let kept = metric_lines(metrics_log.kept());
        for (step, metrics) in &kept {
            monitor.observe(*step, metrics);
        }
        let events = match settings.tensorboard {
            false => None,
            true => {
                let mut events = EventLog::for_stage(&settings.run_dir, &settings.dir)?;
                for (step, metrics) in &kept {
                    events.scalars(*step, metrics)?;
                }
                if let Some((last, _)) = kept.last() {
                    events.samples(&read_kept(&settings.dir.join(SAMPLES_FILE), *last)?)?;
                }
                Some(events)
            }
        };
        Ok(StageLines { events, monitor, alerts: AlertLog::open(&settings.run_dir, settings.stage)? })
    }

    /// Records the metric line of `step`; returns the metric that stopped being finite, if one did.
    fn record(&mut self, step: u64, metrics: &Metrics, samples: &mut SampleLog) -> Result<Option<String>, RunDirError> {
        let logged = samples.take_logged();
        if let Some(events) = &mut self.events {
            events.scalars(step, metrics)?;
            events.samples(&logged)?;
        }
        let mut fatal = None;
        for alert in self.monitor.observe(step, metrics) {
            if alert.is_fatal() && fatal.is_none() {
                fatal = Some(alert.metric.clone());
            }
            self.alerts.raise(alert)?;
        }
        Ok(fatal)
    }
}

/// `name=value` for each of `names` present in `metrics`.
pub fn describe(metrics: &Metrics, names: &[&str]) -> String {
    names.iter().filter_map(|name| metrics.get(*name).map(|value| format!("{name}={value:.4}"))).collect::<Vec<_>>().join(" ")
}

fn abort_if_asked(stage: &str, step: u64, point: &str) {
    let Ok(target) = std::env::var(ABORT_AT) else { return };
    if target == format!("{stage}:{step}:{point}") {
        eprintln!("{ABORT_AT}: aborting at {point} of the state save of {stage} step {step}");
        std::process::abort();
    }
}
