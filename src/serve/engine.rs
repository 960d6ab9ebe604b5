//! The serving engine: one thread owns the model and decodes every request in flight together,
//! one token per row per forward pass. Requests join and leave the running batch between two
//! decoding steps (iteration-level scheduling, Yu et al. 2022, "Orca"): a new request is
//! prefilled alone, its keys and values are regrouped with the running rows' into one KV cache
//! (each row right-aligned, the columns it never had hidden by the attention mask, as left
//! padding is), and it decodes with them from the next step on. A finished row leaves at once.
//!
//! A request alone in the batch is computed exactly as `rlhf generate` computes one prompt (the
//! same prefill, the same decoding steps without padding), so greedy outputs agree token for token.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};
use tokio::sync::mpsc::UnboundedSender;

use super::metrics::Metrics;
use crate::model::attention::CacheRows;
use crate::model::generate::{keep_top_p, left_pad};
use crate::model::{KvCache, LanguageModel};

/// How a request's next token is chosen.
#[derive(Debug)]
pub enum Sampling {
    Greedy,
    /// From softmax(logits / temperature) cut to the nucleus of mass `top_p`, with the
    /// request's own generator: a seeded request draws the same tokens whatever else is batched.
    Sample {
        temperature: f64,
        top_p: f64,
        rng: Box<ChaCha8Rng>,
    },
}

/// One sequence to generate (a choice of a request).
#[derive(Debug)]
pub struct Job {
    pub prompt: Vec<i64>,
    /// The most tokens to generate; the prompt and these fit the model's context.
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// How many of the most likely tokens to report beside each chosen one.
    pub top_logprobs: usize,
    /// Which choice of its request this is: events go out tagged with it.
    pub choice: usize,
    pub events: UnboundedSender<(usize, Event)>,
    /// Set by the request's side when it needs no more tokens (a stop string, a client gone).
    pub cancelled: Arc<AtomicBool>,
}

impl Job {
    /// Sends an event to the request's side; an error when it is gone.
    fn send(&self, event: Event) -> Result<(), tokio::sync::mpsc::error::SendError<(usize, Event)>> {
        self.events.send((self.choice, event))
    }
}

/// A generated token: its id, its log-probability under the model (the raw logits' softmax,
/// before temperature and nucleus), and the `top_logprobs` most likely ids with theirs.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: i64,
    pub logprob: f64,
    pub top: Vec<(i64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop id (or, decided by the request's side, a stop string).
    Stop,
    /// `max_tokens` generated.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug)]
pub enum Event {
    Token(Token),
    Finished(FinishReason),
}

/// What the request side needs to know of the model the engine loaded.
#[derive(Clone)]
pub struct ModelInfo {
    pub tokenizer: crate::data::tokenizer::TextTokenizer,
    pub context_length: i64,
}

/// The request side of a running engine.
pub struct Engine {
    jobs: Option<mpsc::Sender<Job>>,
    /// Jobs submitted and not yet in the batch.
    waiting: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the engine has stopped")]
pub struct EngineStopped;

impl Engine {
    /// Starts the engine thread, which loads the model with `load` (a model holds `Rc`s: it
    /// lives and dies on its thread) and serves batches of up to `max_batch` rows.
    pub fn start(
        load: impl FnOnce() -> anyhow::Result<LanguageModel> + Send + 'static,
        max_batch: usize,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Engine, ModelInfo)> {
        let (jobs, receiver) = mpsc::channel();
        let (loaded, info) = mpsc::channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let engine_waiting = Arc::clone(&waiting);
        let thread = std::thread::Builder::new().name("engine".into()).spawn(move || {
            let model = match load() {
                Ok(model) => model,
                Err(error) => {
                    let _ = loaded.send(Err(error));
                    return;
                }
            };
            let config = model.transformer.config();
            let _ = loaded.send(Ok(ModelInfo { tokenizer: model.tokenizer.clone(), context_length: config.context_length() }));
            Scheduler { model: &model, jobs: receiver, max_batch, waiting: engine_waiting, metrics }.run();
        })?;
        let info = info.recv().map_err(|_| anyhow::anyhow!("the engine thread stopped while loading the model"))??;
        Ok((Engine { jobs: Some(jobs), waiting, thread: Some(thread) }, info))
    }

    /// Jobs submitted and not yet decoding.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Queues `jobs` (the choices of one request) unless `limit` would be exceeded; `Ok(false)`
    /// when the queue is full.
    pub fn submit(&self, jobs: Vec<Job>, limit: usize) -> Result<bool, EngineStopped> {
        let count = jobs.len();
        let admitted =
            self.waiting.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |waiting| (waiting + count <= limit).then_some(waiting + count));
        if admitted.is_err() {
            return Ok(false);
        }
        let sender = self.jobs.as_ref().ok_or(EngineStopped)?;
        for job in jobs {
            sender.send(job).map_err(|_| EngineStopped)?;
        }
        Ok(true)
    }

    /// Lets the engine finish every job it holds, then waits for its thread to end.
    pub fn stop(mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the engine thread panicked");
            }
        }
    }
}

