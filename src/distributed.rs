//! Data parallelism's ranks and their collectives. Every rank holds the same models and
//! optimizer state and takes the same steps: each computes the gradient of its shard of the
//! global batch, the gradients are summed across ranks ([`World::all_reduce_gradients`], which
//! the optimizer calls before clipping), and every rank applies the same update. Figures that
//! span the batch — token counts, whitening statistics, evaluation sums — are summed the same way,
//! so a run's figures do not depend on the number of ranks beyond floating-point order.
//!
//! The collectives are libtorch's own c10d `ProcessGroupGloo` (`csrc/collectives.cpp`), joined
//! through a c10d `TCPStore` on `MASTER_ADDR:MASTER_PORT` — `torch.distributed`'s `gloo`
//! backend. The ranks come from the launcher's environment ([`Launch::from_env`]): `torchrun`'s
//! variables, or Slurm's under `srun`. One process holds one [`World`], set once at start
//! ([`init`]) like `torch.distributed`'s default group; without a launcher it is a world of one,
//! where every collective is a no-op.

use std::ffi::{c_char, c_void, CString};
use std::ops::Range;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tch::{Device, Tensor};
use torch_sys::C_tensor;

use crate::native::shim_result as checked;

/// `RLHF_DIST_TIMEOUT`: seconds a rank waits in a collective (or the rendezvous) for the others
/// before it fails, naming the ranks that no longer answer.
pub const TIMEOUT_VARIABLE: &str = "RLHF_DIST_TIMEOUT";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Gradients are summed in buckets of about this many bytes: one collective per bucket instead
/// of one per parameter.
const BUCKET_BYTES: i64 = 25 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DistributedError {
    #[error("environment variable {variable}=`{value}`: expected {expected}")]
    Variable { variable: &'static str, value: String, expected: &'static str },
    #[error("environment variable {variable} is not set: {launcher} sets it (or set it yourself)")]
    Missing { variable: &'static str, launcher: &'static str },
    #[error("rank {rank} of {size}: could not join the group at {address} within {timeout_s} s: {message}")]
    Rendezvous { rank: usize, size: usize, address: String, timeout_s: f64, message: String },
    #[error("rank {rank} of {size}: {operation} failed: {lost}. ({message})")]
    Lost { rank: usize, size: usize, operation: &'static str, lost: String, message: String },
}

/// Where this process sits among the ranks, as its launcher said.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub rank: usize,
    pub size: usize,
    /// The rank's index on its machine (`LOCAL_RANK`): which GPU it takes.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    pub timeout: Duration,
}

impl Launch {
    /// torchrun's `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`; else, in a
    /// Slurm job step (`srun`), `SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`, `SLURM_LOCALID`, with
    /// `MASTER_ADDR` defaulting to the node that launched the step and `MASTER_PORT` to a port
    /// derived from the job id. `None` for a single process (also a Slurm step of one task).
    pub fn from_env() -> Result<Option<Launch>, DistributedError> {
        Launch::from_variables(&|name| std::env::var(name).ok())
    }

