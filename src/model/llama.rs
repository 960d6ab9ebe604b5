//! The Llama family in libtorch — Llama 2/3 (Touvron et al. 2023), Qwen2 and Qwen3 — as
//! `transformers` computes it: RMSNorm before attention and MLP, rotary position embeddings
//! (Su et al. 2021; `rope_theta`, and Llama 3's frequency scaling), grouped-query attention
//! (Ainslie et al. 2023) with the KV cache, a SwiGLU MLP (Shazeer 2020), and an LM head tied to
//! the token embedding or not. The members differ in small ways: Qwen2 adds biases to the query,
//! key and value projections, Qwen3 normalises each head's queries and keys (and may set a
//! `head_dim` other than hidden/heads). Parameter names and layouts are Hugging Face's
//! (`model.layers.0.self_attn.q_proj.weight`, linear weights `[out, in]`).

use std::rc::Rc;

use serde_json::{json, Value};
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use super::architecture::{ArchitectureConfig, HfHead, ModelConfig, Transformer};
use super::attention::{attend, positions_and_mask, AttentionMask, CacheShape, KvCache};
use super::blocks::{Block, Blocks, PassContext, Rotary};
use super::lora::{Layout, Projection, Target};

/// Which member of the family: its `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
    Qwen3,
}

impl Family {
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }

    fn class(self, head: HfHead) -> &'static str {
        match (self, head) {
            (Family::Llama, HfHead::CausalLm) => "LlamaForCausalLM",
            (Family::Qwen2, HfHead::CausalLm) => "Qwen2ForCausalLM",
            (Family::Qwen3, HfHead::CausalLm) => "Qwen3ForCausalLM",
            (Family::Llama, HfHead::SequenceClassification) => "LlamaForSequenceClassification",
            (Family::Qwen2, HfHead::SequenceClassification) => "Qwen2ForSequenceClassification",
            (Family::Qwen3, HfHead::SequenceClassification) => "Qwen3ForSequenceClassification",
        }
    }
}

/// Llama 3's rescaling of the rotary frequencies (`rope_scaling = {rope_type = "llama3", …}`):
/// long wavelengths divided by `factor`, short ones kept, those between interpolated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// The hyper-parameters, with Hugging Face's names (`LlamaConfig`, `Qwen2Config`, `Qwen3Config`).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub family: Family,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub max_position_embeddings: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    pub tie_word_embeddings: bool,
    /// Bias on the query, key and value projections (Llama's `attention_bias` also puts one on
    /// the output projection; Qwen2 always has these three and never that one).
    pub qkv_bias: bool,
    pub output_bias: bool,
    pub attention_dropout: f64,
    pub initializer_range: f64,
    pub bos_token_id: Option<i64>,
    /// Generation stops at any of these.
    pub eos_token_ids: Vec<i64>,
}