/// A row of the running batch.
struct Row {
    job: Job,
    generated: usize,
}

impl Row {
    /// Tokens the row may still generate, each one position in the cache.
    fn remaining(&self) -> usize {
        self.job.max_tokens - self.generated
    }
}

/// The rows decoding together: their cache, their attention mask over its columns (`[rows,
/// len]`, 0 where a row has no token), and the token each feeds in next.
struct Batch {
    cache: KvCache,
    mask: Tensor,
    next: Vec<i64>,
    rows: Vec<Row>,
}

struct Scheduler<'a> {
    model: &'a LanguageModel,
    jobs: mpsc::Receiver<Job>,
    max_batch: usize,
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Scheduler<'_> {
    fn run(self) {
        let _no_grad = tch::no_grad_guard();
        let stop_ids = self.model.tokenizer.stop_ids().to_vec();
        let mut pending = VecDeque::new();
        let mut batch: Option<Batch> = None;
        loop {
            let running = batch.as_ref().map_or(0, |batch| batch.rows.len());
            if running == 0 && pending.is_empty() {
                match self.jobs.recv() {
                    Ok(job) => pending.push_back(job),
                    // Every sender is gone and nothing is left: the server has drained.
                    Err(_) => return,
                }
            }
            pending.extend(self.jobs.try_iter());
            let admitted: Vec<Job> = pending.drain(..pending.len().min(self.max_batch - running)).collect();
            self.waiting.fetch_sub(admitted.len(), Ordering::SeqCst);
            self.metrics.queue_length.store(self.waiting.load(Ordering::SeqCst), Ordering::Relaxed);

            let running = batch.take();
            // A failing libtorch call panics: the requests of this step fail (their channels
            // close, answered 500) and the engine goes on with the next ones.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let joining = (!admitted.is_empty()).then(|| self.prefill(admitted, &stop_ids)).flatten();
                let survivors = running.and_then(|running| self.decode(running, &stop_ids));
                regroup(survivors.into_iter().chain(joining).collect())
            }));
            batch = step.unwrap_or_else(|_| {
                tracing::error!("a decoding step failed: its requests are dropped");
                None
            });
            self.metrics.running.store(batch.as_ref().map_or(0, |batch| batch.rows.len()), Ordering::Relaxed);
        }
    }

    /// Runs the new jobs' prompts together (left-padded; alone, a prompt is computed as
    /// `rlhf generate` computes it) and chooses their first tokens; returns the batch of those
    /// that go on, as [`Scheduler::decode`] does.
    fn prefill(&self, jobs: Vec<Job>, stop_ids: &[i64]) -> Option<(Batch, Vec<i64>)> {
        let model = self.model.transformer.as_ref();
        let rows = jobs.len() as i64;
        let tokens: usize = jobs.iter().map(|job| job.prompt.len()).sum();
        self.metrics.prompt_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        let _threads = crate::model::threads::for_generation(model.device(), rows, model.config().hidden_size());
        let prompts: Vec<Vec<i64>> = jobs.iter().map(|job| job.prompt.clone()).collect();
        let (ids, mask) = left_pad(&prompts, self.model.tokenizer.eos_id(), model.device());
        // Room for every token the rows may generate: they decode in this cache until the batch
        // regroups.
        let room = jobs.iter().map(|job| job.max_tokens).max().unwrap_or(0) as i64;
        let mut cache = model.new_cache(rows, ids.size()[1] + room);
        let hidden = model.forward(&ids, Some(&mask), Some(&mut cache), false);
        let logits = model.logits(&hidden.select(1, -1)).to_kind(Kind::Float);
        let step = self.advance(&logits, jobs.into_iter().map(|job| Row { job, generated: 0 }).collect(), stop_ids);
        (!step.rows.is_empty()).then_some((Batch { cache, mask, next: step.next, rows: step.rows }, step.kept))
    }

    /// One decoding step of the running rows; returns the batch with the places (before the
    /// step) of the rows that go on, `None` when every row ended.
    fn decode(&self, mut batch: Batch, stop_ids: &[i64]) -> Option<(Batch, Vec<i64>)> {
        let model = self.model.transformer.as_ref();
        let device = model.device();
        let size = batch.rows.len() as i64;
        self.metrics.batch_size.observe(size as f64);
        let _threads = crate::model::threads::for_generation(device, size, model.config().hidden_size());
        let input = Tensor::from_slice(&batch.next).view([size, 1]).to_device(device);
        batch.mask = Tensor::cat(&[&batch.mask, &Tensor::ones([size, 1], (Kind::Int64, device))], 1);
        let hidden = model.forward(&input, Some(&batch.mask), Some(&mut batch.cache), false);
        let logits = model.logits(&hidden.select(1, -1)).to_kind(Kind::Float);
        let step = self.advance(&logits, std::mem::take(&mut batch.rows), stop_ids);
        if step.rows.is_empty() {
            return None;
        }
        batch.rows = step.rows;
        batch.next = step.next;
        Some((batch, step.kept))
    }

    /// Chooses each row's next token from its logits `[rows, vocab]`, sends it, and drops the
    /// rows that finished or whose request is gone.
    fn advance(&self, logits: &Tensor, mut rows: Vec<Row>, stop_ids: &[i64]) -> Step {
        let chosen = choose(logits, &mut rows);
        let mut step = Step { rows: Vec::with_capacity(rows.len()), next: Vec::new(), kept: Vec::new() };
        for (place, (mut row, token)) in rows.into_iter().zip(chosen).enumerate() {
            if row.job.cancelled.load(Ordering::Relaxed) {
                continue;
            }
            if stop_ids.contains(&token.id) {
                let _ = row.job.send(Event::Finished(FinishReason::Stop));
                continue;
            }
            let id = token.id;
            self.metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
            row.generated += 1;
            if row.job.send(Event::Token(token)).is_err() {
                continue;
            }
            if row.remaining() == 0 {
                let _ = row.job.send(Event::Finished(FinishReason::Length));
                continue;
            }
            step.rows.push(row);
            step.next.push(id);
            step.kept.push(place as i64);
        }
        step
    }
}

