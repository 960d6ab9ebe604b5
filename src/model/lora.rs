//! Low-rank adapters (LoRA, Hu et al. 2021): a frozen projection `W` learns `ΔW = (α/r)·B·A`, with
//! `A` `[r, in]` and `B` `[out, r]`, so that `y = W·x + (α/r)·B·A·dropout(x)`. `B` starts at
//! zero (the adapted model starts as the base) and `A` as PEFT draws it (uniform in
//! ±1/sqrt(in), torch's default linear init). The adapters live in their own `VarStore`, in fp32
//! whatever the base's dtype, so the optimizer sees only them; switched off they leave the base,
//! which is how the RL stages and DPO get their reference model without a second copy.
//!
//! Targets are named by role (`q`, `k`, `v`, `o`, `gate`, `up`, `down`) and each architecture says
//! which of its projections computes which role; GPT-2's `c_attn` computes q, k and v at once, so
//! it takes an adapter only when all three are targets.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use tch::nn::{Init, VarStore};
use tch::Tensor;

use super::blocks::Blocks;
use super::quantize::QuantizedLinear;

/// A projection role an adapter may target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Attention query.
    Q,
    K,
    V,
    /// Attention output.
    O,
    /// SwiGLU's gate (the Llama family only).
    Gate,
    /// The MLP's first projection (GPT-2's `c_fc`).
    Up,
    /// The MLP's last projection.
    Down,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = serde_json::to_value(self).expect("a target serialises");
        write!(f, "{}", name.as_str().expect("a target serialises to a string"))
    }
}

/// `lora = { r, alpha, dropout, targets }` of a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSettings {
    /// The adapters' rank.
    pub r: i64,
    /// The update is scaled by alpha / r; 2·r by default, as TRL's examples use.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// Dropout on the adapters' input, in training.
    #[serde(default)]
    pub dropout: f64,
    /// The roles adapted; by default every linear projection of the blocks the architecture has
    /// (QLoRA, Dettmers et al. 2023, found adapting all of them needed to match full fine-tuning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<Target>>,
    /// Whether the stage's checkpoint is the merged model (a plain HF checkpoint) rather than the
    /// adapters (a PEFT adapter directory over the base).
    #[serde(default)]
    pub merge: bool,
}

impl LoraSettings {
    pub fn alpha(&self) -> f64 {
        self.alpha.unwrap_or(2.0 * self.r as f64)
    }

    pub fn scale(&self) -> f64 {
        self.alpha() / self.r as f64
    }

    /// Values that parse but cannot work, as `(key, what is expected)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.r < 1 {
            return Err(("lora.r", format!("must be at least 1, got {}", self.r)));
        }
        if let Some(alpha) = self.alpha.filter(|alpha| !(*alpha > 0.0 && alpha.is_finite())) {
            return Err(("lora.alpha", format!("must be positive, got {alpha}")));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(("lora.dropout", format!("must be in [0, 1), got {}", self.dropout)));
        }
        let Some(targets) = &self.targets else { return Ok(()) };
        if targets.is_empty() {
            return Err(("lora.targets", "must name at least one of q, k, v, o, gate, up, down".into()));
        }
        let mut seen = targets.clone();
        seen.sort();
        if let Some(pair) = seen.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(("lora.targets", format!("names `{}` twice", pair[0])));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("`lora.targets`: `{target}` names no projection of this {architecture} model")]
    NoSuchTarget { target: Target, architecture: &'static str },
    #[error(
        "`lora.targets`: {architecture} computes {} in one projection (`{module}`): target all of them or none",
        roles.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ")
    )]
    PartlyTargeted { architecture: &'static str, module: String, roles: Vec<Target> },
}

/// How a projection's weight is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[out, in]`, torch's `nn.Linear`.
    OutIn,
    /// `[in, out]`, GPT-2's `Conv1D` (PEFT's `fan_in_fan_out`).
    InOut,
}

/// A linear projection of the blocks, with an adapter when one is attached.
#[derive(Debug)]
pub struct Projection {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub layout: Layout,
    adapter: RefCell<Option<Adapter>>,
    /// The weight in int8 or int4, when the model was loaded from a quantized checkpoint.
    quantized: RefCell<Option<QuantizedLinear>>,
}

impl Projection {
    pub fn new(weight: Tensor, bias: Option<Tensor>, layout: Layout) -> Self {
        Projection { weight, bias, layout, adapter: RefCell::new(None), quantized: RefCell::new(None) }
    }

    /// Computes with `quantized` from now on and frees the float weight: it keeps its shape, as
    /// a view of one zero, so that the model's shapes still read the same, and any write to it
    /// fails instead of going unnoticed.
    pub(crate) fn quantize(&self, quantized: QuantizedLinear) {
        let placeholder = Tensor::zeros([], (self.weight.kind(), self.weight.device())).expand(self.weight.size(), false);
        self.weight.shallow_clone().set_data(&placeholder);
        *self.quantized.borrow_mut() = Some(quantized);
    }

    pub fn is_quantized(&self) -> bool {
        self.quantized.borrow().is_some()
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let y = match &*self.quantized.borrow() {
            Some(quantized) => match &self.bias {
                Some(bias) => quantized.forward(x) + bias,
                None => quantized.forward(x),
            },
            None => self.float_forward(x),
        };
        match &*self.adapter.borrow() {
            Some(adapter) if adapter.enabled.get() => y + adapter.update(x, train),
            _ => y,
        }
    }

    fn float_forward(&self, x: &Tensor) -> Tensor {
        match self.layout {
            Layout::OutIn => x.linear(&self.weight, self.bias.as_ref()),
            Layout::InOut => match &self.bias {
                Some(bias) => x.matmul(&self.weight) + bias,
                None => x.matmul(&self.weight),
            },
        }
    }

