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
