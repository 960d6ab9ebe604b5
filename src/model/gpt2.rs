//! GPT-2 (Radford et al. 2019) in libtorch: token + position embeddings, pre-LayerNorm blocks with
//! fused causal self-attention, tanh-GELU MLP, final LayerNorm and an LM head tied to the token
//! embedding. Parameter names and layouts are Hugging Face's (`transformer.h.0.attn.c_attn.weight`,
//! Conv1D weights as `[in, out]`), so a checkpoint is a safetensors dump of the `VarStore`.

use serde::{Deserialize, Serialize};
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

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
}

/// HF's `Conv1D`: a linear layer whose weight is stored `[in, out]`.
#[derive(Debug)]
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    fn new(path: &Path, n_in: i64, n_out: i64, stdev: f64) -> Self {
        Conv1D {
            weight: path.var("weight", &[n_in, n_out], Init::Randn { mean: 0.0, stdev }),
            bias: path.var("bias", &[n_out], Init::Const(0.0)),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.weight) + &self.bias
    }
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

/// Keys and values of earlier positions, one buffer per layer, allocated once for the whole
/// generation (`[batch, heads, capacity, head_dim]`) so that a decoding step copies only the new
/// position instead of concatenating the whole history.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: i64,
    capacity: i64,
}

impl KvCache {
    pub fn new(config: &Gpt2Config, batch: i64, capacity: i64, kind: Kind, device: tch::Device) -> Self {
        let shape = [batch, config.n_head, capacity, config.head_dim()];
        let buffers = || (0..config.n_layer).map(|_| Tensor::zeros(shape, (kind, device))).collect();
        KvCache { keys: buffers(), values: buffers(), len: 0, capacity }
    }

    /// Number of positions already stored.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Which key positions each query may attend to, built once per forward pass and shared by all
/// layers.
enum AttentionMask {
    /// No padding and no cache: plain causal attention, left to the fused kernel.
    Causal,
    /// No padding, decoding one position against the cache: every cached key is visible.
    All,
    /// Boolean `[batch, 1, queries, keys]`, true where attention is allowed.
    Explicit(Tensor),
}

#[derive(Debug)]
struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: i64,
    attn_dropout: f64,
    resid_dropout: f64,
}

impl Attention {
    fn forward(&self, x: &Tensor, mask: &AttentionMask, cache: Option<(&mut Tensor, &mut Tensor, i64)>, train: bool) -> Tensor {
        let (batch, time, width) = x.size3().expect("attention input is [batch, time, width]");
        let head_dim = width / self.n_head;
        let split_heads = |t: Tensor| t.view([batch, time, self.n_head, head_dim]).transpose(1, 2);
        let qkv = self.c_attn.forward(x).split(width, 2);
        let [q, k, v]: [Tensor; 3] = qkv.try_into().expect("c_attn yields query, key and value");
        let (q, k, v) = (split_heads(q), split_heads(k), split_heads(v));
        let (k, v) = match cache {
            Some((key_cache, value_cache, past)) => {
                key_cache.narrow(2, past, time).copy_(&k);
                value_cache.narrow(2, past, time).copy_(&v);
                (key_cache.narrow(2, 0, past + time), value_cache.narrow(2, 0, past + time))
            }
            None => (k, v),
        };
        let dropout = if train { self.attn_dropout } else { 0.0 };
        let y = match mask {
            AttentionMask::Causal => Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, dropout, true, None, false),
            AttentionMask::All => Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, dropout, false, None, false),
            AttentionMask::Explicit(allowed) => {
                Tensor::scaled_dot_product_attention(&q, &k, &v, Some(allowed), dropout, false, None, false)
            }
        };
        let y = y.transpose(1, 2).contiguous().view([batch, time, width]);
        self.c_proj.forward(&y).dropout(self.resid_dropout, train)
    }
}

#[derive(Debug)]
struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
    dropout: f64,
}

impl Mlp {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.c_proj.forward(&self.c_fc.forward(x).gelu("tanh")).dropout(self.dropout, train)
    }
}

#[derive(Debug)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(path: &Path, config: &Gpt2Config) -> Self {
        let std = config.initializer_range;
        // GPT-2 scales the init of the projections that write into the residual stream by
        // 1/sqrt(2·n_layer), since each block adds two of them (Radford et al. 2019, §2.3).
        let residual_std = std / (2.0 * config.n_layer as f64).sqrt();
        let attn = path / "attn";
        let mlp = path / "mlp";
        Block {
            ln_1: LayerNorm::new(&(path / "ln_1"), config.n_embd, config.layer_norm_epsilon),
            attn: Attention {
                c_attn: Conv1D::new(&(&attn / "c_attn"), config.n_embd, 3 * config.n_embd, std),
                c_proj: Conv1D::new(&(&attn / "c_proj"), config.n_embd, config.n_embd, residual_std),
                n_head: config.n_head,
                attn_dropout: config.attn_pdrop,
                resid_dropout: config.resid_pdrop,
            },
            ln_2: LayerNorm::new(&(path / "ln_2"), config.n_embd, config.layer_norm_epsilon),
            mlp: Mlp {
                c_fc: Conv1D::new(&(&mlp / "c_fc"), config.n_embd, config.mlp_width(), std),
                c_proj: Conv1D::new(&(&mlp / "c_proj"), config.mlp_width(), config.n_embd, residual_std),
                dropout: config.resid_pdrop,
            },
        }
    }
}

