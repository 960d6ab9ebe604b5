//! Safe wrappers over `csrc/native.cpp`: libtorch operations that tch does not expose — the
//! fused AdamW kernel (`torch.optim.AdamW(fused=True)`) and the foreach operations of a global
//! gradient-norm clip, and a weight-only int8 linear layer. Each call takes tensors of one device and dtype (the callers group them);
//! libtorch's errors come back as [`NativeError`] instead of aborting.

use std::borrow::Borrow;
use std::ffi::{c_char, CStr};

use tch::Tensor;
use torch_sys::C_tensor;

#[derive(Debug, thiserror::Error)]
#[error("libtorch: {0}")]
pub struct NativeError(String);

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn rlhf_fused_adamw_(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        exp_avgs: *const *mut C_tensor,
        exp_avg_sqs: *const *mut C_tensor,
        count: usize,
        step: *const C_tensor,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        grad_scale: *const C_tensor,
    ) -> *mut c_char;
    fn rlhf_foreach_global_norm(tensors: *const *mut C_tensor, count: usize, norm: *mut *mut C_tensor) -> *mut c_char;
    fn rlhf_foreach_mul_(tensors: *const *mut C_tensor, count: usize, factor: f64) -> *mut c_char;
    fn rlhf_foreach_zero_(tensors: *const *mut C_tensor, count: usize) -> *mut c_char;
    fn rlhf_int8_linear(
        input: *const C_tensor,
        weight: *const C_tensor,
        scales: *const C_tensor,
        output: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// Turns a shim function's returned message (NULL on success, see csrc/guarded.hpp) into a
/// result, freeing it.
pub(crate) fn shim_result(message: *mut c_char) -> Result<(), String> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string from malloc, owned by us.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
    unsafe { libc::free(message.cast()) };
    Err(text)
}

fn checked(message: *mut c_char) -> Result<(), NativeError> {
    shim_result(message).map_err(NativeError)
}

/// The handles the shim reads; the tensors outlive the call.
fn handles<T: Borrow<Tensor>>(tensors: &[T]) -> Vec<*mut C_tensor> {
    tensors.iter().map(|t| t.borrow().as_ptr() as *mut C_tensor).collect()
}

/// AdamW's hyper-parameters for one fused step.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
}

/// One AdamW update of `params` in place (with their moments), PyTorch's fused kernel: decoupled
/// weight decay, then the bias-corrected Adam step. `step` is a float tensor on the parameters'
/// device holding this update's step number (from 1); `grad_scale`, if given, divides the
/// gradients first. All lists have one entry per parameter.
pub fn fused_adamw_(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    step: &Tensor,
    hyper: AdamWStep,
    grad_scale: Option<&Tensor>,
) -> Result<(), NativeError> {
    let count = params.len();
    assert!(grads.len() == count && exp_avgs.len() == count && exp_avg_sqs.len() == count, "one entry per parameter");
    let (params, grads, exp_avgs, exp_avg_sqs) = (handles(params), handles(grads), handles(exp_avgs), handles(exp_avg_sqs));
    let AdamWStep { lr, beta1, beta2, weight_decay, eps } = hyper;
    let grad_scale = grad_scale.map_or(std::ptr::null(), Tensor::as_ptr);
    // SAFETY: every handle is a live tensor for the duration of the call; the shim copies them.
    checked(unsafe {
        rlhf_fused_adamw_(
            params.as_ptr(),
            grads.as_ptr(),
            exp_avgs.as_ptr(),
            exp_avg_sqs.as_ptr(),
            count,
            step.as_ptr(),
            lr,
            beta1,
            beta2,
            weight_decay,
            eps,
            grad_scale,
        )
    })
}

/// The L2 norm of all `tensors` together (an fp32 scalar on their device).
pub fn foreach_global_norm<T: Borrow<Tensor>>(tensors: &[T]) -> Result<Tensor, NativeError> {
    let handles = handles(tensors);
    let mut norm: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: live handles; on success `norm` is a new tensor handle that we own.
    checked(unsafe { rlhf_foreach_global_norm(handles.as_ptr(), handles.len(), &mut norm) })?;
    Ok(unsafe { Tensor::from_ptr(norm) })
}

/// Multiplies every tensor by `factor` in place.
pub fn foreach_mul_<T: Borrow<Tensor>>(tensors: &[T], factor: f64) -> Result<(), NativeError> {
    let handles = handles(tensors);
    // SAFETY: live handles for the duration of the call.
    checked(unsafe { rlhf_foreach_mul_(handles.as_ptr(), handles.len(), factor) })
}

/// Sets every tensor to zero in place.
pub fn foreach_zero_<T: Borrow<Tensor>>(tensors: &[T]) -> Result<(), NativeError> {
    let handles = handles(tensors);
    // SAFETY: live handles for the duration of the call.
    checked(unsafe { rlhf_foreach_zero_(handles.as_ptr(), handles.len()) })
}

/// `input [rows, in]` (fp32, CPU) times the int8 `weight [out, in]` scaled per output row by
/// `scales [out]` (`csrc/quantized.cpp`): `[rows, out]` in fp32.
pub fn int8_linear(input: &Tensor, weight: &Tensor, scales: &Tensor) -> Result<Tensor, NativeError> {
    let mut output: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: live handles; on success `output` is a new tensor handle that we own.
    checked(unsafe { rlhf_int8_linear(input.as_ptr(), weight.as_ptr(), scales.as_ptr(), &mut output) })?;
    Ok(unsafe { Tensor::from_ptr(output) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn global_norm_and_scaling_over_several_tensors() {
        let a = Tensor::from_slice(&[3.0f32]);
        let b = Tensor::from_slice(&[4.0f32, 0.0]).to_kind(Kind::BFloat16);
        let norm = foreach_global_norm(&[&a, &b]).unwrap();
        assert_eq!(norm.kind(), Kind::Float);
        assert!((norm.double_value(&[]) - 5.0).abs() < 1e-6);
        foreach_mul_(&[&a, &b], 0.5).unwrap();
        assert_eq!(a.double_value(&[0]), 1.5);
        assert_eq!(b.double_value(&[0]), 2.0);
        foreach_zero_(&[&a, &b]).unwrap();
        assert_eq!((a.abs().sum(Kind::Float) + b.abs().sum(Kind::Float)).double_value(&[]), 0.0);
    }

    #[test]
    fn libtorch_errors_come_back_as_errors() {
        let error = foreach_global_norm::<Tensor>(&[]).unwrap_err();
        assert!(error.to_string().starts_with("libtorch: "), "{error}");
    }
}
