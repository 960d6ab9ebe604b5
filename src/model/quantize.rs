//! Weight-only quantization of the blocks' linear projections, for deployment on the CPU.
//!
//! - **int8**: one symmetric scale per output channel (`w ≈ q·s`, `q ∈ [−127, 127]`),
//!   activations in fp32. A few rows (decoding) go through our kernel (`csrc/quantized.cpp`),
//!   which reads the int8 weights directly: libtorch's `_weight_int8pack_mm` computes the same
//!   product but ran 7× slower than the fp32 matmul at batch 1 on the AVX2 cores here, and
//!   FBGEMM's dynamic quantization, fast, also quantizes the activations (per tensor, 7 bits),
//!   which moved a random Qwen3's logits by up to 22 % of their spread. Many rows (prefill,
//!   scoring) multiply by the weights dequantized for the call: the matmul is then bound by
//!   arithmetic, not by reading the weights.
//! - **int4**: asymmetric groups of `group_size` inputs per output channel (`w ≈ (q − 8)·s + z`,
//!   `q ∈ [0, 15]`), run by libtorch's `_weight_int4pack_mm_for_cpu`, the layout torchao uses.
//!
//! On disk a quantized projection `M` holds `M.qweight` (int8 `[out, in]`; for int4, uint8
//! `[out, in/2]`, two values a byte, the even input in the high half) and `M.weight_scale`
//! (`[out]`; for int4 `[in/group, out]`, with `M.weight_zero` beside it) instead of `M.weight`;
//! `config.json` says how under `quantization_config`. Embeddings, norms and the output head stay
//! as they were.

use serde_json::{json, Value};
use tch::{Kind, Tensor};

use super::blocks::Blocks;
use super::checkpoint::{CheckpointError, WeightReader};
use super::lora::{Layout, Projection};
use crate::native::int8_linear;

/// `quantization_config.quant_method` of our checkpoints.
pub const QUANT_METHOD: &str = "rlhf-lab";

/// Rows up to which an int8 product reads the int8 weights directly (measured crossover with
/// dequantizing first: see `QuantizedLinear::forward`).
const KERNEL_ROWS: i64 = 8;

/// Stored beside a projection instead of its weight.
const QWEIGHT: &str = "qweight";
const SCALE: &str = "weight_scale";
const ZERO: &str = "weight_zero";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Int8,
    Int4 { group_size: i64 },
}

impl Scheme {
    /// `config.json`'s `quantization_config`.
    pub fn to_config(self) -> Value {
        match self {
            Scheme::Int8 => {
                json!({"quant_method": QUANT_METHOD, "bits": 8, "scheme": "symmetric per output channel", "activations": "dynamic int8"})
            }
            Scheme::Int4 { group_size } => {
                json!({"quant_method": QUANT_METHOD, "bits": 4, "group_size": group_size, "scheme": "asymmetric per group of inputs"})
            }
        }
    }