/// The rows that go on after a token was chosen for each: the token each feeds in next, and
/// their places in the batch before.
struct Step {
    rows: Vec<Row>,
    next: Vec<i64>,
    kept: Vec<i64>,
}

/// The next token of every row: greedy rows take the most likely, sampling rows draw with their
/// own generator (inverse transform of one uniform over the nucleus' cumulative distribution).
fn choose(logits: &Tensor, rows: &mut [Row]) -> Vec<Token> {
    let logprobs = logits.log_softmax(-1, Kind::Float);
    let mut ids = Vec::<i64>::try_from(logits.argmax(-1, false).to_device(Device::Cpu)).expect("1-D ids");
    for (index, row) in rows.iter_mut().enumerate() {
        if let Sampling::Sample { temperature, top_p, rng } = &mut row.job.sampling {
            let scaled = logits.get(index as i64) / *temperature;
            let kept = if *top_p < 1.0 { keep_top_p(&scaled.unsqueeze(0), *top_p).squeeze_dim(0) } else { scaled };
            let cumulative = kept.softmax(-1, Kind::Double).cumsum(-1, Kind::Double);
            let total = cumulative.double_value(&[-1]);
            let draw = Tensor::from(rng.random::<f64>() * total).to_device(cumulative.device()).view([1]);
            let vocab = cumulative.size()[0];
            ids[index] = draw.searchsorted(&cumulative, false, true, "right", None::<&Tensor>).int64_value(&[0]).min(vocab - 1);
        }
    }
    let chosen = Tensor::from_slice(&ids).to_device(logits.device()).unsqueeze(1);
    let chosen_logprobs =
        Vec::<f64>::try_from(logprobs.gather(1, &chosen, false).squeeze_dim(1).to_kind(Kind::Double).to_device(Device::Cpu))
            .expect("1-D log-probs");
    let most = rows.iter().map(|row| row.job.top_logprobs).max().unwrap_or(0);
    // Each row's most likely ids with their log-probs, as many as the most any row asks for.
    let mut top: Vec<Vec<(i64, f64)>> = vec![Vec::new(); rows.len()];
    if most > 0 {
        let (values, indices) = logprobs.topk(most as i64, -1, true, true);
        let values = Vec::<Vec<f64>>::try_from(values.to_kind(Kind::Double).to_device(Device::Cpu)).expect("2-D log-probs");
        let indices = Vec::<Vec<i64>>::try_from(indices.to_device(Device::Cpu)).expect("2-D ids");
        top = indices.into_iter().zip(values).map(|(ids, values)| ids.into_iter().zip(values).collect()).collect();
    }
    rows.iter()
        .zip(top)
        .enumerate()
        .map(|(index, (row, mut top))| {
            top.truncate(row.job.top_logprobs);
            Token { id: ids[index], logprob: chosen_logprobs[index], top }
        })
        .collect()
}

