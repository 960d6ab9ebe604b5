//! The process environment: `env.json` (what produced a run — versions, commit, devices,
//! threads, seed) and the OpenMP setting libtorch's CPU threads need on a shared machine.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use serde_json::{json, Value};

const OMP_WAIT_POLICY: &str = "OMP_WAIT_POLICY";

/// Re-executes this program with `OMP_WAIT_POLICY=PASSIVE` unless the variable is already set
/// (a user's own choice is kept). libtorch's OpenMP threads otherwise spin while they wait for
/// work; when other processes share the cores, a spinning thread holds a core that its
/// descheduled partner needs, and every parallel region stalls — measured beside a compiler on 2
/// cores: one PPO iteration took 73 s instead of 4.7 s. libgomp reads the variable once, when
/// the library loads (before `main`), hence the re-execution rather than setting it here.
/// Returns only if the variable was set or re-execution failed.
pub fn ensure_passive_openmp_threads() {
    if std::env::var_os(OMP_WAIT_POLICY).is_some() {
        return;
    }
    let Ok(program) = std::env::current_exe() else { return };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("rlhf"));
    let error = Command::new(program).arg0(arg0).args(args).env(OMP_WAIT_POLICY, "PASSIVE").exec();
    // Running on with spinning threads is slower on a busy machine, never wrong.
    eprintln!("warning: could not re-execute with {OMP_WAIT_POLICY}=PASSIVE ({error}); continuing");
}

/// libtorch version: tch 0.26 builds against exactly this release (torch-sys checks it).
pub const LIBTORCH_VERSION: &str = "2.13.0";

/// The environment of this process, with the devices the run's models asked for.
pub fn describe(seed: u64, devices: &[(String, String)]) -> Value {
    let devices: serde_json::Map<String, Value> = devices.iter().map(|(model, device)| (model.clone(), device.clone().into())).collect();
    json!({
        "crate_version": env!("CARGO_PKG_VERSION"),
        "git_commit": env!("RLHF_GIT_COMMIT"),
        "libtorch_version": LIBTORCH_VERSION,
        "tch_version": "0.26",
        "cuda_available": tch::Cuda::is_available(),
        "cuda_devices": tch::Cuda::device_count(),
        "devices": devices,
        "threads": tch::get_num_threads(),
        "omp_wait_policy": std::env::var(OMP_WAIT_POLICY).ok(),
        "seed": seed,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "command": std::env::args().collect::<Vec<_>>(),
    })
}
