//! Bakes libtorch's library directory into the binary's rpath so that `rlhf` runs without
//! `LD_LIBRARY_PATH` (torch-sys, `links = "tch"`, exports it as `DEP_TCH_LIBTORCH_LIB`), and
//! compiles `csrc/` (libtorch operations tch does not expose, see `src/native.rs`) against the
//! same libtorch's headers.
fn main() {
    record_git_commit();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        compile_native(std::path::Path::new(&lib_dir));
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
        // Rust links with --as-needed, which drops libtorch_cuda (nothing references it by
        // symbol); without it libtorch sees no CUDA device even on a GPU machine.
        if std::path::Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}

/// `csrc/native.cpp` as a static library, with the flags torch-sys builds its own C++ with: the
/// headers beside `lib/`, C++17, and the C++11 ABI of the PyTorch wheels since 2.7
/// (`LIBTORCH_CXX11_ABI=0` for an older libtorch).
fn compile_native(lib_dir: &std::path::Path) {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let include = lib_dir.parent().expect("libtorch's lib/ has a parent").join("include");
    let cxx11_abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    let build = |file: &str, library: &str, extra: &dyn Fn(&mut cc::Build)| {
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .pic(true)
            .include(&include)
            .flag("-std=c++17")
            .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={cxx11_abi}"))
            .flag("-DGLOG_USE_GLOG_EXPORT")
            // libtorch's own headers warn under -Wall; our code is checked by its few lines.
            .warnings(false)
            .file(file);
        extra(&mut build);
        build.compile(library);
    };
    build("csrc/native.cpp", "rlhf_native", &|_| {});
    build("csrc/quantized.cpp", "rlhf_quantized", &|_| {});
    // c10d's Gloo process group: its header is empty without USE_C10D_GLOO and includes gloo's
    // own headers (Debian's libgloo-dev; the symbols themselves are in libtorch_cpu).
    build("csrc/collectives.cpp", "rlhf_collectives", &|build| {
        build.include(include.join("torch/csrc/api/include")).define("USE_C10D_GLOO", None);
    });
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