/// One batch of the rows that go on in each of `batches` (`(batch, its kept rows' places
/// before the step)`: the running batch, the new rows); `None` when none is left. Columns that
/// are padding in every row are dropped.
fn regroup(mut batches: Vec<(Batch, Vec<i64>)>) -> Option<Batch> {
    if let [(batch, kept)] = batches.as_slice() {
        if kept.len() as i64 == batch.mask.size()[0] {
            // No row came or went: the batch goes on as it is.
            return batches.pop().map(|(batch, _)| batch);
        }
    }
    if batches.is_empty() {
        return None;
    }
    let parts: Vec<(Batch, Tensor)> = batches
        .into_iter()
        .map(|(batch, kept)| {
            let rows = Tensor::from_slice(&kept).to_device(batch.mask.device());
            (batch, rows)
        })
        .collect();
    let masks: Vec<Tensor> = parts.iter().map(|(batch, rows)| batch.mask.index_select(0, rows)).collect();
    // The first column any kept row uses: the ones before it hold nothing any row needs.
    let starts: Vec<i64> = masks.iter().map(|mask| mask.any_dim(0, false).to_kind(Kind::Int64).argmax(0, false).int64_value(&[])).collect();
    let room = parts.iter().flat_map(|(batch, _)| batch.rows.iter().map(Row::remaining)).max().unwrap_or(0) as i64;
    let cache = KvCache::regroup(
        &parts.iter().zip(&starts).map(|((batch, rows), &start)| CacheRows { cache: &batch.cache, rows, start }).collect::<Vec<_>>(),
        room,
    );
    let len = cache.len();
    let mask = Tensor::cat(
        &masks
            .iter()
            .zip(&starts)
            .map(|(mask, &start)| {
                let width = mask.size()[1] - start;
                mask.narrow(1, start, width).constant_pad_nd([len - width, 0])
            })
            .collect::<Vec<_>>(),
        0,
    );
    let (mut next, mut rows) = (Vec::new(), Vec::new());
    for (batch, _) in parts {
        next.extend(batch.next);
        rows.extend(batch.rows);
    }
    Some(Batch { cache, mask, next, rows })
}
