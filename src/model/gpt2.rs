//! GPT-2 (Radford et al. 2019) in libtorch: token + position embeddings, pre-LayerNorm blocks with
//! fused causal self-attention, tanh-GELU MLP, final LayerNorm and an LM head tied to the token
//! embedding. Parameter names and layouts are Hugging Face's (`transformer.h.0.attn.c_attn.weight`,
//! Conv1D weights as `[in, out]`), so a checkpoint is a safetensors dump of the `VarStore`.

use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use super::architecture::{ArchitectureConfig, HfHead, ModelConfig, Transformer};
use super::attention::{attend, positions_and_mask, AttentionMask, CacheShape, KvCache};
use super::blocks::{Block, Blocks, PassContext};
use super::lora::{Layout, Projection, Target};

/// The architecture hyper-parameters, with Hugging Face `GPT2Config` names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: i64,
    /// Context length: the number of learned positions.
    pub n_positions: i64,
    pub n_embd: i64,
    pub n_layer: i64,
    pub n_head: i64,
    /// Hidden width of the MLP; `None` means 4 × `n_embd`.
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "default_layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default)]
    pub embd_pdrop: f64,
    #[serde(default)]
    pub attn_pdrop: f64,
    #[serde(default)]
    pub resid_pdrop: f64,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    pub bos_token_id: i64,
    pub eos_token_id: i64,
}

fn default_layer_norm_epsilon() -> f64 {
    1e-5
}

fn default_initializer_range() -> f64 {
    0.02
}

impl Gpt2Config {
    pub fn head_dim(&self) -> i64 {
        self.n_embd / self.n_head
    }

    pub fn mlp_width(&self) -> i64 {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Reads `transformers.GPT2Config` keys, refusing the variants this implementation would
    /// compute differently.
    pub fn from_hf(json: &Value) -> Result<Self, String> {
        let get = |key: &str| json.get(key).filter(|v| !v.is_null());
        let activation = get("activation_function").and_then(Value::as_str).unwrap_or("gelu_new");
        if !matches!(activation, "gelu_new" | "gelu_pytorch_tanh") {
            return Err(format!(
                "activation_function is `{activation}`; only the tanh GELU (`gelu_new`, `gelu_pytorch_tanh`) is implemented"
            ));
        }
        let flag = |key: &str| get(key).and_then(Value::as_bool);
        if flag("add_cross_attention") == Some(true) {
            return Err("add_cross_attention = true (encoder-decoder GPT-2) is not supported".into());
        }
        if flag("scale_attn_by_inverse_layer_idx") == Some(true) {
            return Err("scale_attn_by_inverse_layer_idx = true is not supported".into());
        }
        if flag("scale_attn_weights") == Some(false) {
            return Err("scale_attn_weights = false (unscaled attention) is not supported".into());
        }
        if flag("tie_word_embeddings") == Some(false) {
            return Err("tie_word_embeddings = false: the LM head must be tied to `wte`".into());
        }
        let config: Gpt2Config = serde_json::from_value(json.clone()).map_err(|e| e.to_string())?;
        if config.n_embd % config.n_head != 0 {
            return Err(format!("n_embd = {} is not a multiple of n_head = {}", config.n_embd, config.n_head));
        }
        Ok(config)
    }
}

impl ArchitectureConfig for Gpt2Config {
    fn hf_class(&self, head: HfHead) -> &'static str {
        match head {
            HfHead::CausalLm => "GPT2LMHeadModel",
            HfHead::SequenceClassification => "GPT2ForSequenceClassification",
        }
    }

    fn vocab_size(&self) -> i64 {
        self.vocab_size
    }

    fn context_length(&self) -> i64 {
        self.n_positions
    }

    fn hidden_size(&self) -> i64 {
        self.n_embd
    }

    fn cache_shape(&self) -> CacheShape {
        CacheShape { layers: self.n_layer, kv_heads: self.n_head, head_dim: self.head_dim() }
    }

    fn eos_token_ids(&self) -> Vec<i64> {
        vec![self.eos_token_id]
    }