/// The GPT-2 transformer with its tied LM head.
#[derive(Debug)]
pub struct Gpt2 {
    pub config: Gpt2Config,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
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
            blocks: (0..config.n_layer).map(|i| Block::new(&(&h / i), config)).collect(),
            ln_f: LayerNorm::new(&(&path / "ln_f"), config.n_embd, config.layer_norm_epsilon),
            config: config.clone(),
        }
    }

    /// Hidden states after the final LayerNorm, `[batch, time, n_embd]`.
    ///
    /// `attention_mask` (`[batch, past + time]`, 1 for real tokens, 0 for padding) covers the
    /// cached positions and the new ones. Positions are counted over real tokens only, so a
    /// left-padded row sees the same positions (and so the same outputs) as the row unpadded.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, mut cache: Option<&mut KvCache>, train: bool) -> Tensor {
        let (batch, time) = input_ids.size2().expect("input_ids is [batch, time]");
        let device = input_ids.device();
        let past = cache.as_ref().map_or(0, |c| c.len);
        let padded = attention_mask.filter(|mask| mask.min().int64_value(&[]) == 0);

        let position_ids = match padded {
            Some(mask) => (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0).narrow(1, past, time),
            None => Tensor::arange_start(past, past + time, (Kind::Int64, device)).unsqueeze(0).expand([batch, time], false),
        };
        let mask = match padded {
            Some(mask) => AttentionMask::Explicit(allowed_attention(mask, past, time)),
            None if past == 0 => AttentionMask::Causal,
            None if time == 1 => AttentionMask::All,
            None => {
                let all_real = Tensor::ones([batch, past + time], (Kind::Int64, device));
                AttentionMask::Explicit(allowed_attention(&all_real, past, time))
            }
        };

        let token_embeddings = Tensor::embedding(&self.wte, input_ids, -1, false, false);
        let position_embeddings = Tensor::embedding(&self.wpe, &position_ids, -1, false, false);
        let mut x = (token_embeddings + position_embeddings).dropout(self.config.embd_pdrop, train);
        for (layer, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (&mut c.keys[layer], &mut c.values[layer], past));
            x = &x + block.attn.forward(&block.ln_1.forward(&x), &mask, layer_cache, train);
            x = &x + block.mlp.forward(&block.ln_2.forward(&x), train);
        }
        if let Some(cache) = cache {
            assert!(past + time <= cache.capacity, "KV cache capacity {} exceeded", cache.capacity);
            cache.len = past + time;
        }
        self.ln_f.forward(&x)
    }

    pub fn device(&self) -> tch::Device {
        self.wte.device()
    }

    /// The dtype of the weights (and so of the activations).
    pub fn kind(&self) -> Kind {
        self.wte.kind()
    }

    /// Next-token logits from hidden states through the head tied to the token embedding.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        hidden.matmul(&self.wte.tr())
    }

    /// `forward` then `logits`: `[batch, time, vocab_size]`.
    pub fn forward_logits(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, train: bool) -> Tensor {
        self.logits(&self.forward(input_ids, attention_mask, None, train))
    }
}

/// Boolean `[batch, 1, time, past + time]`: query `q` may see key `k` when `k ≤ q` (causal) and `k`
/// is a real token. A padding query may always see itself, so that no row is fully masked (which
/// would make the fused kernel return NaN); its output is never used.
fn allowed_attention(attention_mask: &Tensor, past: i64, time: i64) -> Tensor {
    let device = attention_mask.device();
    let keys = past + time;
    let query_positions = Tensor::arange_start(past, keys, (Kind::Int64, device)).unsqueeze(1);
    let key_positions = Tensor::arange(keys, (Kind::Int64, device)).unsqueeze(0);
    let causal = key_positions.le_tensor(&query_positions);
    let is_self = key_positions.eq_tensor(&query_positions);
    let real_keys = attention_mask.ne(0).unsqueeze(1);
    (causal.unsqueeze(0).logical_and(&real_keys)).logical_or(&is_self.unsqueeze(0)).unsqueeze(1)
}

/// A scalar read-out of the hidden states (reward or value), stored beside the LM weights under
/// its own name (`reward_head.weight` …).
#[derive(Debug)]
pub struct ScalarHead {
    weight: Tensor,
    bias: Tensor,
}

impl ScalarHead {
    /// `stdev` small (e.g. 1/sqrt(n_embd+1)) keeps initial scores near zero.
    pub fn new(path: &Path, n_embd: i64, stdev: f64) -> Self {
        ScalarHead {
            weight: path.var("weight", &[1, n_embd], Init::Randn { mean: 0.0, stdev }),
            bias: path.var("bias", &[1], Init::Const(0.0)),
        }
    }

    /// One score per position: `[batch, time, n_embd]` → `[batch, time]`.
    pub fn forward(&self, hidden: &Tensor) -> Tensor {
        hidden.linear(&self.weight, Some(&self.bias)).squeeze_dim(-1)
    }
}
