// libtorch operations that tch does not expose, behind a C ABI for `src/native.rs`.
//
// Each function takes tch's tensor handles (`at::Tensor*`), catches every C++ exception and
// returns it as a message allocated with malloc (the caller frees it), or NULL on success
// (guarded.hpp).
// Only per-operator headers are included, which keeps this file quick to compile.

#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_foreach_zero.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/stack.h>

#include <vector>

#include "guarded.hpp"

namespace {

using rlhf::guarded;

std::vector<at::Tensor> tensors(at::Tensor* const* handles, size_t count) {
  std::vector<at::Tensor> list;
  list.reserve(count);
  for (size_t i = 0; i < count; ++i) list.push_back(*handles[i]);
  return list;
}

}  // namespace

extern "C" {

// One AdamW step over `count` parameters (PyTorch's fused kernel, `torch.optim.AdamW(fused=True)`).
// `step` is the step number already incremented for this update (bias correction reads it);
// `grad_scale`, when not NULL, divides the gradients first (loss scaling).
char* rlhf_fused_adamw_(at::Tensor* const* params, at::Tensor* const* grads, at::Tensor* const* exp_avgs,
                        at::Tensor* const* exp_avg_sqs, size_t count, const at::Tensor* step, double lr,
                        double beta1, double beta2, double weight_decay, double eps,
                        const at::Tensor* grad_scale) {
  return guarded([&] {
    std::vector<at::Tensor> steps(count, *step);
    std::optional<at::Tensor> scale;
    if (grad_scale != nullptr) scale = *grad_scale;
    at::_fused_adamw_(tensors(params, count), tensors(grads, count), tensors(exp_avgs, count),
                      tensors(exp_avg_sqs, count), {}, steps, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false, scale, /*found_inf=*/std::nullopt);
  });
}

// The L2 norm of all `count` tensors together, as an fp32 scalar tensor in `*norm` (a new handle).
char* rlhf_foreach_global_norm(at::Tensor* const* handles, size_t count, at::Tensor** norm) {
  return guarded([&] {
    std::vector<at::Tensor> norms = at::_foreach_norm(tensors(handles, count), 2, at::kFloat);
    *norm = new at::Tensor(at::linalg_vector_norm(at::stack(norms), 2));
  });
}

// Multiplies each of `count` tensors by `factor`, in place.
char* rlhf_foreach_mul_(at::Tensor* const* handles, size_t count, double factor) {
  return guarded([&] { at::_foreach_mul_(tensors(handles, count), factor); });
}

// Sets each of `count` tensors to zero, in place.
char* rlhf_foreach_zero_(at::Tensor* const* handles, size_t count) {
  return guarded([&] { at::_foreach_zero_(tensors(handles, count)); });
}

}  // extern "C"