    /// `(in, out)` widths.
    pub(crate) fn widths(&self) -> (i64, i64) {
        let size = self.weight.size();
        match self.layout {
            Layout::OutIn => (size[1], size[0]),
            Layout::InOut => (size[0], size[1]),
        }
    }

    /// The adapter's `(α/r)·B·A` in the weight's layout and dtype.
    fn delta_weight(&self) -> Option<Tensor> {
        let adapter = self.adapter.borrow();
        let adapter = adapter.as_ref()?;
        let delta = adapter.b.matmul(&adapter.a) * adapter.scale;
        let delta = match self.layout {
            Layout::OutIn => delta,
            Layout::InOut => delta.tr(),
        };
        Some(delta.to_kind(self.weight.kind()))
    }
}

#[derive(Debug)]
struct Adapter {
    /// `[r, in]`.
    a: Tensor,
    /// `[out, r]`.
    b: Tensor,
    scale: f64,
    dropout: f64,
    enabled: Rc<Cell<bool>>,
}

impl Adapter {
    /// `(α/r)·B·A·dropout(x)`, computed in the adapters' dtype (fp32) and returned in `x`'s.
    fn update(&self, x: &Tensor, train: bool) -> Tensor {
        let h = x.to_kind(self.a.kind()).dropout(self.dropout, train);
        (h.linear::<&Tensor>(&self.a, None).linear::<&Tensor>(&self.b, None) * self.scale).to_kind(x.kind())
    }
}

/// A model's adapters: their variables (named as PEFT names them under `base_model.model.`), the
/// settings they were made with, and the switch that turns them all on or off.
#[derive(Debug)]
pub struct Adapters {
    pub vs: VarStore,
    pub settings: LoraSettings,
    /// The adapted modules, by HF name (`model.layers.0.self_attn.q_proj`).
    pub modules: Vec<String>,
    enabled: Rc<Cell<bool>>,
}

impl Adapters {
    /// Creates adapters on the projections of `blocks` the settings target (drawn from libtorch's
    /// global RNG), in fp32 on `device`. `architecture` names the model in errors.
    pub fn attach(blocks: &Blocks, settings: &LoraSettings, architecture: &'static str, device: tch::Device) -> Result<Self, LoraError> {
        let mut adapters = Adapters::empty(settings, device);
        let mut matched = Vec::new();
        for (module, roles, projection) in blocks.projections() {
            let targeted: Vec<Target> =
                roles.iter().copied().filter(|role| settings.targets.as_ref().is_none_or(|targets| targets.contains(role))).collect();
            if targeted.is_empty() {
                continue;
            }
            if targeted.len() < roles.len() {
                return Err(LoraError::PartlyTargeted { architecture, module, roles: roles.to_vec() });
            }
            matched.extend(targeted);
            let (n_in, _) = projection.widths();
            let bound = 1.0 / (n_in as f64).sqrt();
            let _ = adapters.add(module, projection, Init::Uniform { lo: -bound, up: bound }, Init::Const(0.0));
        }
        if let Some(&target) = settings.targets.iter().flatten().find(|target| !matched.contains(target)) {
            return Err(LoraError::NoSuchTarget { target, architecture });
        }
        Ok(adapters)
    }

    /// No adapters yet, to `add` to.
    pub(crate) fn empty(settings: &LoraSettings, device: tch::Device) -> Self {
        Adapters { vs: VarStore::new(device), settings: settings.clone(), modules: Vec::new(), enabled: Rc::new(Cell::new(true)) }
    }

    /// Attaches an adapter of the settings' rank to `projection`, the HF module `module`, its `A`
    /// and `B` initialised as given; returns them (variables of `vs`).
    pub(crate) fn add(&mut self, module: String, projection: &Projection, init_a: Init, init_b: Init) -> (Tensor, Tensor) {
        let (n_in, n_out) = projection.widths();
        let path = module.split('.').fold(self.vs.root(), |path, part| path / part);
        let r = self.settings.r;
        let a = (&path / "lora_A").var("weight", &[r, n_in], init_a);
        let b = (&path / "lora_B").var("weight", &[n_out, r], init_b);
        let variables = (a.shallow_clone(), b.shallow_clone());
        let adapter = Adapter { a, b, scale: self.settings.scale(), dropout: self.settings.dropout, enabled: Rc::clone(&self.enabled) };
        *projection.adapter.borrow_mut() = Some(adapter);
        self.modules.push(module);
        variables
    }

    /// Runs `f` on the base model alone (the adapters switched off), e.g. for reference log-probs.
    pub fn without<T>(&self, f: impl FnOnce() -> T) -> T {
        let was = self.enabled.replace(false);
        let result = f();
        self.enabled.set(was);
        result
    }
}

/// Adds the updates of the adapters on `adapted`'s projections into the weights of the same
/// projections of `target`: the same blocks, or a copy's.
pub fn add_updates(adapted: &Blocks, target: &Blocks) {
    let _no_grad = tch::no_grad_guard();
    for ((_, _, projection), (_, _, into)) in adapted.projections().into_iter().zip(target.projections()) {
        if let Some(delta) = projection.delta_weight() {
            let _ = into.weight.shallow_clone().g_add_(&delta);
        }
    }
}

/// Adds each adapter's update into its projection's weight and removes the adapters: the model
/// then computes what it computed with them, as a plain model.
pub fn merge(blocks: &Blocks) {
    add_updates(blocks, blocks);
    for (_, _, projection) in blocks.projections() {
        *projection.adapter.borrow_mut() = None;
    }
}