impl LlamaConfig {
    /// Reads a `config.json` of model_type `llama`, `qwen2` or `qwen3`.
    pub fn from_hf(json: &Value) -> Result<Self, String> {
        let family = match json.get("model_type").and_then(Value::as_str) {
            Some("llama") => Family::Llama,
            Some("qwen2") => Family::Qwen2,
            Some("qwen3") => Family::Qwen3,
            other => return Err(format!("model_type {other:?} is not of the Llama family")),
        };
        let get = |key: &str| json.get(key).filter(|v| !v.is_null());
        let integer =
            |key: &str| get(key).ok_or_else(|| format!("no `{key}`"))?.as_i64().ok_or_else(|| format!("`{key}` is not an integer"));
        let number =
            |key: &str, default: f64| get(key).map_or(Ok(default), |v| v.as_f64().ok_or_else(|| format!("`{key}` is not a number")));
        let flag =
            |key: &str, default: bool| get(key).map_or(Ok(default), |v| v.as_bool().ok_or_else(|| format!("`{key}` is not a boolean")));

        let hidden_size = integer("hidden_size")?;
        let num_attention_heads = integer("num_attention_heads")?;
        let num_key_value_heads = get("num_key_value_heads").map_or(Ok(num_attention_heads), |_| integer("num_key_value_heads"))?;
        let head_dim = get("head_dim").map_or(Ok(hidden_size / num_attention_heads.max(1)), |_| integer("head_dim"))?;
        if num_attention_heads <= 0 || num_key_value_heads <= 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(format!(
                "num_attention_heads = {num_attention_heads} must be a positive multiple of num_key_value_heads = {num_key_value_heads}"
            ));
        }
        if head_dim <= 0 || head_dim % 2 != 0 {
            return Err(format!("head_dim = {head_dim} must be positive and even (rotary embeddings rotate pairs)"));
        }
        if get("head_dim").is_none() && hidden_size % num_attention_heads != 0 {
            return Err(format!("hidden_size = {hidden_size} is not a multiple of num_attention_heads = {num_attention_heads}"));
        }
        let activation = get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
        if activation != "silu" {
            return Err(format!("hidden_act is `{activation}`; only `silu` (SwiGLU) is implemented"));
        }
        if flag("mlp_bias", false)? {
            return Err("mlp_bias = true is not supported".into());
        }
        if flag("use_sliding_window", false)? {
            return Err("use_sliding_window = true (sliding-window attention) is not supported".into());
        }
        // transformers ≥ 5 writes `rope_parameters` (theta and scaling together); older
        // versions `rope_theta` and `rope_scaling`.
        let rope_parameters = get("rope_parameters");
        let attention_bias = flag("attention_bias", false)?;
        let (qkv_bias, output_bias) = match family {
            Family::Qwen2 => (true, false),
            Family::Llama | Family::Qwen3 => (attention_bias, attention_bias),
        };
        let eos_token_ids = match get("eos_token_id") {
            None => Vec::new(),
            Some(Value::Array(ids)) => {
                ids.iter().map(|id| id.as_i64().ok_or("`eos_token_id` lists a non-integer")).collect::<Result<_, _>>()?
            }
            Some(id) => vec![id.as_i64().ok_or("`eos_token_id` is not an integer")?],
        };
        Ok(LlamaConfig {
            family,
            vocab_size: integer("vocab_size")?,
            hidden_size,
            intermediate_size: integer("intermediate_size")?,
            num_hidden_layers: integer("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: integer("max_position_embeddings")?,
            rms_norm_eps: number("rms_norm_eps", 1e-6)?,
            rope_theta: match rope_parameters.and_then(|p| p.get("rope_theta")) {
                Some(theta) => theta.as_f64().ok_or("`rope_parameters.rope_theta` is not a number")?,
                None => number("rope_theta", 10_000.0)?,
            },
            rope_scaling: rope_scaling(get("rope_scaling").or(rope_parameters))?,
            tie_word_embeddings: flag("tie_word_embeddings", family != Family::Llama)?,
            qkv_bias,
            output_bias,
            attention_dropout: number("attention_dropout", 0.0)?,
            initializer_range: number("initializer_range", 0.02)?,
            bos_token_id: get("bos_token_id").and_then(Value::as_i64),
            eos_token_ids,
        })
    }
}

/// `rope_scaling`: none, or Llama 3's; anything else is refused by name.
fn rope_scaling(value: Option<&Value>) -> Result<Option<Llama3Scaling>, String> {
    let Some(scaling) = value else { return Ok(None) };
    let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(Value::as_str).unwrap_or("");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let number = |key: &str| {
                scaling.get(key).and_then(Value::as_f64).ok_or_else(|| format!("rope_scaling of type llama3 needs a number `{key}`"))
            };
            Ok(Some(Llama3Scaling {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")?,
            }))
        }
        other => Err(format!("rope_scaling of type `{other}` is not supported (supported: none, `default`, `llama3`)")),
    }
}

impl ArchitectureConfig for LlamaConfig {
    fn hf_class(&self, head: HfHead) -> &'static str {
        self.family.class(head)
    }

    fn vocab_size(&self) -> i64 {
        self.vocab_size
    }

    fn context_length(&self) -> i64 {
        self.max_position_embeddings
    }

    fn hidden_size(&self) -> i64 {
        self.hidden_size
    }

    fn cache_shape(&self) -> CacheShape {
        CacheShape { layers: self.num_hidden_layers, kv_heads: self.num_key_value_heads, head_dim: self.head_dim }
    }

    fn eos_token_ids(&self) -> Vec<i64> {
        self.eos_token_ids.clone()
    }

    fn to_hf(&self, torch_dtype: &str) -> Value {
        let eos = match self.eos_token_ids.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        let mut config = json!({
            "architectures": [self.family.class(HfHead::CausalLm)],
            "model_type": self.family.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling.map(|s| json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            })),
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "mlp_bias": false,
            "attention_dropout": self.attention_dropout,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "use_cache": true,
            "dtype": torch_dtype,
            "torch_dtype": torch_dtype,
        });
        if self.family != Family::Qwen2 {
            config["attention_bias"] = json!(self.qkv_bias);
        }
        config
    }

    fn build(&self, root: &Path, config: &ModelConfig) -> Box<dyn Transformer> {
        Box::new(Llama::new(root, self, config.clone()))
    }
}

/// `y = x / rms(x) · weight`, computed in fp32 as transformers does.
#[derive(Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(path: &Path, width: i64, eps: f64) -> Self {
        RmsNorm { weight: path.var("weight", &[width], Init::Const(1.0)), eps }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x32 = x.to_kind(Kind::Float);
        let variance = x32.square().mean_dim(-1, true, Kind::Float);
        let normed = (x32 * (variance + self.eps).rsqrt()).to_kind(x.kind());
        &self.weight * normed
    }
}

