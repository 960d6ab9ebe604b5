//! Intra-op threads per phase on the CPU. Training multiplies matrices of thousands of rows,
//! which all of the experiment's threads share well. Token-by-token generation multiplies a
//! handful of rows by each weight matrix per token: for a single row of a small model, waking a
//! second thread for each of those products costs more than it saves. Measured with
//! `examples/bench_generation` (2 AMD EPYC cores, 48 tokens after 20, KV cache), tokens/s on 1
//! thread against 2: 128 wide, batch 1: 3,041 vs 2,880; batch 16: 12,333 vs 14,815; batch 64:
//! 12,228 vs 20,567; 384 wide, batch 1: 232 vs 243. So one thread only for the smallest
//! per-token work (`rlhf generate`, labeling), all threads for rollouts. Both are overridable:
//! the experiment's `threads` and `generation_threads`.

use std::sync::atomic::{AtomicI32, Ordering};

use tch::Device;

/// `generation_threads` as set: 0 for automatic.
static GENERATION_THREADS: AtomicI32 = AtomicI32::new(0);

/// Automatic choice: one thread while a generated token's rows × model width stays at or below
/// this (one row of a model up to 256 wide), all threads above it.
pub const ONE_THREAD_UP_TO: i64 = 256;

/// Fixes the threads generation uses (`None`: chosen automatically per call).
pub fn set_generation_threads(threads: Option<i32>) {
    GENERATION_THREADS.store(threads.unwrap_or(0), Ordering::Relaxed);
}

/// How generation's threads are chosen, for `env.json`.
pub fn generation_threads_setting() -> serde_json::Value {
    match GENERATION_THREADS.load(Ordering::Relaxed) {
        0 => format!("auto: 1 while rows × width ≤ {ONE_THREAD_UP_TO}, else all").into(),
        threads => threads.into(),
    }
}

/// The threads a generation of `rows` sequences by a model `width` wide runs on.
pub fn generation_threads(rows: i64, width: i64) -> i32 {
    match GENERATION_THREADS.load(Ordering::Relaxed) {
        0 if rows * width <= ONE_THREAD_UP_TO => 1,
        0 => tch::get_num_threads(),
        threads => threads,
    }
}

/// Restores the thread count in effect before it was changed, when dropped.
pub struct RestoreThreads(i32);

impl Drop for RestoreThreads {
    fn drop(&mut self) {
        tch::set_num_threads(self.0);
    }
}

/// Switches to generation's threads for a generation on `device` (CPU only: a GPU's kernels do
/// not use them) until the returned guard drops.
pub fn for_generation(device: Device, rows: i64, width: i64) -> Option<RestoreThreads> {
    if device != Device::Cpu {
        return None;
    }
    let (current, wanted) = (tch::get_num_threads(), generation_threads(rows, width));
    (wanted != current).then(|| {
        tch::set_num_threads(wanted);
        RestoreThreads(current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_switches_to_its_threads_and_back() {
        tch::set_num_threads(2);
        assert_eq!(generation_threads(1, 128), 1);
        assert_eq!(generation_threads(64, 128), 2, "a rollout's batch keeps every thread");
        {
            let _guard = for_generation(Device::Cpu, 1, 128).expect("a switch from 2 threads to 1");
            assert_eq!(tch::get_num_threads(), 1);
        }
        assert_eq!(tch::get_num_threads(), 2);
        assert!(for_generation(Device::Cpu, 64, 128).is_none(), "no switch when the count stays");
    }
}
