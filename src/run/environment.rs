//! `env.json`: what produced a run — versions, commit, devices, threads, seed.

use serde_json::{json, Value};

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
        "seed": seed,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "command": std::env::args().collect::<Vec<_>>(),
    })
}
