//! Compression of a trained model for deployment: magnitude pruning of its linear layers,
//! unstructured and layer by layer (Han et al. 2015, "Learning both Weights and Connections for
//! Efficient Neural Networks"). Quantization is `quantize`.

use std::collections::BTreeMap;

use serde::Serialize;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// Zeros in one weight matrix after pruning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LayerSparsity {
    pub zeros: i64,
    pub total: i64,
}

/// Whether a variable is a linear layer's weight matrix: 2-D, and not an embedding table (the
/// token and position embeddings, which the output head shares in the tied architectures).
pub fn is_linear_weight(name: &str, tensor: &Tensor) -> bool {
    const EMBEDDINGS: [&str; 4] = ["wte", "wpe", "embed_tokens", "lm_head"];
    tensor.dim() == 2 && !name.split('.').any(|part| EMBEDDINGS.contains(&part))
}

/// Zeroes, in every linear layer's weight matrix of `vs`, the `fraction` of its entries smallest
/// in magnitude — round(fraction × entries) of them exactly, ties taken in storage order — and
/// returns each matrix's zeros afterwards, by variable name.
pub fn prune_by_magnitude(vs: &VarStore, fraction: f64) -> BTreeMap<String, LayerSparsity> {
    let _no_grad = tch::no_grad_guard();
    let mut layers = BTreeMap::new();
    for (name, weight) in vs.variables() {
        if !is_linear_weight(&name, &weight) {
            continue;
        }
        let total = weight.numel() as i64;
        let pruned = (fraction * total as f64).round() as i64;
        let flat = weight.view([-1]);
        if pruned > 0 {
            let smallest = flat.abs().argsort_stable(true, 0, false).narrow(0, 0, pruned);
            let _ = flat.shallow_clone().index_fill_(0, &smallest, 0.0);
        }
        let zeros = flat.eq(0.0).sum(Kind::Int64).int64_value(&[]);
        layers.insert(name, LayerSparsity { zeros, total });
    }
    layers
}
