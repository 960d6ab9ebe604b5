//! AdamW (Loshchilov & Hutter 2019) that owns its moments, so that they can be saved and
//! restored for `--resume` (tch's optimizer does not expose its state). The update itself is
//! PyTorch's fused kernel (`torch.optim.AdamW(fused=True)`, reached through `crate::native`):
//! one call per device for all parameters instead of a dozen operations per parameter, and the
//! clip's norm and scaling are foreach operations likewise. Weight decay applies only to
//! matrices (≥ 2 dims: linear weights, embeddings), not to biases or LayerNorm parameters, as in
//! GPT-2 and nanoGPT.
//!
//! Mixed precision (Micikevicius et al. 2018): for a parameter held in bf16, the optimizer keeps
//! an fp32 master copy and fp32 moments; forward and backward run in bf16, the update is applied
//! to the master, and the parameter is the master rounded to bf16. Applied to the bf16 weights
//! themselves, an update smaller than half their spacing (2⁻⁹ of the value) would round to
//! nothing: at PPO's learning rate of 1e-5 nearly every update would.
//!
//! fp16 parameters add dynamic loss scaling (Micikevicius et al. 2018, §3.2; PyTorch's
//! `GradScaler`): fp16's narrow exponent flushes small gradients to zero, so stages multiply their
//! loss by [`AdamW::loss_scale`] before backward; the gradients stay scaled in fp16 and are divided
//! by the scale only once they are fp32 (for the norm and the update; dividing in fp16 would flush
//! them again); a step whose gradients overflowed is skipped and the scale halved, and after
//! `GROWTH_INTERVAL` clean steps in a row it doubles.

use std::path::Path;

use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::distributed::{self, DistributedError};
use crate::native::{self, AdamWStep, NativeError};

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