    /// Reads `quantization_config`; `Ok(None)` when the checkpoint is not quantized.
    pub fn from_config(config: &Value) -> Result<Option<Scheme>, String> {
        let Some(quantization) = config.get("quantization_config").filter(|value| !value.is_null()) else { return Ok(None) };
        let method = quantization.get("quant_method").and_then(Value::as_str).unwrap_or("");
        if method != QUANT_METHOD {
            return Err(format!("quantization_config.quant_method is `{method}`; only checkpoints written by `rlhf compress --quantize` (`{QUANT_METHOD}`) are read"));
        }
        match (quantization.get("bits").and_then(Value::as_i64), quantization.get("group_size").and_then(Value::as_i64)) {
            (Some(8), _) => Ok(Some(Scheme::Int8)),
            (Some(4), Some(group_size)) if group_size > 0 => Ok(Some(Scheme::Int4 { group_size })),
            _ => Err("quantization_config needs `bits` 8, or 4 with a positive `group_size`".into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("`{module}`: {inputs} inputs do not split into groups of {group_size}")]
    Group { module: String, inputs: i64, group_size: i64 },
    #[error("`{module}`: {source}")]
    Torch { module: String, source: tch::TchError },
    #[error("quantized weights run on the CPU in fp32; asked for {device:?} in {kind:?}")]
    Placement { device: tch::Device, kind: Kind },
    #[error("a model with quantized weights is not saved again: quantize the float checkpoint it came from (`rlhf compress --quantize`)")]
    Resave,
}

/// A projection's weight in the form its product runs from.
#[derive(Debug)]
pub enum QuantizedLinear {
    Int8 { weight: Tensor, scale: Tensor },
    Int4 { packed: Tensor, group_size: i64, scales_and_zeros: Tensor },
}

impl QuantizedLinear {
    /// `x [..., in]` times the weight: `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let rows = x.reshape([-1, *size.last().expect("an input dimension")]);
        let y = match self {
            QuantizedLinear::Int8 { weight, scale } if rows.size()[0] <= KERNEL_ROWS => {
                int8_linear(&rows, weight, scale).unwrap_or_else(|error| panic!("int8 linear layer: {error}"))
            }
            QuantizedLinear::Int8 { weight, scale } => rows.linear::<&Tensor>(&(weight.to_kind(Kind::Float) * scale.unsqueeze(1)), None),
            QuantizedLinear::Int4 { packed, group_size, scales_and_zeros } => {
                rows.internal_weight_int4pack_mm_for_cpu(packed, *group_size, scales_and_zeros)
            }
        };
        let mut shape = size;
        *shape.last_mut().expect("an output dimension") = *y.size().last().expect("an output dimension");
        y.reshape(shape)
    }
}

/// A projection's weight as torch's `nn.Linear` lays it out: `[out, in]`.
fn out_in(projection: &Projection) -> Tensor {
    match projection.layout {
        Layout::OutIn => projection.weight.shallow_clone(),
        Layout::InOut => projection.weight.tr(),
    }
}

/// The tensors stored for `weight` (`[out, in]`, float) under `scheme`, by suffix.
pub fn quantize_weight(module: &str, weight: &Tensor, scheme: Scheme) -> Result<Vec<(&'static str, Tensor)>, QuantizeError> {
    let weight = weight.to_kind(Kind::Float);
    match scheme {
        Scheme::Int8 => {
            let scale = (weight.abs().amax([1], false) / 127.0).clamp_min(1e-12);
            let q = (&weight / scale.unsqueeze(1)).round().clamp(-127, 127).to_kind(Kind::Int8);
            Ok(vec![(QWEIGHT, q), (SCALE, scale)])
        }
        Scheme::Int4 { group_size } => {
            let (outputs, inputs) = weight.size2().expect("a 2-D weight");
            if inputs % group_size != 0 || inputs % 2 != 0 {
                return Err(QuantizeError::Group { module: module.into(), inputs, group_size });
            }
            let groups = weight.view([outputs, inputs / group_size, group_size]);
            let (low, high) = (groups.amin([2], true), groups.amax([2], true));
            let scale = ((&high - &low) / 15.0).clamp_min(1e-12);
            let q = ((&groups - &low) / &scale).round().clamp(0, 15).to_kind(Kind::Uint8).view([outputs, inputs]);
            let packed = q.slice(1, 0, inputs, 2) * 16 + q.slice(1, 1, inputs, 2);
            // torch's int4 kernels dequantize (q − 8)·s + z: z is the value at the middle code.
            let zero = &low + &scale * 8.0;
            let by_group = |t: &Tensor| t.squeeze_dim(2).tr().contiguous();
            Ok(vec![(QWEIGHT, packed.to_kind(Kind::Uint8)), (SCALE, by_group(&scale)), (ZERO, by_group(&zero))])
        }
    }
}

/// The tensor names a quantized checkpoint stores for module `module` (HF's name).
pub fn stored_names(module: &str, scheme: Scheme) -> Vec<String> {
    let suffixes: &[&str] = match scheme {
        Scheme::Int8 => &[QWEIGHT, SCALE],
        Scheme::Int4 { .. } => &[QWEIGHT, SCALE, ZERO],
    };
    suffixes.iter().map(|suffix| format!("{module}.{suffix}")).collect()
}

/// Quantizes every projection of `blocks`: the stored tensors by name.
pub fn quantize_blocks(blocks: &Blocks, scheme: Scheme) -> Result<Vec<(String, Tensor)>, QuantizeError> {
    let _no_grad = tch::no_grad_guard();
    let mut stored = Vec::new();
    for (module, _, projection) in blocks.projections() {
        for (suffix, tensor) in quantize_weight(&module, &out_in(projection), scheme)? {
            stored.push((format!("{module}.{suffix}"), tensor));
        }
    }
    Ok(stored)
}

/// Gives each projection of `blocks` its quantized weight from the checkpoint `reader` reads
/// (named as [`quantize_blocks`] names them) and frees its float weight.
pub(crate) fn attach(blocks: &Blocks, reader: &mut WeightReader, scheme: Scheme) -> Result<(), CheckpointError> {
    for (module, _, projection) in blocks.projections() {
        let (inputs, outputs) = projection.widths();
        let path = reader.path.clone();
        let failed = |source| CheckpointError::Quantized { path: path.clone(), source };
        let quantized = match scheme {
            Scheme::Int8 => {
                let weight = reader.read(&format!("{module}.{QWEIGHT}"), &[outputs, inputs])?;
                let scale = reader.read(&format!("{module}.{SCALE}"), &[outputs])?;
                QuantizedLinear::Int8 { weight, scale }
            }
            Scheme::Int4 { group_size } => {
                if inputs % group_size != 0 || inputs % 2 != 0 {
                    return Err(failed(QuantizeError::Group { module: module.clone(), inputs, group_size }));
                }
                let packed = reader.read(&format!("{module}.{QWEIGHT}"), &[outputs, inputs / 2])?.to_kind(Kind::Int);
                let scale = reader.read(&format!("{module}.{SCALE}"), &[inputs / group_size, outputs])?;
                let zero = reader.read(&format!("{module}.{ZERO}"), &[inputs / group_size, outputs])?;
                let codes = Tensor::stack(&[packed.divide_scalar_mode(16, "floor"), packed.remainder(16)], 2).view([outputs, inputs]);
                let packed = codes
                    .f_internal_convert_weight_to_int4pack_for_cpu(1)
                    .map_err(|source| failed(QuantizeError::Torch { module: module.clone(), source }))?;
                QuantizedLinear::Int4 { packed, group_size, scales_and_zeros: Tensor::stack(&[scale, zero], 2).contiguous() }
            }
        };
        projection.quantize(quantized);
    }
    Ok(())
}

/// Whether any projection of `blocks` computes from quantized weights.
pub fn is_quantized(blocks: &Blocks) -> bool {
    blocks.projections().iter().any(|(_, _, projection)| projection.is_quantized())
}