    fn to_hf(&self, torch_dtype: &str) -> Value {
        json!({
            "architectures": [self.hf_class(HfHead::CausalLm)],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": self.n_inner,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "embd_pdrop": self.embd_pdrop,
            "attn_pdrop": self.attn_pdrop,
            "resid_pdrop": self.resid_pdrop,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.eos_token_id,
            "scale_attn_weights": true,
            "scale_attn_by_inverse_layer_idx": false,
            "reorder_and_upcast_attn": false,
            "add_cross_attention": false,
            "tie_word_embeddings": true,
            "use_cache": true,
            // transformers 5 reads `dtype`, 4.x `torch_dtype`: both, so either loads it as written.
            "dtype": torch_dtype,
            "torch_dtype": torch_dtype,
        })
    }

    fn build(&self, root: &Path, _config: &ModelConfig) -> Box<dyn Transformer> {
        Box::new(Gpt2::new(root, self))
    }
}

/// HF's `Conv1D`: a linear layer whose weight is stored `[in, out]`.
fn conv1d(path: &Path, n_in: i64, n_out: i64, stdev: f64) -> Projection {
    Projection::new(
        path.var("weight", &[n_in, n_out], Init::Randn { mean: 0.0, stdev }),
        Some(path.var("bias", &[n_out], Init::Const(0.0))),
        Layout::InOut,
    )
}

#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(path: &Path, width: i64, eps: f64) -> Self {
        LayerNorm { weight: path.var("weight", &[width], Init::Const(1.0)), bias: path.var("bias", &[width], Init::Const(0.0)), eps }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let width = *x.size().last().expect("LayerNorm input has at least one dimension");
        x.layer_norm([width], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

#[derive(Debug)]
struct Attention {
    c_attn: Projection,
    c_proj: Projection,
    n_head: i64,
    attn_dropout: f64,
    resid_dropout: f64,
}

impl Attention {
    fn forward(&self, x: &Tensor, mask: &AttentionMask, cache: Option<(&mut KvCache, usize)>, train: bool) -> Tensor {
        let (batch, time, width) = x.size3().expect("attention input is [batch, time, width]");
        let head_dim = width / self.n_head;
        let split_heads = |t: Tensor| t.view([batch, time, self.n_head, head_dim]).transpose(1, 2);
        let qkv = self.c_attn.forward(x, train).split(width, 2);
        let [q, k, v]: [Tensor; 3] = qkv.try_into().expect("c_attn yields query, key and value");
        let (q, k, v) = (split_heads(q), split_heads(k), split_heads(v));
        let (k, v) = match cache {
            Some((cache, layer)) => cache.extend(layer, &k, &v),
            None => (k, v),
        };
        let y = attend(&q, &k, &v, mask, if train { self.attn_dropout } else { 0.0 });
        let y = y.transpose(1, 2).contiguous().view([batch, time, width]);
        self.c_proj.forward(&y, train).dropout(self.resid_dropout, train)
    }
}

#[derive(Debug)]
struct Mlp {
    c_fc: Projection,
    c_proj: Projection,
    dropout: f64,
}

impl Mlp {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.c_proj.forward(&self.c_fc.forward(x, train).gelu("tanh"), train).dropout(self.dropout, train)
    }
}

#[derive(Debug)]
struct Gpt2Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Gpt2Block {
    fn new(path: &Path, config: &Gpt2Config) -> Self {
        let std = config.initializer_range;
        // GPT-2 scales the init of the projections that write into the residual stream by
        // 1/sqrt(2·n_layer), since each block adds two of them (Radford et al. 2019, §2.3).
        let residual_std = std / (2.0 * config.n_layer as f64).sqrt();
        let attn = path / "attn";
        let mlp = path / "mlp";
        Gpt2Block {
            ln_1: LayerNorm::new(&(path / "ln_1"), config.n_embd, config.layer_norm_epsilon),
            attn: Attention {
                c_attn: conv1d(&(&attn / "c_attn"), config.n_embd, 3 * config.n_embd, std),
                c_proj: conv1d(&(&attn / "c_proj"), config.n_embd, config.n_embd, residual_std),
                n_head: config.n_head,
                attn_dropout: config.attn_pdrop,
                resid_dropout: config.resid_pdrop,
            },
            ln_2: LayerNorm::new(&(path / "ln_2"), config.n_embd, config.layer_norm_epsilon),
            mlp: Mlp {
                c_fc: conv1d(&(&mlp / "c_fc"), config.n_embd, config.mlp_width(), std),
                c_proj: conv1d(&(&mlp / "c_proj"), config.mlp_width(), config.n_embd, residual_std),
                dropout: config.resid_pdrop,
            },
        }
    }
}