/// A linear layer with HF's `[out, in]` weight.
fn linear(path: &Path, n_in: i64, n_out: i64, bias: bool, stdev: f64) -> Projection {
    Projection::new(
        path.var("weight", &[n_out, n_in], Init::Randn { mean: 0.0, stdev }),
        bias.then(|| path.var("bias", &[n_out], Init::Const(0.0))),
        Layout::OutIn,
    )
}

#[derive(Debug)]
struct Attention {
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    o_proj: Projection,
    /// Qwen3: RMSNorm over each head's queries and keys, before the rotation.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    dropout: f64,
}

impl Attention {
    fn forward(&self, x: &Tensor, rotary: &Rotary, mask: &AttentionMask, cache: Option<(&mut KvCache, usize)>, train: bool) -> Tensor {
        let (batch, time, _) = x.size3().expect("attention input is [batch, time, hidden]");
        let heads = |t: Tensor, count: i64, norm: &Option<RmsNorm>| {
            let t = t.view([batch, time, count, self.head_dim]);
            let t = match norm {
                Some(norm) => norm.forward(&t),
                None => t,
            };
            t.transpose(1, 2)
        };
        let q = rotary.apply(&heads(self.q_proj.forward(x, train), self.heads, &self.q_norm));
        let k = rotary.apply(&heads(self.k_proj.forward(x, train), self.kv_heads, &self.k_norm));
        let v = heads(self.v_proj.forward(x, train), self.kv_heads, &None);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.extend(layer, &k, &v),
            None => (k, v),
        };
        let y = attend(&q, &k, &v, mask, if train { self.dropout } else { 0.0 });
        self.o_proj.forward(&y.transpose(1, 2).contiguous().view([batch, time, self.heads * self.head_dim]), train)
    }
}

/// SwiGLU: `down(silu(gate(x)) · up(x))`.
#[derive(Debug)]
struct Mlp {
    gate_proj: Projection,
    up_proj: Projection,
    down_proj: Projection,
}

impl Mlp {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.down_proj.forward(&(self.gate_proj.forward(x, train).silu() * self.up_proj.forward(x, train)), train)
    }
}

#[derive(Debug)]
struct Layer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Layer {
    fn new(path: &Path, config: &LlamaConfig) -> Self {
        let std = config.initializer_range;
        let (attn, mlp) = (path / "self_attn", path / "mlp");
        let (hidden, heads, kv_heads, head_dim) =
            (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim);
        let head_norm = |name: &str| (config.family == Family::Qwen3).then(|| RmsNorm::new(&(&attn / name), head_dim, config.rms_norm_eps));
        Layer {
            input_layernorm: RmsNorm::new(&(path / "input_layernorm"), hidden, config.rms_norm_eps),
            self_attn: Attention {
                q_proj: linear(&(&attn / "q_proj"), hidden, heads * head_dim, config.qkv_bias, std),
                k_proj: linear(&(&attn / "k_proj"), hidden, kv_heads * head_dim, config.qkv_bias, std),
                v_proj: linear(&(&attn / "v_proj"), hidden, kv_heads * head_dim, config.qkv_bias, std),
                o_proj: linear(&(&attn / "o_proj"), heads * head_dim, hidden, config.output_bias, std),
                q_norm: head_norm("q_norm"),
                k_norm: head_norm("k_norm"),
                heads,
                kv_heads,
                head_dim,
                dropout: config.attention_dropout,
            },
            post_attention_layernorm: RmsNorm::new(&(path / "post_attention_layernorm"), hidden, config.rms_norm_eps),
            mlp: Mlp {
                gate_proj: linear(&(&mlp / "gate_proj"), hidden, config.intermediate_size, false, std),
                up_proj: linear(&(&mlp / "up_proj"), hidden, config.intermediate_size, false, std),
                down_proj: linear(&(&mlp / "down_proj"), config.intermediate_size, hidden, false, std),
            },
        }
    }
}

impl Block for Layer {
    fn forward(&self, x: &Tensor, pass: &PassContext, cache: Option<(&mut KvCache, usize)>, train: bool) -> Tensor {
        let rotary = pass.rotary.as_ref().expect("the Llama family's blocks are given the rotation");
        let x = x + self.self_attn.forward(&self.input_layernorm.forward(x), rotary, &pass.mask, cache, train);
        &x + self.mlp.forward(&self.post_attention_layernorm.forward(&x), train)
    }