struct Parameter {
    name: String,
    value: Tensor,
    /// fp32 copy of a parameter held in lower precision; updates accumulate here.
    master: Option<Tensor>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    decay: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OptimizerError {
    #[error(transparent)]
    Native(#[from] NativeError),
    #[error(transparent)]
    Distributed(#[from] DistributedError),
}

pub struct AdamW {
    config: AdamWConfig,
    parameters: Vec<Parameter>,
    /// Optimizer steps taken (for bias correction).
    step: u64,
    /// With fp16 parameters: the current loss scale.
    scaler: Option<LossScaler>,
    /// Whether this step's gradients were checked for overflow yet, and if so, finite.
    gradients: Gradients,
}

#[derive(Debug, Clone, Copy)]
struct LossScaler {
    scale: f64,
    /// Steps since the scale last changed.
    clean_steps: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gradients {
    Unchecked,
    Checked { finite: bool },
}

/// fp16's largest power of two below its maximum, halved until gradients fit (PyTorch's default).
const INITIAL_LOSS_SCALE: f64 = 65_536.0;
const GROWTH_INTERVAL: u64 = 2000;

impl AdamW {
    /// Optimises every trainable variable of `vs`.
    pub fn new(vs: &VarStore, config: AdamWConfig) -> Self {
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let parameters: Vec<Parameter> = variables
            .into_iter()
            .map(|(name, value)| Parameter {
                exp_avg: value.zeros_like().to_kind(Kind::Float),
                exp_avg_sq: value.zeros_like().to_kind(Kind::Float),
                decay: value.dim() >= 2,
                master: (value.kind() != Kind::Float).then(|| value.detach().to_kind(Kind::Float)),
                name,
                value,
            })
            .collect();
        let scaler =
            parameters.iter().any(|p| p.value.kind() == Kind::Half).then_some(LossScaler { scale: INITIAL_LOSS_SCALE, clean_steps: 0 });
        AdamW { config, parameters, step: 0, scaler, gradients: Gradients::Unchecked }
    }

    /// What a loss is multiplied by before backward: 1 unless parameters are fp16.
    pub fn loss_scale(&self) -> f64 {
        self.scaler.map_or(1.0, |scaler| scaler.scale)
    }

    /// With loss scaling, whether this step's gradients are all finite (checked once a step);
    /// always true without.
    fn gradients_finite(&mut self) -> bool {
        if let Gradients::Checked { finite } = self.gradients {
            return finite;
        }
        let finite = self.scaler.is_none()
            || self.parameters.iter().map(|p| p.value.grad()).filter(Tensor::defined).all(|g| g.isfinite().all().int64_value(&[]) == 1);
        self.gradients = Gradients::Checked { finite };
        finite
    }

    /// The defined gradients, grouped by device (each foreach call takes one device).
    fn gradients_by_device(&self) -> Vec<Vec<Tensor>> {
        let grads = self.parameters.iter().map(|p| p.value.grad()).filter(Tensor::defined);
        grouped(grads, Tensor::device).into_iter().map(|(_, group)| group).collect()
    }

    pub fn zero_grad(&mut self) -> Result<(), NativeError> {
        self.gradients = Gradients::Unchecked;
        for group in self.gradients_by_device() {
            native::foreach_zero_(&group)?;
        }
        Ok(())
    }

    /// Scales gradients so their global L2 norm is at most `max_norm` (0 = no clipping);
    /// returns the norm before clipping (of the unscaled gradients, with loss scaling).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64, NativeError> {
        if !self.gradients_finite() {
            return Ok(f64::INFINITY);
        }
        let groups = self.gradients_by_device();
        if groups.is_empty() {
            return Ok(0.0);
        }
        let mut squared = 0.0;
        for group in &groups {
            squared += native::foreach_global_norm(group)?.double_value(&[]).powi(2);
        }
        let total = squared.sqrt() / self.loss_scale();
        if max_norm > 0.0 && total > max_norm {
            let scale = max_norm / (total + 1e-6);
            for group in &groups {
                native::foreach_mul_(group, scale)?;
            }
        }
        Ok(total)
    }

    /// One AdamW update with learning rate `lr` — skipped, with loss scaling, when the gradients
    /// overflowed (the scale is halved instead). Parameters without a gradient are left alone.
    pub fn step(&mut self, lr: f64) -> Result<(), NativeError> {
        let finite = self.gradients_finite();
        let loss_scale = self.loss_scale();
        if let Some(scaler) = &mut self.scaler {
            if !finite {
                scaler.scale /= 2.0;
                scaler.clean_steps = 0;
                tracing::debug!(loss_scale = scaler.scale, "fp16 gradients overflowed: step skipped, loss scale halved");
                return Ok(());
            }
            scaler.clean_steps += 1;
            if scaler.clean_steps == GROWTH_INTERVAL {
                scaler.scale *= 2.0;
                scaler.clean_steps = 0;
            }
        }
        self.step += 1;
        let _no_grad = tch::no_grad_guard();
        // A low-precision parameter's fp32 master steps on an fp32 copy of its gradient.
        let updates = self.parameters.iter().filter_map(|p| {
            let grad = p.value.grad();
            grad.defined().then(|| {
                let weights = p.master.as_ref().unwrap_or(&p.value).shallow_clone();
                let grad = if p.master.is_some() { grad.to_kind(Kind::Float) } else { grad };
                (p, weights, grad)
            })
        });
        // One fused call per (device, decayed or not): the kernel takes one weight decay.
        let groups = grouped(updates, |(p, weights, _)| (weights.device(), p.decay));
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.config;
        for ((device, decay), members) in &groups {
            let weights: Vec<&Tensor> = members.iter().map(|(_, weights, _)| weights).collect();
            let grads: Vec<&Tensor> = members.iter().map(|(_, _, grad)| grad).collect();
            let exp_avgs: Vec<&Tensor> = members.iter().map(|(p, ..)| &p.exp_avg).collect();
            let exp_avg_sqs: Vec<&Tensor> = members.iter().map(|(p, ..)| &p.exp_avg_sq).collect();
            let step = Tensor::from(self.step as f32).to_device(*device);
            let grad_scale = self.scaler.map(|_| Tensor::from(loss_scale as f32).to_device(*device));
            native::fused_adamw_(
                &weights,
                &grads,
                &exp_avgs,
                &exp_avg_sqs,
                &step,
                AdamWStep { lr, beta1, beta2, weight_decay: if *decay { weight_decay } else { 0.0 }, eps },
                grad_scale.as_ref(),
            )?;
        }
        for (p, weights, _) in groups.iter().flat_map(|(_, members)| members) {
            if p.master.is_some() {
                p.value.shallow_clone().copy_(weights);
            }
        }
        Ok(())
    }

    /// Clips the gradients to `max_norm` (0 = no clipping), takes a step at `lr` and zeroes the
    /// gradients: what every stage does once a minibatch's gradients are in. Returns the norm
    /// before clipping.
    /// Under data parallelism the gradients are first summed over the ranks (each rank's loss is
    /// its shard's share of the global batch's), so every rank takes the same step.
    pub fn update(&mut self, lr: f64, max_norm: f64) -> Result<f64, OptimizerError> {
        let gradients: Vec<Tensor> = self.parameters.iter().map(|p| p.value.grad()).filter(Tensor::defined).collect();
        distributed::world().all_reduce_gradients(&gradients)?;
        let norm = self.clip_grad_norm(max_norm)?;
        self.step(lr)?;
        self.zero_grad()?;
        Ok(norm)
    }

    /// The fp32 weights the optimizer updates: the master copy of a low-precision parameter,
    /// else the parameter itself (for tests and diagnostics).
    pub fn master_weights(&self, name: &str) -> Option<Tensor> {
        let p = self.parameters.iter().find(|p| p.name == name)?;
        Some(p.master.as_ref().unwrap_or(&p.value).shallow_clone())
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Writes the moments, the fp32 masters of low-precision parameters and the step (as a
    /// tensor) to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<(), tch::TchError> {
        let step = Tensor::from(self.step as i64);
        let mut named: Vec<(String, &Tensor)> = vec![("step".to_string(), &step)];
        let scaler = self.scaler.map(|scaler| (Tensor::from(scaler.scale), Tensor::from(scaler.clean_steps as i64)));
        if let Some((scale, clean_steps)) = &scaler {
            named.push(("loss_scale".to_string(), scale));
            named.push(("loss_scale_clean_steps".to_string(), clean_steps));
        }
        for p in &self.parameters {
            named.push((format!("exp_avg.{}", p.name), &p.exp_avg));
            named.push((format!("exp_avg_sq.{}", p.name), &p.exp_avg_sq));
            if let Some(master) = &p.master {
                named.push((format!("master.{}", p.name), master));
            }
        }
        Tensor::write_safetensors(&named, path)
    }

    /// Restores what `save` wrote; every parameter's moments must be present.
    pub fn load(&mut self, path: &Path) -> Result<(), tch::TchError> {
        let saved: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)?.into_iter().collect();
        let missing = |name: &str| tch::TchError::FileFormat(format!("{}: no tensor `{name}`", path.display()));
        self.step = saved.get("step").ok_or_else(|| missing("step"))?.int64_value(&[]) as u64;
        if let Some(scaler) = &mut self.scaler {
            scaler.scale = saved.get("loss_scale").ok_or_else(|| missing("loss_scale"))?.double_value(&[]);
            scaler.clean_steps =
                saved.get("loss_scale_clean_steps").ok_or_else(|| missing("loss_scale_clean_steps"))?.int64_value(&[]) as u64;
        }
        let _no_grad = tch::no_grad_guard();
        for p in &mut self.parameters {
            for (prefix, target) in [("exp_avg", &mut p.exp_avg), ("exp_avg_sq", &mut p.exp_avg_sq)] {
                let name = format!("{prefix}.{}", p.name);
                let tensor = saved.get(&name).ok_or_else(|| missing(&name))?;
                target.copy_(tensor);
            }
            if let Some(master) = &mut p.master {
                let name = format!("master.{}", p.name);
                master.copy_(saved.get(&name).ok_or_else(|| missing(&name))?);
                p.value.copy_(master);
            }
        }
        Ok(())
    }
}

/// `items` grouped by `key`, the groups in the order their first item came.
fn grouped<K: PartialEq, T>(items: impl IntoIterator<Item = T>, key: impl Fn(&T) -> K) -> Vec<(K, Vec<T>)> {
    let mut groups: Vec<(K, Vec<T>)> = Vec::new();
    for item in items {
        let item_key = key(&item);
        match groups.iter_mut().find(|(k, _)| *k == item_key) {
            Some((_, group)) => group.push(item),
            None => groups.push((item_key, vec![item])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::Init;
    use tch::Device;

    /// Two AdamW steps on f(w) = ½‖w‖² (gradient w), compared with the update rule by hand.
    #[test]
    fn matches_the_adamw_update_computed_by_hand() {
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[2, 1], Init::Const(1.0));
        let config = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
        let mut optimizer = AdamW::new(&vs, config);
        let lr = 0.1;
        let mut expected = 1.0f64;
        let (mut m, mut v) = (0.0f64, 0.0f64);
        for t in 1..=2 {
            optimizer.zero_grad().unwrap();
            (&w * &w * 0.5).sum(Kind::Float).backward();
            optimizer.step(lr).unwrap();
            let g = expected;
            m = 0.9 * m + 0.1 * g;
            v = 0.99 * v + 0.01 * g * g;
            let update = lr * (m / (1.0 - 0.9f64.powi(t))) / ((v / (1.0 - 0.99f64.powi(t))).sqrt() + 1e-8);
            expected = expected * (1.0 - lr * 0.1) - update;
        }
        let got = w.double_value(&[0, 0]);
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    }

    #[test]
    fn biases_are_not_decayed_and_state_round_trips() {
        let vs = VarStore::new(Device::Cpu);
        let bias = vs.root().var("bias", &[3], Init::Const(2.0));
        let config = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.5 };
        let mut optimizer = AdamW::new(&vs, config);
        // zero gradient: only decay could move the bias
        (&bias * 0.0).sum(Kind::Float).backward();
        optimizer.step(0.1).unwrap();
        assert_eq!(bias.double_value(&[0]), 2.0);

        // a step with a gradient, so that the moments are not zero
        optimizer.zero_grad().unwrap();
        (&bias * Tensor::from_slice(&[1.0f32, -2.0, 3.0])).sum(Kind::Float).backward();
        optimizer.step(0.1).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        optimizer.save(&path).unwrap();
        let mut restored = AdamW::new(&vs, config);
        restored.load(&path).unwrap();
        assert_eq!(restored.steps_taken(), 2);
        let (saved, back) = (&optimizer.parameters[0], &restored.parameters[0]);
        assert!(saved.exp_avg.abs().min().double_value(&[]) > 0.0 && saved.exp_avg_sq.abs().min().double_value(&[]) > 0.0);
        assert!(back.exp_avg.equal(&saved.exp_avg) && back.exp_avg_sq.equal(&saved.exp_avg_sq), "the moments did not come back");
    }

    /// A bf16 parameter at 0.5 with gradient 1: each Adam step moves it by lr (m̂/√v̂ = 1), 1e-5
    /// — far below bf16's spacing there (2⁻⁸ ≈ 0.0039), so only an fp32 master keeps the steps.
    #[test]
    fn bf16_parameters_keep_small_updates_in_an_fp32_master() {
        let mut vs = VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[4], Init::Const(0.5));
        vs.bfloat16();
        let config = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut optimizer = AdamW::new(&vs, config);
        let step = |optimizer: &mut AdamW| {
            optimizer.zero_grad().unwrap();
            let w = &vs.variables()["w"];
            w.sum(Kind::Float).backward(); // gradient 1
            optimizer.step(1e-5).unwrap();
        };
        for _ in 0..10 {
            step(&mut optimizer);
        }
        let master = optimizer.master_weights("w").unwrap();
        assert_eq!(master.kind(), Kind::Float);
        let moved = 0.5 - master.double_value(&[0]);
        assert!((moved - 1e-4).abs() < 1e-6, "the master moved by {moved}, expected 1e-4");
        assert_eq!(w.kind(), Kind::BFloat16);

        // The moments and the master come back with the state: the same next steps.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        optimizer.save(&path).unwrap();
        let mut restored = AdamW::new(&vs, config);
        restored.load(&path).unwrap();
        for _ in 0..400 {
            step(&mut optimizer);
        }
        let after = optimizer.master_weights("w").unwrap().double_value(&[0]);
        assert!((0.5 - after - 4.1e-3).abs() < 1e-5, "{after}");
        // 4.1e-3 is over one bf16 spacing: now the bf16 weight itself has moved.
        assert!(w.double_value(&[0]) < 0.5, "{}", w.double_value(&[0]));
        assert!((restored.master_weights("w").unwrap().double_value(&[0]) - (0.5 - 1e-4)).abs() < 1e-6);
    }

    /// fp16 weights with gradients below fp16's smallest subnormal (6e-8): without loss scaling
    /// they would flush to zero and nothing would train. The scaled step equals the fp32 step; an
    /// overflowing step is skipped and halves the scale; the scale comes back with the state.
    #[test]
    fn fp16_parameters_train_through_dynamic_loss_scaling() {
        let config = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-12, weight_decay: 0.0 };
        let run = |half: bool, steps: usize| {
            let mut vs = VarStore::new(Device::Cpu);
            let _ = vs.root().var("w", &[3], Init::Const(0.5));
            if half {
                vs.half();
            }
            let mut optimizer = AdamW::new(&vs, config);
            for _ in 0..steps {
                optimizer.zero_grad().unwrap();
                let w = &vs.variables()["w"];
                (w.to_kind(Kind::Float).sum(Kind::Float) * 1e-8 * optimizer.loss_scale()).backward();
                assert!(optimizer.clip_grad_norm(1.0).unwrap() > 0.0, "the gradient flushed to zero");
                optimizer.step(1e-3).unwrap();
            }
            (optimizer.master_weights("w").unwrap().double_value(&[0]), optimizer)
        };
        let (fp32, _) = run(false, 5);
        let (fp16, mut optimizer) = run(true, 5);
        assert_eq!(optimizer.loss_scale(), INITIAL_LOSS_SCALE);
        assert!((fp32 - (0.5 - 5e-3)).abs() < 1e-5, "{fp32}");
        assert!((fp16 - fp32).abs() < 1e-5, "fp16 master {fp16}, fp32 {fp32}");

        // An overflowing step: skipped, scale halved.
        optimizer.zero_grad().unwrap();
        let mut vs_grad = optimizer.parameters[0].value.grad();
        let _ = vs_grad.fill_(f64::INFINITY);
        assert_eq!(optimizer.clip_grad_norm(1.0).unwrap(), f64::INFINITY);
        optimizer.step(1e-3).unwrap();
        assert_eq!(optimizer.steps_taken(), 5);
        assert_eq!(optimizer.master_weights("w").unwrap().double_value(&[0]), fp16);
        assert_eq!(optimizer.loss_scale(), INITIAL_LOSS_SCALE / 2.0);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        optimizer.save(&path).unwrap();
        let mut vs = VarStore::new(Device::Cpu);
        let _ = vs.root().var("w", &[3], Init::Const(0.0));
        vs.half();
        let mut restored = AdamW::new(&vs, config);
        restored.load(&path).unwrap();
        assert_eq!(restored.loss_scale(), INITIAL_LOSS_SCALE / 2.0);
        assert_eq!(restored.master_weights("w").unwrap().double_value(&[0]), fp16);
    }

    /// The update written out per tensor (decoupled decay, then the bias-corrected Adam step):
    /// what this optimizer computed before it used the fused kernel.
    #[allow(clippy::too_many_arguments)]
    fn written_out_step(
        weights: &mut Tensor,
        exp_avg: &mut Tensor,
        exp_avg_sq: &mut Tensor,
        grad: &Tensor,
        step: i32,
        lr: f64,
        config: AdamWConfig,
        decay: bool,
    ) {
        let AdamWConfig { beta1, beta2, eps, weight_decay } = config;
        let _ = exp_avg.lerp_(grad, 1.0 - beta1);
        let _ = exp_avg_sq.g_mul_scalar_(beta2).addcmul_(grad, &(grad * (1.0 - beta2)));
        let denominator = (exp_avg_sq.sqrt() / (1.0 - beta2.powi(step)).sqrt()).g_add_scalar_(eps);
        let update = (&*exp_avg / &denominator) * (lr / (1.0 - beta1.powi(step)));
        if decay {
            let _ = weights.g_mul_scalar_(1.0 - lr * weight_decay);
        }
        let _ = weights.g_sub_(&update);
    }

    /// 100 steps of the fused optimizer (clipping included, a decayed matrix and an undecayed
    /// bias, a varying learning rate) against the update written out per tensor, with the
    /// optimizer saved after step 50 and a fresh one restored from the file for the rest.
    #[test]
    fn fused_steps_match_the_written_out_update_over_100_steps_and_a_resume() {
        let config = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
        let new_store = |init: &[(&str, Tensor)]| {
            let vs = VarStore::new(Device::Cpu);
            for (name, value) in init {
                let var = vs.root().var(name, &value.size(), Init::Const(0.0));
                tch::no_grad(|| var.shallow_clone().copy_(value));
            }
            vs
        };
        tch::manual_seed(5);
        let start = [("w", Tensor::randn([8, 5], (Kind::Float, Device::Cpu))), ("b", Tensor::randn([5], (Kind::Float, Device::Cpu)))];
        let mut vs = new_store(&start);
        let mut optimizer = AdamW::new(&vs, config);
        let mut expected: Vec<(Tensor, Tensor, Tensor, bool)> =
            start.iter().map(|(_, v)| (v.copy(), v.zeros_like(), v.zeros_like(), v.dim() >= 2)).collect();
        let dir = tempfile::tempdir().unwrap();
        let max_norm = 4.0;
        for step in 1..=100 {
            let lr = 1e-2 * (1.0 + (step as f64 / 7.0).sin()) / 2.0 + 1e-4;
            tch::manual_seed(1000 + step as i64);
            let grads: Vec<Tensor> = expected.iter().map(|(w, ..)| Tensor::randn(w.size(), (Kind::Float, Device::Cpu)) * 2.0).collect();
            let variables = vs.variables();
            ((&variables["w"] * &grads[0]).sum(Kind::Float) + (&variables["b"] * &grads[1]).sum(Kind::Float)).backward();
            let norm = optimizer.update(lr, max_norm).unwrap();

            let total = grads.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
            assert!((norm - total).abs() < 1e-4 * total, "step {step}: norm {norm} vs {total}");
            let clip = if total > max_norm { max_norm / (total + 1e-6) } else { 1.0 };
            for ((weights, exp_avg, exp_avg_sq, decay), grad) in expected.iter_mut().zip(&grads) {
                written_out_step(weights, exp_avg, exp_avg_sq, &(grad * clip), step, lr, config, *decay);
            }
            if step == 50 {
                let path = dir.path().join("optimizer.safetensors");
                optimizer.save(&path).unwrap();
                let now: Vec<(&str, Tensor)> = ["w", "b"].iter().map(|&n| (n, vs.variables()[n].detach().copy())).collect();
                vs = new_store(&now);
                optimizer = AdamW::new(&vs, config);
                optimizer.load(&path).unwrap();
                assert_eq!(optimizer.steps_taken(), 50);
            }
        }
        for ((name, _), (weights, ..)) in start.iter().zip(&expected) {
            let gap = (&vs.variables()[*name] - weights).abs().max().double_value(&[]);
            assert!(gap < 1e-6, "`{name}` is {gap} away from the written-out update after 100 steps");
            let moved = (weights - &start.iter().find(|(n, _)| n == name).unwrap().1).abs().max().double_value(&[]);
            assert!(moved > 0.01, "`{name}` barely moved ({moved}): the comparison would prove little");
        }
    }

    #[test]
    fn clipping_scales_the_global_norm() {
        let vs = VarStore::new(Device::Cpu);
        let a = vs.root().var("a", &[1], Init::Const(3.0));
        let b = vs.root().var("b", &[1], Init::Const(4.0));
        let mut optimizer = AdamW::new(&vs, AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.0 });
        // gradients (3, 4): norm 5
        ((&a * &a + &b * &b) * 0.5).sum(Kind::Float).backward();
        let norm = optimizer.clip_grad_norm(1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let clipped = (a.grad().double_value(&[0]).powi(2) + b.grad().double_value(&[0]).powi(2)).sqrt();
        assert!((clipped - 1.0).abs() < 1e-5, "{clipped}");
    }
}
