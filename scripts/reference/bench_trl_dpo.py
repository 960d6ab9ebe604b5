"""DPO steps with current TRL's DPOTrainer, the reference for the `dpo` stage in
scripts/bench_dpo. Runs in its own venv (.venv-trl-new, made by scripts/bench_grpo or
scripts/bench_dpo).

  bench_trl_dpo.py MODEL_DIR PAIRS_JSONL WARMUP REPEATS PRECOMPUTE

The same work as the `dpo` stage on the same GPT-2 directory and preference pairs: batches of
16 pairs (`per_device_train_batch_size` 16, no gradient accumulation), each response scored as
prompt + response + end-of-text, summed log-probs, the sigmoid loss with β 0.1, AdamW with a
constant learning rate, gradients clipped at norm 1. fp32 (`bf16=False`), no gradient
checkpointing (DPOConfig turns it on by default; rlhf-lab does not checkpoint), 2 threads.
PRECOMPUTE = 1 sets `precompute_ref_log_probs=True` (the reference's log-probs computed once
before training, as the `dpo` stage always does); 0 is TRL's default (a reference forward pass
in every step).

`trainer.train()` runs WARMUP + REPEATS steps; the first WARMUP are not measured. A step is
timed from the end of the previous step to its own end (`on_step_end`), so it includes TRL's
batch collation. Prints one JSON line: the measured seconds per step.
"""
import json
import os
import sys
import tempfile
import time
import warnings

import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
torch.manual_seed(0)

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402


class StepTimes(TrainerCallback):
    def __init__(self):
        self.ends = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def main(model_dir, pairs_path, warmup, repeats, precompute):
    warmup, repeats, precompute = int(warmup), int(repeats), precompute == "1"
    with open(pairs_path) as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=f"{model_dir}/tokenizer.json",
                                        eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out_dir = tempfile.TemporaryDirectory()  # removed when the process ends
    config = DPOConfig(
        output_dir=out_dir.name,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1,
        beta=0.1,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=precompute,
        max_length=model.config.n_positions,
        learning_rate=1e-6,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=warmup + repeats,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    os.environ["TQDM_DISABLE"] = "1"
    times = StepTimes()
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]),
        processing_class=tokenizer,
        callbacks=[times],
    )
    assert (trainer.ref_model is None) == precompute, "a reference model only without precomputed log-probs"
    trainer.train()
    assert torch.get_num_threads() == 2, torch.get_num_threads()
    steps = [b - a for a, b in zip(times.ends, times.ends[1:])]
    assert len(steps) == warmup + repeats, len(steps)
    impl = "trl-precomputed" if precompute else "trl"
    print(json.dumps({"impl": impl, "optim": str(config.optim), "seconds": {"step": steps[warmup:]}}), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(*sys.argv[1:])
