//! Bakes libtorch's library directory into the binary's rpath so that `rlhf` runs without
//! `LD_LIBRARY_PATH` (torch-sys, `links = "tch"`, exports it as `DEP_TCH_LIBTORCH_LIB`).
fn main() {
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
