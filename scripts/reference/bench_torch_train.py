"""Training-step throughput of PyTorch + transformers, the reference for examples/bench_train.rs.

  bench_torch_train.py MODEL_DIR BATCHES_JSON REPEATS [default|fused]
  bench_torch_train.py matmul REPEATS

The same work as the Rust side, written as one would in PyTorch:
- lm: GPT2LMHeadModel (SDPA attention) on the batch's rows (inputs = row[:-1], targets =
  row[1:]), summed cross-entropy / tokens, clip_grad_norm_(1.0), torch.optim.AdamW (betas
  0.9/0.95, weight decay 0.1 on matrices only), zero_grad;
- rm: GPT2Model + a linear scalar head read at the last token of left-padded rows (positions
  count real tokens), chosen and rejected in one batch, Bradley–Terry loss with a 0.01
  centring term, clipping, AdamW (betas 0.9/0.999, no decay).
Two unmeasured warm-up steps, then REPEATS timed steps, printed as JSON lines in the Rust format.

The optimiser: `default` is `torch.optim.AdamW` as constructed without options (on CPU its
for-loop implementation; impl "torch"); `fused` passes `fused=True`, PyTorch's fastest AdamW on
CPU (one fused kernel per parameter group; impl "torch-fused"). Everything else is the same.

`matmul` measures the fp32 matmul ceiling MFU is stated against: a 1024×1024 @ 1024×1024 fp32
matmul on 2 threads, REPEATS timed repetitions of 10 matmuls each (after 2 unmeasured
matmuls), printed as one JSON line {"impl": "torch", "task": "matmul", "gflops": [...]}.
"""
import json
import sys
import time

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel, GPT2Model

torch.set_num_threads(2)
torch.manual_seed(0)
WARM_UP_STEPS = 2


OPTIMISERS = {"default": ("torch", {}), "fused": ("torch-fused", {"fused": True})}
MATMUL_SIZE, MATMULS_PER_REPEAT = 1024, 10


def adamw(model, betas, weight_decay, options):
    # No decay on biases and LayerNorm parameters, as the Rust optimizer does.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=1e-4, betas=betas, eps=1e-8, **options)


def matmul_gflops(repeats):
    """GFLOP/s of each of `repeats` timed repetitions of 10 fp32 1024² matmuls."""
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    for _ in range(2):
        a @ b
    gflops = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(MATMULS_PER_REPEAT):
            a @ b
        seconds = (time.perf_counter() - start) / MATMULS_PER_REPEAT
        gflops.append(2 * MATMUL_SIZE**3 / seconds / 1e9)
    return gflops


def time_steps(repeats, step):
    seconds = []
    for i in range(WARM_UP_STEPS + repeats):
        start = time.perf_counter()
        step()
        if i >= WARM_UP_STEPS:
            seconds.append(time.perf_counter() - start)
    return seconds


def lm_step(model_dir, rows, options):
    model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="sdpa").train()
    optimizer = adamw(model, (0.9, 0.95), 0.1, options)
    ids = torch.tensor(rows, dtype=torch.long)
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def step():
        logits = model(input_ids=inputs).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum") / targets.numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


class RewardModel(torch.nn.Module):
    def __init__(self, model_dir):
        super().__init__()
        self.backbone = GPT2Model.from_pretrained(model_dir, attn_implementation="sdpa")
        width = self.backbone.config.n_embd
        self.head = torch.nn.Linear(width, 1)
        torch.nn.init.normal_(self.head.weight, std=1.0 / (width + 1) ** 0.5)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, ids, mask):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        # Left padding: every row's last real token is the last position.
        return self.head(hidden[:, -1]).squeeze(-1)


def rm_step(model_dir, chosen, rejected, pad_id, options):
    model = RewardModel(model_dir).train()
    optimizer = adamw(model, (0.9, 0.999), 0.0, options)
    rows = chosen + rejected
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    n = len(chosen)

    def step():
        scores = model(ids, mask)
        r_chosen, r_rejected = scores[:n], scores[n:]
        loss = -F.logsigmoid(r_chosen - r_rejected).mean() + 0.01 * (r_chosen + r_rejected).square().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(model_dir, batches_path=None, repeats=None, optimiser="default"):
    if model_dir == "matmul":
        print(json.dumps({"impl": "torch", "task": "matmul", "gflops": matmul_gflops(int(batches_path))}), flush=True)
        return
    repeats = int(repeats)
    impl, options = OPTIMISERS[optimiser]
    with open(batches_path) as f:
        batches = json.load(f)
    if "lm" in batches:
        rows = batches["lm"]
        seconds = time_steps(repeats, lm_step(model_dir, rows, options))
        print(json.dumps({"impl": impl, "task": "lm", "batch": len(rows),
                          "tokens_per_step": len(rows) * (len(rows[0]) - 1), "seconds": seconds}), flush=True)
    if "rm" in batches:
        pairs = batches["rm"]
        pad_id = json.load(open(f"{model_dir}/config.json"))["eos_token_id"]
        seconds = time_steps(repeats, rm_step(model_dir, pairs["chosen"], pairs["rejected"], pad_id, options))
        print(json.dumps({"impl": impl, "task": "rm", "pairs_per_step": len(pairs["chosen"]),
                          "seconds": seconds}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