impl Block for Gpt2Block {
    fn forward(&self, x: &Tensor, pass: &PassContext, cache: Option<(&mut KvCache, usize)>, train: bool) -> Tensor {
        let x = x + self.attn.forward(&self.ln_1.forward(x), &pass.mask, cache, train);
        &x + self.mlp.forward(&self.ln_2.forward(&x), train)
    }

    fn projections(&self) -> Vec<(&'static str, &'static [Target], &Projection)> {
        vec![
            ("attn.c_attn", &[Target::Q, Target::K, Target::V], &self.attn.c_attn),
            ("attn.c_proj", &[Target::O], &self.attn.c_proj),
            ("mlp.c_fc", &[Target::Up], &self.mlp.c_fc),
            ("mlp.c_proj", &[Target::Down], &self.mlp.c_proj),
        ]
    }
}

/// The GPT-2 transformer with its tied LM head.
#[derive(Debug)]
pub struct Gpt2 {
    config: ModelConfig,
    embd_pdrop: f64,
    wte: Tensor,
    wpe: Tensor,
    blocks: Blocks,
    ln_f: LayerNorm,
}

impl Gpt2 {
    /// Creates the variables under `root / "transformer"` with GPT-2's initialisation.
    pub fn new(root: &Path, config: &Gpt2Config) -> Self {
        let path = root / "transformer";
        let std = config.initializer_range;
        let h = &path / "h";
        Gpt2 {
            wte: (&path / "wte").var("weight", &[config.vocab_size, config.n_embd], Init::Randn { mean: 0.0, stdev: std }),
            wpe: (&path / "wpe").var("weight", &[config.n_positions, config.n_embd], Init::Randn { mean: 0.0, stdev: std }),
            blocks: Blocks::new(
                "transformer.h",
                (0..config.n_layer).map(|i| Rc::new(Gpt2Block::new(&(&h / i), config)) as Rc<dyn Block>).collect(),
                [config.embd_pdrop, config.attn_pdrop, config.resid_pdrop].iter().any(|&p| p > 0.0),
            ),
            ln_f: LayerNorm::new(&(&path / "ln_f"), config.n_embd, config.layer_norm_epsilon),
            embd_pdrop: config.embd_pdrop,
            config: ModelConfig::Gpt2(config.clone()),
        }
    }
}

impl Transformer for Gpt2 {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, mut cache: Option<&mut KvCache>, train: bool) -> Tensor {
        let (batch, time) = input_ids.size2().expect("input_ids is [batch, time]");
        let past = cache.as_ref().map_or(0, |c| c.len());
        let (position_ids, mask) = positions_and_mask(attention_mask, batch, past, time, input_ids.device());
        let token_embeddings = Tensor::embedding(&self.wte, input_ids, -1, false, false);
        let position_embeddings = Tensor::embedding(&self.wpe, &position_ids, -1, false, false);
        let x = (token_embeddings + position_embeddings).dropout(self.embd_pdrop, train);
        let x = self.blocks.forward(x, PassContext { mask, rotary: None }, cache.as_deref_mut(), train);
        if let Some(cache) = cache {
            cache.advance(time);
        }
        self.ln_f.forward(&x)
    }

    fn logits(&self, hidden: &Tensor) -> Tensor {
        hidden.matmul(&self.wte.tr())
    }

    fn device(&self) -> tch::Device {
        self.wte.device()
    }

    fn kind(&self) -> Kind {
        self.wte.kind()
    }

    fn blocks(&self) -> &Blocks {
        &self.blocks
    }
}
