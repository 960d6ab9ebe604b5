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

/// The libtorch this process runs on: where its `libtorch_cpu` was loaded from (read from
/// `/proc/self/maps`) and the version recorded beside it — `torch/version.py` of a PyTorch
/// wheel, or `build-version` of a libtorch archive. `None` for what cannot be found.
pub fn linked_libtorch() -> (Option<String>, Option<std::path::PathBuf>) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let Some(library) = maps.lines().filter_map(|line| line.split_whitespace().nth(5)).find(|path| path.contains("libtorch_cpu.")) else {
        return (None, None);
    };
    let library = std::path::PathBuf::from(library);
    let Some(root) = library.parent().and_then(std::path::Path::parent) else { return (None, Some(library)) };
    let from_wheel = std::fs::read_to_string(root.join("version.py")).ok().and_then(|text| {
        let line = text.lines().find(|line| line.starts_with("__version__"))?;
        Some(line.split(['\'', '"']).nth(1)?.to_string())
    });
    let from_archive = || std::fs::read_to_string(root.join("build-version")).ok().map(|text| text.trim().to_string());
    (from_wheel.or_else(from_archive), Some(library))
}

/// The environment of this process, with the devices the run's models asked for.
pub fn describe(seed: u64, devices: &[(String, String)]) -> Value {
    let devices: serde_json::Map<String, Value> = devices.iter().map(|(model, device)| (model.clone(), device.clone().into())).collect();
    let (libtorch_version, libtorch_library) = linked_libtorch();
    json!({
        "crate_version": env!("CARGO_PKG_VERSION"),
        "git_commit": env!("RLHF_GIT_COMMIT"),
        "libtorch_version": libtorch_version,
        "libtorch_library": libtorch_library.map(|path| path.display().to_string()),
        "tch_version": "0.26",
        "cuda_available": tch::Cuda::is_available(),
        "cuda_devices": tch::Cuda::device_count(),
        "devices": devices,
        "threads": tch::get_num_threads(),
        "generation_threads": crate::model::threads::generation_threads_setting(),
        "omp_wait_policy": std::env::var(OMP_WAIT_POLICY).ok(),
        "seed": seed,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "command": std::env::args().collect::<Vec<_>>(),
    })
}
