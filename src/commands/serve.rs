//! `rlhf serve --model DIR`: the model behind OpenAI's HTTP API (docs/deployment.md). A language
//! model answers completions and chat completions; a reward model answers `/v1/score`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::http::connections::{ConnectionLimits, MAX_TIMEOUT_SECS};
use crate::model::checkpoint::is_reward_model_dir;
use crate::model::reward::RewardModel;
use crate::model::{DeviceSpec, LanguageModel, Precision};
use crate::serve::engine::Engine;
use crate::serve::metrics::Metrics;
use crate::serve::score::Scorer;
use crate::serve::{serve, Backend, ServeOptions};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A checkpoint directory: a language model (plain, pruned or quantized) or a reward model.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// 0 picks a free port (the one chosen is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model id clients name (default: the directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// fp32, bf16 or fp16.
    #[arg(long, default_value = "fp32")]
    pub dtype: Precision,
    /// The most sequences decoded together.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_batch: u64,
    /// Sequences waiting to join the batch beyond which requests are refused with 429.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queue: u64,
    /// The largest request body accepted (bytes); larger ones are answered 413.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a request may take from its headers to its answer's start (a stream may go on).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_SECS))]
    pub request_timeout_secs: u64,
    /// After SIGTERM, seconds for requests in flight to finish before their connections close.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_SECS))]
    pub shutdown_grace_secs: u64,
    #[arg(long, default_value_t = 1024)]
    pub max_connections: u64,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let (dir, precision) = (args.model.clone(), args.dtype);
    let metrics = Arc::new(Metrics::default());
    let loading = || format!("loading the model `{}`", args.model.display());
    let backend = if is_reward_model_dir(&args.model).with_context(loading)? {
        let scorer = Scorer::start(move || Ok(RewardModel::load(&dir, device, precision, false)?)).with_context(loading)?;
        Backend::Score(scorer)
    } else {
        let (engine, info) =
            Engine::start(move || Ok(LanguageModel::load(&dir, device, precision)?), args.max_batch as usize, Arc::clone(&metrics))
                .with_context(loading)?;
        Backend::Generate { engine, info: Box::new(info) }
    };
    let model_id = match &args.name {
        Some(name) => name.clone(),
        None => args
            .model
            .canonicalize()
            .ok()
            .and_then(|dir| dir.file_name().map(|name| name.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into()),
    };
    let options = ServeOptions {
        bind: SocketAddr::new(args.host, args.port),
        model_id,
        max_queue: args.max_queue as usize,
        max_body_bytes: args.max_body_bytes,
        limits: ConnectionLimits {
            header_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(args.request_timeout_secs),
            idle_timeout: Duration::from_secs(120),
            max_connections: args.max_connections as usize,
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        },
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(serve(backend, metrics, options))
}