    fn projections(&self) -> Vec<(&'static str, &'static [Target], &Projection)> {
        vec![
            ("self_attn.q_proj", &[Target::Q], &self.self_attn.q_proj),
            ("self_attn.k_proj", &[Target::K], &self.self_attn.k_proj),
            ("self_attn.v_proj", &[Target::V], &self.self_attn.v_proj),
            ("self_attn.o_proj", &[Target::O], &self.self_attn.o_proj),
            ("mlp.gate_proj", &[Target::Gate], &self.mlp.gate_proj),
            ("mlp.up_proj", &[Target::Up], &self.mlp.up_proj),
            ("mlp.down_proj", &[Target::Down], &self.mlp.down_proj),
        ]
    }
}

/// The Llama-family transformer with its LM head.
#[derive(Debug)]
pub struct Llama {
    config: ModelConfig,
    embed_tokens: Tensor,
    layers: Blocks,
    norm: RmsNorm,
    /// `None` when the head is tied to `embed_tokens`.
    lm_head: Option<Tensor>,
    /// `[head_dim / 2]` rotary frequencies, fp32.
    inv_freq: Tensor,
}

impl Llama {
    /// Creates the variables under `root / "model"` (and `root / "lm_head"` when untied) with the
    /// family's initialisation: normal(0, initializer_range) weights, zero biases, unit norms.
    pub fn new(root: &Path, config: &LlamaConfig, model_config: ModelConfig) -> Self {
        let path = root / "model";
        let std = config.initializer_range;
        let layers = &path / "layers";
        let init = Init::Randn { mean: 0.0, stdev: std };
        Llama {
            embed_tokens: (&path / "embed_tokens").var("weight", &[config.vocab_size, config.hidden_size], init),
            layers: Blocks::new(
                "model.layers",
                (0..config.num_hidden_layers).map(|i| Rc::new(Layer::new(&(&layers / i), config)) as Rc<dyn Block>).collect(),
                config.attention_dropout > 0.0,
            ),
            norm: RmsNorm::new(&(&path / "norm"), config.hidden_size, config.rms_norm_eps),
            lm_head: (!config.tie_word_embeddings)
                .then(|| (root / "lm_head").var("weight", &[config.vocab_size, config.hidden_size], init)),
            inv_freq: inverse_frequencies(config, root.device()),
            config: model_config,
        }
    }

    fn rotary(&self, position_ids: &Tensor, kind: Kind) -> Rotary {
        // fp32 angles, as transformers computes them, then the activations' dtype.
        let angles = position_ids.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let angles = Tensor::cat(&[&angles, &angles], -1).unsqueeze(1);
        Rotary { cos: angles.cos().to_kind(kind), sin: angles.sin().to_kind(kind) }
    }
}

/// θ^(−2i/d) for i < d/2, rescaled as Llama 3 does when asked (transformers'
/// `_compute_llama3_parameters`).
fn inverse_frequencies(config: &LlamaConfig, device: tch::Device) -> Tensor {
    let dim = config.head_dim as f64;
    let frequencies: Vec<f32> = (0..config.head_dim / 2)
        .map(|i| {
            let base = 1.0 / config.rope_theta.powf(2.0 * i as f64 / dim);
            let Some(s) = config.rope_scaling else { return base as f32 };
            let (low_wavelength, high_wavelength) =
                (s.original_max_position_embeddings / s.low_freq_factor, s.original_max_position_embeddings / s.high_freq_factor);
            let wavelength = 2.0 * std::f64::consts::PI / base;
            let scaled = if wavelength > low_wavelength {
                base / s.factor
            } else if wavelength < high_wavelength {
                base
            } else {
                let smooth =
                    (s.original_max_position_embeddings / wavelength - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * base / s.factor + smooth * base
            };
            scaled as f32
        })
        .collect();
    Tensor::from_slice(&frequencies).to_device(device)
}

impl Transformer for Llama {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, mut cache: Option<&mut KvCache>, train: bool) -> Tensor {
        let (batch, time) = input_ids.size2().expect("input_ids is [batch, time]");
        let past = cache.as_ref().map_or(0, |c| c.len());
        let (position_ids, mask) = positions_and_mask(attention_mask, batch, past, time, input_ids.device());
        let x = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
        let rotary = self.rotary(&position_ids, x.kind());
        let x = self.layers.forward(x, PassContext { mask, rotary: Some(rotary) }, cache.as_deref_mut(), train);
        if let Some(cache) = cache {
            cache.advance(time);
        }
        self.norm.forward(&x)
    }

    fn logits(&self, hidden: &Tensor) -> Tensor {
        hidden.matmul(&self.lm_head.as_ref().unwrap_or(&self.embed_tokens).tr())
    }

    fn device(&self) -> tch::Device {
        self.embed_tokens.device()
    }

    fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    fn blocks(&self) -> &Blocks {
        &self.layers
    }
}