    fn from_variables(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Launch>, DistributedError> {
        let timeout = match var(TIMEOUT_VARIABLE) {
            None => DEFAULT_TIMEOUT,
            Some(value) => match value.parse::<f64>() {
                Ok(seconds) if seconds > 0.0 && seconds.is_finite() => Duration::from_secs_f64(seconds),
                _ => return Err(DistributedError::Variable { variable: TIMEOUT_VARIABLE, value, expected: "seconds > 0" }),
            },
        };
        let number = |variable: &'static str, launcher: &'static str| -> Result<usize, DistributedError> {
            let value = var(variable).ok_or(DistributedError::Missing { variable, launcher })?;
            value.trim().parse().map_err(|_| DistributedError::Variable { variable, value, expected: "a whole number ≥ 0" })
        };
        let port = |value: String| -> Result<u16, DistributedError> {
            value.trim().parse().map_err(|_| DistributedError::Variable { variable: "MASTER_PORT", value, expected: "a port number" })
        };
        let launch = if var("WORLD_SIZE").is_some() {
            const TORCHRUN: &str = "torchrun";
            Launch {
                rank: number("RANK", TORCHRUN)?,
                size: number("WORLD_SIZE", TORCHRUN)?,
                local_rank: number("LOCAL_RANK", TORCHRUN)?,
                master_addr: var("MASTER_ADDR").ok_or(DistributedError::Missing { variable: "MASTER_ADDR", launcher: TORCHRUN })?,
                master_port: port(var("MASTER_PORT").ok_or(DistributedError::Missing { variable: "MASTER_PORT", launcher: TORCHRUN })?)?,
                timeout,
            }
        } else if var("SLURM_STEP_NUM_TASKS").is_some() {
            const SRUN: &str = "srun";
            let job = number("SLURM_JOB_ID", SRUN)?;
            Launch {
                rank: number("SLURM_PROCID", SRUN)?,
                size: number("SLURM_STEP_NUM_TASKS", SRUN)?,
                local_rank: number("SLURM_LOCALID", SRUN)?,
                master_addr: var("MASTER_ADDR")
                    .or_else(|| var("SLURM_LAUNCH_NODE_IPADDR"))
                    .ok_or(DistributedError::Missing { variable: "MASTER_ADDR", launcher: SRUN })?,
                // One port per job, so that jobs sharing a node do not collide.
                master_port: match var("MASTER_PORT") {
                    Some(value) => port(value)?,
                    None => 20_000 + (job % 20_000) as u16,
                },
                timeout,
            }
        } else {
            return Ok(None);
        };
        if launch.size == 0 || launch.rank >= launch.size {
            return Err(DistributedError::Variable {
                variable: "RANK",
                value: launch.rank.to_string(),
                expected: "a rank below the world size (WORLD_SIZE or SLURM_STEP_NUM_TASKS, at least 1)",
            });
        }
        Ok((launch.size > 1).then_some(launch))
    }
}

/// The ranks of this run: one, or a group joined through c10d.
pub struct World {
    rank: usize,
    size: usize,
    local_rank: usize,
    group: Option<Mutex<Group>>,
}

static WORLD: OnceLock<World> = OnceLock::new();

/// This process's world: what [`init`] set, else a world of one.
pub fn world() -> &'static World {
    WORLD.get_or_init(World::single)
}

/// Joins the group `launch` describes (every rank must call it) and makes it this process's
/// world. Called once, before anything trains.
pub fn init(launch: &Launch) -> Result<&'static World, DistributedError> {
    if WORLD.set(World::join(launch)?).is_err() {
        panic!("the distributed world is set once, at start");
    }
    Ok(world())
}

impl World {
    fn single() -> Self {
        World { rank: 0, size: 1, local_rank: 0, group: None }
    }

