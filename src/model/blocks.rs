//! The stack of transformer blocks every architecture runs, and gradient checkpointing over it
//! (Chen et al. 2016, "Training deep nets with sublinear memory cost"): with it on, a training
//! forward pass keeps only each block's input; the activations inside a block are recomputed
//! during the backward pass, block by block from the last. Peak activation memory then grows
//! with one block's activations instead of all of them, for about one more forward pass.
//!
//! libtorch's C++ autograd cannot call back into Rust during `backward`, so the recomputation
//! runs right after it: a checkpointed forward pass leaves a pending chain on this thread, and
//! [`backward`] — what every stage calls instead of `Tensor::backward` — runs the loss's backward
//! pass, then each pending chain's blocks backward, handing the gradient of a block's output to
//! its recomputed graph (as `torch.utils.checkpoint` does inside autograd).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tch::{Kind, Tensor};

use super::attention::{AttentionMask, KvCache};
use super::lora::{Projection, Target};

/// What every block of one forward pass shares: the attention mask, and the rotary embedding's
/// cos and sin at each position (for architectures that rotate).
pub struct PassContext {
    pub(crate) mask: AttentionMask,
    pub(crate) rotary: Option<Rotary>,
}

/// The rotation of one forward pass: cos and sin `[batch, 1, time, head_dim]` at each row's
/// positions, applied to queries and keys `[batch, heads, time, head_dim]` the way transformers
/// does (the two halves of a head rotate together: `x·cos + rotate_half(x)·sin`).
pub struct Rotary {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl Rotary {
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let half = x.size()[3] / 2;
        let rotated = Tensor::cat(&[-x.narrow(3, half, half), x.narrow(3, 0, half)], 3);
        x * &self.cos + rotated * &self.sin
    }
}

/// One transformer block: the residual stream in, the residual stream out.
pub trait Block: std::fmt::Debug {
    fn forward(&self, x: &Tensor, pass: &PassContext, cache: Option<(&mut KvCache, usize)>, train: bool) -> Tensor;

    /// The block's linear projections: the module name under the block (HF's, e.g.
    /// `self_attn.q_proj`), the roles it computes, and the projection.
    fn projections(&self) -> Vec<(&'static str, &'static [Target], &Projection)>;
}

/// An architecture's blocks, with the HF module path they sit under (`model.layers`).
#[derive(Debug)]
pub struct Blocks {
    prefix: &'static str,
    blocks: Vec<Rc<dyn Block>>,
    /// Whether any block draws dropout masks in training (then a recomputation must draw the same).
    stochastic: bool,
    checkpointing: Cell<bool>,
}

impl Blocks {
    pub fn new(prefix: &'static str, blocks: Vec<Rc<dyn Block>>, stochastic: bool) -> Self {
        Blocks { prefix, blocks, stochastic, checkpointing: Cell::new(false) }
    }

    pub fn set_checkpointing(&self, on: bool) {
        self.checkpointing.set(on);
    }

    /// Every projection of every block, by its full HF module name (`model.layers.0.self_attn.q_proj`).
    pub fn projections(&self) -> Vec<(String, &'static [Target], &Projection)> {
        let mut all = Vec::new();
        for (index, block) in self.blocks.iter().enumerate() {
            for (name, roles, projection) in block.projections() {
                all.push((format!("{}.{index}.{name}", self.prefix), roles, projection));
            }
        }
        all
    }

    /// Runs the blocks over `x`. Checkpointed when asked, in a pass that records gradients
    /// (dropout on or off: the RL stages train with it off), without a cache.
    pub fn forward(&self, x: Tensor, pass: PassContext, mut cache: Option<&mut KvCache>, train: bool) -> Tensor {
        if self.checkpointing.get() && cache.is_none() && grad_mode_enabled() {
            return self.forward_checkpointed(x, Rc::new(pass), train);
        }
        let mut x = x;
        for (layer, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (c, layer));
            x = block.forward(&x, &pass, layer_cache, train);
        }
        x
    }

    /// The blocks run without recording a graph, keeping each one's input; the output is a fresh
    /// leaf whose gradient [`backward`] carries back through the recomputed blocks.
    fn forward_checkpointed(&self, first_input: Tensor, pass: Rc<PassContext>, train: bool) -> Tensor {
        let mut segments = Vec::with_capacity(self.blocks.len());
        let mut x = first_input.detach();
        for block in &self.blocks {
            let seed = (train && self.stochastic).then(draw_seed);
            let input = x;
            x = tch::no_grad(|| {
                if let Some(seed) = seed {
                    tch::manual_seed(seed);
                }
                block.forward(&input, &pass, None, train)
            });
            segments.push(Segment { block: Rc::clone(block), input, seed });
        }
        let output = x.set_requires_grad(true);
        let chain = Chain { first_input, segments, pass, train, output: output.shallow_clone() };
        PENDING.with(|pending| pending.borrow_mut().push(chain));
        output
    }
}

/// A seed for one block's dropout masks, drawn from libtorch's global generator so that runs
/// stay reproducible from the stage's seed.
fn draw_seed() -> i64 {
    Tensor::randint(i64::MAX, [1], (Kind::Int64, tch::Device::Cpu)).int64_value(&[0])
}

/// Whether autograd records operations here (tch has no getter: an operation on a leaf that
/// requires gradients records one only in grad mode).
fn grad_mode_enabled() -> bool {
    (Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true) * 1.0).requires_grad()
}

struct Segment {
    block: Rc<dyn Block>,
    /// The block's input, without history.
    input: Tensor,
    seed: Option<i64>,
}

/// One checkpointed forward pass awaiting its blocks' backward pass.
struct Chain {
    /// The first block's input, with its history (the embeddings).
    first_input: Tensor,
    segments: Vec<Segment>,
    pass: Rc<PassContext>,
    /// Whether the pass had dropout on.
    train: bool,
    /// The leaf the rest of the model read.
    output: Tensor,
}

impl Chain {
    /// Carries the output's gradient back through the recomputed blocks into their parameters
    /// and on into the embeddings. A chain whose output took no part in the loss has no gradient
    /// and is dropped.
    fn backward(self) {
        let mut grad = self.output.grad();
        if !grad.defined() {
            return;
        }
        for segment in self.segments.iter().rev() {
            let input = segment.input.detach().set_requires_grad(true);
            if let Some(seed) = segment.seed {
                tch::manual_seed(seed);
            }
            let output = segment.block.forward(&input, &self.pass, None, self.train);
            // d(Σ output·g)/dθ is the vector–Jacobian product with g, what backward(g) computes.
            (output * &grad).sum(Kind::Float).backward();
            grad = input.grad();
        }
        if self.first_input.requires_grad() {
            (&self.first_input * &grad).sum(Kind::Float).backward();
        }
    }
}

thread_local! {
    static PENDING: RefCell<Vec<Chain>> = const { RefCell::new(Vec::new()) };
}

/// `loss.backward()`, then the backward pass of every checkpointed block that fed it. Stages
/// call this in place of `Tensor::backward`; without checkpointing it is the same.
pub fn backward(loss: &Tensor) {
    loss.backward();
    let chains = PENDING.with(|pending| std::mem::take(&mut *pending.borrow_mut()));
    for chain in chains.into_iter().rev() {
        chain.backward();
    }
}
