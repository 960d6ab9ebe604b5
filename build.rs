//! Bakes libtorch's library directory into the binary's rpath so that `rlhf` runs without
//! `LD_LIBRARY_PATH` (torch-sys, `links = "tch"`, exports it as `DEP_TCH_LIBTORCH_LIB`).
fn main() {
    record_git_commit();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
        // Rust links with --as-needed, which drops libtorch_cuda (nothing references it by
        // symbol); without it libtorch sees no CUDA device even on a GPU machine.
        if std::path::Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}

/// `RLHF_GIT_COMMIT` (for a run's env.json): the commit the binary was built from, `-dirty` when
/// the tree had changes, `unknown` outside a git checkout.
fn record_git_commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = match git(&["rev-parse", "HEAD"]) {
        Some(head) if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) => format!("{head}-dirty"),
        Some(head) => head,
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=RLHF_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
}
