# Sourced by the other scripts: where the Python venv (which provides libtorch) lives and how
# cargo finds libtorch.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RLHF_VENV:-$ROOT/.venv}"
export LIBTORCH_USE_PYTORCH=1
export PATH="$VENV/bin:$HOME/.cargo/bin:$PATH"
# Hugging Face libraries must never try the network (there is none): fixtures are made locally.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
# libtorch's (and PyTorch's) OpenMP threads sleep instead of spinning while they wait: on shared
# cores spinning stalls every parallel region (see src/run/environment.rs). Tests and benchmarks
# run both sides under this setting; the rlhf binary sets it for itself.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

# The provenance lines of a benchmark result: machine, load, versions, date and commit.
#   bench_provenance LOAD_BEFORE LOAD_AFTER REFERENCE_VERSIONS
bench_provenance() {
  local cpu_model tch_version commit
  cpu_model="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  tch_version="$(grep -A1 '^name = "tch"$' "$ROOT/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')"
  commit="$(git -C "$ROOT" rev-parse --short HEAD)"
  if [ -n "$(git -C "$ROOT" status --porcelain -- src examples)" ]; then commit="$commit, with uncommitted changes in src/ or examples/"; fi
  echo "- machine: $(nproc) cores, $cpu_model, $(free -g | awk '/^Mem:/ {print $2}') GiB memory, $(uname -sr);"
  echo "  load average $1 before, $2 after"
  echo "- versions: $(rustc --version | cut -d' ' -f1-2), tch $tch_version on the venv's libtorch; $3"
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ), commit $commit"
}