    fn join(launch: &Launch) -> Result<Self, DistributedError> {
        let Launch { rank, size, local_rank, .. } = *launch;
        let group = Group::join(launch)?;
        tracing::info!(rank, size, local_rank, master = %format!("{}:{}", launch.master_addr, launch.master_port), "joined the group");
        Ok(World { rank, size, local_rank, group: Some(Mutex::new(group)) })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Rank 0: the one that writes the run directory.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// This rank's contiguous share of `count` items (shares differ by one at most when `count`
    /// does not divide evenly).
    pub fn shard(&self, count: usize) -> Range<usize> {
        self.shard_of(self.rank, count)
    }

    fn shard_of(&self, rank: usize, count: usize) -> Range<usize> {
        (count * rank / self.size)..(count * (rank + 1) / self.size)
    }

    fn with_group<T>(
        &self,
        operation: &'static str,
        call: impl FnOnce(&Group) -> Result<T, String>,
    ) -> Result<Option<T>, DistributedError> {
        let Some(group) = &self.group else { return Ok(None) };
        let mut group = group.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let started = std::time::Instant::now();
        let result = call(&group);
        group.communication.calls += 1;
        group.communication.seconds += started.elapsed().as_secs_f64();
        result.map(Some).map_err(|message| {
            let lost = group.lost_ranks();
            DistributedError::Lost { rank: self.rank, size: self.size, operation, lost, message }
        })
    }

    /// Collectives so far and the time spent in them (waiting for slower ranks included).
    pub fn communication(&self) -> Communication {
        self.group.as_ref().map_or_else(Communication::default, |group| group.lock().unwrap_or_else(|p| p.into_inner()).communication)
    }

    /// Sums `tensor` over the ranks, in place.
    pub fn all_reduce_sum_(&self, tensor: &Tensor) -> Result<(), DistributedError> {
        self.with_group("all-reduce", |group| on_cpu(tensor, |cpu| group.all_reduce_sum(cpu)))?;
        Ok(())
    }

    /// Sums each of `values` over the ranks.
    pub fn all_reduce_values(&self, values: &mut [f64]) -> Result<(), DistributedError> {
        if self.group.is_none() || values.is_empty() {
            return Ok(());
        }
        let tensor = Tensor::from_slice(values);
        self.all_reduce_sum_(&tensor)?;
        values.copy_from_slice(&Vec::<f64>::try_from(&tensor).expect("an f64 vector"));
        Ok(())
    }

    /// Each rank's figures times its `weight`, summed over the ranks: the figures of the whole
    /// batch from each rank's means over its share (`weight` = its share of the batch). Every
    /// rank must hold the same names.
    pub fn sum_weighted(&self, figures: crate::run::Metrics, weight: f64) -> Result<crate::run::Metrics, DistributedError> {
        if self.group.is_none() {
            return Ok(figures);
        }
        let mut values: Vec<f64> = figures.values().map(|value| value * weight).collect();
        self.all_reduce_values(&mut values)?;
        Ok(figures.into_keys().zip(values).collect())
    }

    /// The mean of each figure over every rank's values (each rank holding the same names):
    /// per-micro-batch figures of an optimisation whose micro-batches the ranks share.
    pub fn means(&self, values: &std::collections::BTreeMap<&str, Vec<f64>>) -> Result<crate::run::Metrics, DistributedError> {
        let mut sums: Vec<f64> = values.values().flat_map(|list| [list.iter().sum(), list.len() as f64]).collect();
        self.all_reduce_values(&mut sums)?;
        Ok(values.keys().zip(sums.chunks(2)).map(|(name, sum)| (name.to_string(), sum[0] / sum[1].max(1.0))).collect())
    }

    /// Sums gradients over the ranks, in buckets of about [`BUCKET_BYTES`] of one device and
    /// dtype each (one collective per bucket).
    pub fn all_reduce_gradients(&self, gradients: &[Tensor]) -> Result<(), DistributedError> {
        if self.group.is_none() {
            return Ok(());
        }
        let _no_grad = tch::no_grad_guard();
        let mut bucket: Vec<&Tensor> = Vec::new();
        let mut bytes = 0;
        for (i, gradient) in gradients.iter().enumerate() {
            bucket.push(gradient);
            bytes += gradient.numel() as i64 * gradient.kind().elt_size_in_bytes() as i64;
            let next_differs = gradients.get(i + 1).is_none_or(|next| (next.kind(), next.device()) != (gradient.kind(), gradient.device()));
            if bytes >= BUCKET_BYTES || next_differs {
                let flat = Tensor::cat(&bucket.iter().map(|g| g.reshape([-1])).collect::<Vec<_>>(), 0);
                self.all_reduce_sum_(&flat)?;
                let mut offset = 0;
                for gradient in bucket.drain(..) {
                    let count = gradient.numel() as i64;
                    gradient.shallow_clone().copy_(&flat.narrow(0, offset, count).view_as(gradient));
                    offset += count;
                }
                bytes = 0;
            }
        }
        Ok(())
    }

    /// Overwrites `tensor` on every rank with rank 0's.
    pub fn broadcast_from_main_(&self, tensor: &Tensor) -> Result<(), DistributedError> {
        self.with_group("broadcast", |group| on_cpu(tensor, |cpu| group.broadcast(cpu, 0)))?;
        Ok(())
    }

    /// Rank 0's `bytes` on every rank (what the others pass is ignored).
    pub fn broadcast_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>, DistributedError> {
        if self.group.is_none() {
            return Ok(bytes.to_vec());
        }
        let length = Tensor::from_slice(&[bytes.len() as i64]);
        self.broadcast_from_main_(&length)?;
        let mut padded: Vec<i64> = bytes.iter().map(|&b| i64::from(b)).collect();
        padded.resize(length.int64_value(&[0]) as usize, 0);
        let tensor = Tensor::from_slice(&padded);
        self.broadcast_from_main_(&tensor)?;
        Ok(Vec::<i64>::try_from(&tensor).expect("an i64 vector").into_iter().map(|b| b as u8).collect())
    }

    /// Every rank's `tensor` (one shape on all ranks), in rank order; `[tensor]` alone in a
    /// world of one.
    pub fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>, DistributedError> {
        let device = tensor.device();
        let gathered = self.with_group("all-gather", |group| group.all_gather(&tensor.to_device(Device::Cpu).contiguous()))?;
        Ok(match gathered {
            None => vec![tensor.shallow_clone()],
            Some(list) => list.into_iter().map(|t| t.to_device(device)).collect(),
        })
    }

    /// The largest of the ranks' `value`s.
    pub fn max(&self, value: i64) -> Result<i64, DistributedError> {
        let values = self.all_gather(&Tensor::from_slice(&[value]))?;
        Ok(values.iter().map(|v| v.int64_value(&[0])).max().unwrap_or(value))
    }

    /// The whole batch of `count` rows on every rank, from each rank's [`shard`](Self::shard) of
    /// them (`rows`, its rows first; the other dimensions the same on every rank).
    pub fn gather_rows(&self, rows: &Tensor, count: usize) -> Result<Tensor, DistributedError> {
        if self.group.is_none() {
            return Ok(rows.shallow_clone());
        }
        // All-gather takes one shape: every share padded to the largest.
        let largest = (0..self.size).map(|rank| self.shard_of(rank, count).len()).max().unwrap_or(0) as i64;
        let mut shape = rows.size();
        let missing = largest - shape[0];
        let padded = match missing {
            0 => rows.shallow_clone(),
            _ => {
                shape[0] = missing;
                Tensor::cat(&[rows, &Tensor::zeros(shape.as_slice(), (rows.kind(), rows.device()))], 0)
            }
        };
        let shares = self.all_gather(&padded)?;
        let kept: Vec<Tensor> =
            shares.iter().enumerate().map(|(rank, share)| share.narrow(0, 0, self.shard_of(rank, count).len() as i64)).collect();
        Ok(Tensor::cat(&kept, 0))
    }

    /// Waits until every rank is here.
    pub fn barrier(&self) -> Result<(), DistributedError> {
        self.with_group("barrier", Group::barrier)?;
        Ok(())
    }
}

/// Runs a collective on a CPU tensor: `tensor` itself when it is a contiguous CPU tensor, else
/// a contiguous CPU copy whose result is copied back.
fn on_cpu(tensor: &Tensor, call: impl FnOnce(&Tensor) -> Result<(), String>) -> Result<(), String> {
    if tensor.device() == Device::Cpu && tensor.is_contiguous() {
        return call(tensor);
    }
    let copy = tensor.to_device(Device::Cpu).contiguous();
    call(&copy)?;
    tensor.shallow_clone().copy_(&copy);
    Ok(())
}

extern "C" {
    fn rlhf_group_new(
        host: *const c_char,
        port: i32,
        rank: i32,
        size: i32,
        timeout_s: f64,
        interface: *const c_char,
        handle: *mut *mut c_void,
    ) -> *mut c_char;
    fn rlhf_group_free(handle: *mut c_void);
    fn rlhf_group_all_reduce_sum(handle: *mut c_void, tensor: *mut C_tensor) -> *mut c_char;
    fn rlhf_group_broadcast(handle: *mut c_void, tensor: *mut C_tensor, root: i32) -> *mut c_char;
    fn rlhf_group_all_gather(handle: *mut c_void, input: *mut C_tensor, outputs: *mut *mut C_tensor) -> *mut c_char;
    fn rlhf_group_barrier(handle: *mut c_void) -> *mut c_char;
    fn rlhf_group_alive_ranks(handle: *mut c_void, round: i32, wait_s: f64, alive: *mut i32) -> *mut c_char;
}

/// Collectives run and the seconds spent in them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Communication {
    pub calls: u64,
    pub seconds: f64,
}

