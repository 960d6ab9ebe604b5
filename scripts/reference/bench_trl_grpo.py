"""One GRPO iteration with current TRL's GRPOTrainer, the reference for examples/bench_grpo.rs.
Runs in its own venv (.venv-trl-new, made by scripts/bench_grpo).

  bench_trl_grpo.py MODEL_DIR PROMPTS_JSON GROUP_SIZE REPEATS

The same work as the Rust side on the same GPT-2 directory and prompts: GROUP_SIZE responses
to each prompt (one generation batch of all of them, `model.generate` on the CPU, no vLLM),
at most 48 new tokens, temperature 1 (no top-k/top-p), scored by the same programmatic reward
(the share of response tokens with ids in [1, 128), end-of-text left out), group-scaled
advantages, the reference model's per-token log-probs for the k3 KL term (β 0.04), then one
optimizer step over the whole rollout (`per_device_train_batch_size` = the rollout,
`gradient_accumulation_steps` 1, so `steps_per_generation` 1 and `generation_batch_size` the
rollout; `num_iterations` 1), `loss_type = "grpo"`. fp32 (`bf16=False`), no gradient
checkpointing (GRPOConfig turns it on by default; rlhf-lab does not checkpoint), 2 threads.

`trainer.train()` runs 1 + REPEATS steps; the first is a warm-up. A step is timed from the end
of the previous step to its own end (`on_step_end`), so it includes TRL's data loading.
Generation is the time in `GRPOTrainer._generate` (tokenisation, `generate`, decoding);
scoring the rest of `_generate_and_score_completions` (reference log-probs, rewards,
advantages); training the rest of the step (forward, backward, clipping, optimizer step).
Prints one JSON line in the Rust side's format.
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
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

MAX_NEW_TOKENS = 48
LIKED_BELOW = 128
EOS_ID = 0


def liked_token_share(prompts, completions, completion_ids, **kwargs):
    """The share of response tokens with ids in [1, LIKED_BELOW), end-of-text left out (as the
    Rust side's scorer, which sees responses without it)."""
    shares = []
    for ids in completion_ids:
        ids = list(ids)
        if ids and ids[-1] == EOS_ID:
            ids = ids[:-1]
        shares.append(sum(1 for i in ids if 1 <= i < LIKED_BELOW) / max(len(ids), 1))
    return shares


class StepTimes(TrainerCallback):
    def __init__(self):
        self.ends = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def main(model_dir, prompts_path, group_size, repeats):
    group_size, repeats = int(group_size), int(repeats)
    with open(prompts_path) as f:
        prompts = json.load(f)
    rollout = len(prompts) * group_size
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=f"{model_dir}/tokenizer.json",
                                        eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out_dir = tempfile.TemporaryDirectory()  # removed when the process ends
    config = GRPOConfig(
        output_dir=out_dir.name,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_vllm=False,
        per_device_train_batch_size=rollout,
        gradient_accumulation_steps=1,
        num_generations=group_size,
        num_iterations=1,
        max_completion_length=MAX_NEW_TOKENS,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        beta=0.04,
        epsilon=0.2,
        loss_type="grpo",
        scale_rewards="group",
        # The k3 term as rlhf-lab (and the GRPO paper) write it, without the importance ratio.
        use_bias_correction_kl=False,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=1 + repeats,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    times = StepTimes()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=liked_token_share,
        args=config,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=tokenizer,
        callbacks=[times],
    )
    assert trainer.ref_model is not None, "β > 0 needs the reference model"
    assert not trainer.use_vllm
    assert config.steps_per_generation == 1 and config.generation_batch_size == rollout, (
        config.steps_per_generation, config.generation_batch_size)

    seconds = {"generation": [], "rollout": [], "response_tokens": []}

    def timed(name, method):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            result = method(*args, **kwargs)
            seconds[name].append(time.perf_counter() - started)
            return result
        return wrapper

    trainer._generate = timed("generation", trainer._generate)
    generate_and_score = timed("rollout", trainer._generate_and_score_completions)

    def counted(*args, **kwargs):
        result = generate_and_score(*args, **kwargs)
        seconds["response_tokens"].append(float(result["completion_mask"].sum()))
        return result

    trainer._generate_and_score_completions = counted
    threads = torch.get_num_threads()
    trainer.train()
    assert torch.get_num_threads() == threads == 2, torch.get_num_threads()

    steps = [b - a for a, b in zip(times.ends, times.ends[1:])]
    assert len(steps) == 1 + repeats == len(seconds["rollout"]), (len(steps), len(seconds["rollout"]))
    split = {"step": [], "generation": [], "scoring": [], "training": [], "response_tokens": []}
    for i in range(1, 1 + repeats):  # the first step is the warm-up
        split["step"].append(steps[i])
        split["generation"].append(seconds["generation"][i])
        split["scoring"].append(seconds["rollout"][i] - seconds["generation"][i])
        split["training"].append(steps[i] - seconds["rollout"][i])
        split["response_tokens"].append(seconds["response_tokens"][i])
    print(json.dumps({"impl": "trl", "optim": str(config.optim), "seconds": split}), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(*sys.argv[1:])