/// A c10d Gloo process group and its store.
struct Group {
    communication: Communication,
    handle: *mut c_void,
    size: usize,
    timeout: Duration,
    /// Failed collectives so far: each asks the store who is alive under a new round.
    failures: std::cell::Cell<i32>,
}

// SAFETY: the handle is used under the world's mutex only; c10d's group is thread-safe anyway.
unsafe impl Send for Group {}

impl Group {
    fn join(launch: &Launch) -> Result<Self, DistributedError> {
        let address = format!("{}:{}", launch.master_addr, launch.master_port);
        let fail = |message: String| DistributedError::Rendezvous {
            rank: launch.rank,
            size: launch.size,
            address: address.clone(),
            timeout_s: launch.timeout.as_secs_f64(),
            message,
        };
        let host = CString::new(launch.master_addr.as_str()).map_err(|_| fail("MASTER_ADDR holds a NUL byte".into()))?;
        let interface = std::env::var("GLOO_SOCKET_IFNAME").ok().and_then(|name| CString::new(name).ok());
        let mut handle = std::ptr::null_mut();
        // SAFETY: valid C strings for the call; on success `handle` is ours until dropped.
        checked(unsafe {
            rlhf_group_new(
                host.as_ptr(),
                i32::from(launch.master_port),
                launch.rank as i32,
                launch.size as i32,
                launch.timeout.as_secs_f64(),
                interface.as_ref().map_or(std::ptr::null(), |name| name.as_ptr()),
                &mut handle,
            )
        })
        .map_err(fail)?;
        Ok(Group {
            communication: Communication::default(),
            handle,
            size: launch.size,
            timeout: launch.timeout,
            failures: std::cell::Cell::new(0),
        })
    }

    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<(), String> {
        // SAFETY: a live group and tensor for the duration of the call.
        checked(unsafe { rlhf_group_all_reduce_sum(self.handle, tensor.as_ptr() as *mut C_tensor) })
    }

    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<(), String> {
        // SAFETY: as above.
        checked(unsafe { rlhf_group_broadcast(self.handle, tensor.as_ptr() as *mut C_tensor, root as i32) })
    }

    fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>, String> {
        let mut outputs = vec![std::ptr::null_mut(); self.size];
        // SAFETY: as above; on success each output is a new tensor handle that we own.
        checked(unsafe { rlhf_group_all_gather(self.handle, tensor.as_ptr() as *mut C_tensor, outputs.as_mut_ptr()) })?;
        Ok(outputs.into_iter().map(|handle| unsafe { Tensor::from_ptr(handle) }).collect())
    }

    fn barrier(&self) -> Result<(), String> {
        // SAFETY: a live group.
        checked(unsafe { rlhf_group_barrier(self.handle) })
    }

    /// After a failed collective, which ranks no longer answer, in words.
    fn lost_ranks(&self) -> String {
        let round = self.failures.get() + 1;
        self.failures.set(round);
        let mut alive = vec![0i32; self.size];
        // Survivors fail within moments of each other (a dead peer's connection closes at once);
        // a hung one only after the timeout, so waiting longer would not tell more.
        let wait = self.timeout.min(Duration::from_secs(10)).as_secs_f64();
        // SAFETY: a live group; `alive` holds one entry per rank.
        match checked(unsafe { rlhf_group_alive_ranks(self.handle, round, wait, alive.as_mut_ptr()) }) {
            Err(_) => "lost rank 0 (it hosts the group's store at MASTER_ADDR:MASTER_PORT)".to_string(),
            Ok(()) => {
                let lost: Vec<String> = (0..self.size).filter(|&r| alive[r] == 0).map(|r| r.to_string()).collect();
                match lost.len() {
                    0 => "every rank still answers (a collective failed on all of them)".to_string(),
                    1 => format!("lost rank {}", lost[0]),
                    _ => format!("lost ranks {}", lost.join(", ")),
                }
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: the handle came from rlhf_group_new and is freed once.
        unsafe { rlhf_group_free(self.handle) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(variables: &[(&str, &str)]) -> Result<Option<Launch>, DistributedError> {
        let map: HashMap<String, String> = variables.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Launch::from_variables(&|name| map.get(name).cloned())
    }

    #[test]
    fn torchrun_variables_give_the_rank() {
        let found =
            launch(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")])
                .unwrap()
                .unwrap();
        assert_eq!((found.rank, found.size, found.local_rank, found.master_port), (1, 2, 1, 29500));
        assert_eq!(found.master_addr, "10.0.0.1");
        assert_eq!(found.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn slurm_step_variables_give_the_rank_with_defaults() {
        let found = launch(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_STEP_NUM_TASKS", "4"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_ID", "123456"),
            ("SLURM_LAUNCH_NODE_IPADDR", "10.0.0.7"),
            (TIMEOUT_VARIABLE, "30"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((found.rank, found.size, found.local_rank), (3, 4, 1));
        assert_eq!((found.master_addr.as_str(), found.master_port), ("10.0.0.7", 20_000 + 3456));
        assert_eq!(found.timeout, Duration::from_secs(30));
    }

    #[test]
    fn one_process_is_no_group() {
        assert_eq!(launch(&[]).unwrap(), None);
        let single = [("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "x"), ("MASTER_PORT", "1")];
        assert_eq!(launch(&single).unwrap(), None);
    }

    #[test]
    fn bad_variables_are_named() {
        let error = launch(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "h")]).unwrap_err();
        assert!(error.to_string().contains("MASTER_PORT is not set"), "{error}");
        let error =
            launch(&[("WORLD_SIZE", "two"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]).unwrap_err();
        assert!(error.to_string().contains("WORLD_SIZE=`two`"), "{error}");
        let error =
            launch(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]).unwrap_err();
        assert!(error.to_string().contains("below the world size"), "{error}");
        let error = launch(&[(TIMEOUT_VARIABLE, "0")]).unwrap_err();
        assert!(error.to_string().contains("RLHF_DIST_TIMEOUT=`0`"), "{error}");
    }

    #[test]
    fn shards_cover_every_item_once() {
        for size in 1..5 {
            for count in [0, 1, 7, 16] {
                let covered: Vec<usize> =
                    (0..size).flat_map(|rank| World { rank, size, local_rank: 0, group: None }.shard(count)).collect();
                assert_eq!(covered, (0..count).collect::<Vec<_>>());
            }
        }
    }
}
