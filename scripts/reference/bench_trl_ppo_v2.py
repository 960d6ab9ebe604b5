"""One PPO iteration with TRL 0.26's PPOTrainer (the "PPOv2" design: policy, reference, a separate
value model and a reward model), the reference for examples/bench_ppo.rs with a separate value
model. Runs in its own venv (.venv-trl26, made by scripts/bench_ppo).

  bench_trl_ppo_v2.py MODEL_DIR PROMPTS_JSON REPEATS

The GPT-2 directory serves as policy and reference (AutoModelForCausalLM) and, loaded as
AutoModelForSequenceClassification with num_labels=1 (a fresh score head each), as value model
and reward model, as TRL's PPO example does. Configured as close to the Rust side as the trainer
allows: 64 rollouts per iteration (all prompts, generated and scored in one batch), 48 sampled
tokens (temperature 1, no top-k/top-p), responses truncated after the end-of-text token as the
Rust side's are (stop_token "eos"), no missing-EOS penalty, KL penalty β 0.05 (k1, fixed), GAE
(γ 1, λ 0.95), 4 PPO epochs over 4 minibatches of 16 (one forward/backward per minibatch),
clipped policy and value losses (0.2), vf_coef 0.1, fp32 on CPU, 2 threads, no gradient
checkpointing, no evaluation, saving, sample generation or reporting.

TRL's `train()` runs the iterations itself, so they are timed from the inside: a wrapper around
the trainer module's `batch_generation` marks generation, a wrapper around its `forward` marks
the first forward pass of the policy+value wrapper (the start of the PPO epochs), and a callback
marks the end of each iteration (`on_step_end`). Per iteration:
- step: from the end of the previous iteration to the end of this one (data loading, generation,
  scoring, the PPO epochs, TRL's metrics and clean-up: everything the loop does once per batch);
- generation: `batch_generation` (sampling, with the per-step logits TRL keeps as the rollout's
  log-probs);
- scoring: from the end of generation to the first training forward pass (log-probs from the kept
  logits, reference forward, value-model forward, reward-model forward, rewards, GAE, whitening,
  and TRL's garbage collection there);
- training: from the first training forward pass to the end of the iteration (the PPO epochs,
  then TRL's metrics and logging).
One unmeasured warm-up iteration, then REPEATS timed ones, printed as one JSON line in the Rust
side's format. Response tokens count each response up to and including its end-of-text token.
"""
import json
import sys
import tempfile
import time
import warnings

import torch
from datasets import Dataset
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, PrinterCallback,
                          ProgressCallback, TrainerCallback)

from ppo_bench_inputs import prompts_and_tokenizer

warnings.filterwarnings("ignore")
import trl.experimental.ppo.ppo_trainer as ppo_module  # noqa: E402
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)
RESPONSE_LENGTH = 48
MINIBATCH = 16


class Clock(TrainerCallback):
    """Marks of the current iteration; `iterations` collects the finished ones."""

    def __init__(self):
        self.iterations = []
        self.marks = {}
        self.previous_end = None
        self.optimizer_steps = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.previous_end = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        end = time.perf_counter()
        marks = self.marks
        self.iterations.append({
            "step": end - self.previous_end,
            "generation": marks["generated"] - marks["generating"],
            "scoring": marks["training"] - marks["generated"],
            "training": end - marks["training"],
            "response_tokens": marks["response_tokens"],
            "optimizer_steps": self.optimizer_steps,
            "threads": torch.get_num_threads(),
        })
        self.marks, self.optimizer_steps, self.previous_end = {}, 0, end


def main(model_dir, prompts_path, repeats):
    repeats = int(repeats)
    prompts, tokenizer = prompts_and_tokenizer(model_dir, prompts_path)
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p).input_ids for p in prompts]})

    policy = AutoModelForCausalLM.from_pretrained(model_dir)
    reference = AutoModelForCausalLM.from_pretrained(model_dir)
    value_model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    reward_model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    for model in (value_model, reward_model):
        model.config.pad_token_id = tokenizer.pad_token_id

    batch = len(prompts)
    output_dir = tempfile.mkdtemp(prefix="bench_trl_ppo_v2.")
    config = PPOConfig(
        output_dir=output_dir,
        # local batch = per-device batch × accumulation steps = 64 rollouts per iteration, split
        # into num_mini_batches = 4 minibatches of 16 = one micro-batch of 16 each.
        per_device_train_batch_size=MINIBATCH, gradient_accumulation_steps=batch // MINIBATCH,
        num_mini_batches=batch // MINIBATCH, local_rollout_forward_batch_size=batch,
        total_episodes=batch * (repeats + 1), num_ppo_epochs=4,
        response_length=RESPONSE_LENGTH, stop_token="eos", temperature=1.0, missing_eos_penalty=None,
        kl_coef=0.05, kl_estimator="k1", whiten_rewards=False, gamma=1.0, lam=0.95,
        cliprange=0.2, cliprange_value=0.2, vf_coef=0.1,
        learning_rate=1e-5, lr_scheduler_type="constant", weight_decay=0.0,
        bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
        num_sample_generations=0, eval_strategy="no", save_strategy="no", report_to=[],
        disable_tqdm=True, seed=0,
    )
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=reference,
                         reward_model=reward_model, value_model=value_model, train_dataset=dataset,
                         eval_dataset=dataset)
    # TRL logs every iteration's metrics through these (to stdout); the JSON line is the output.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    clock = Clock()
    trainer.add_callback(clock)
    torch.set_num_threads(2)

    batch_generation, forward = ppo_module.batch_generation, ppo_module.forward

    def timed_batch_generation(*args, **kwargs):
        clock.marks["generating"] = time.perf_counter()
        query_responses, logits = batch_generation(*args, **kwargs)
        clock.marks["generated"] = time.perf_counter()
        queries = args[1]
        responses = query_responses[:, queries.shape[1]:]
        ended = responses == tokenizer.eos_token_id
        lengths = torch.where(ended.any(1), ended.int().argmax(1) + 1, responses.shape[1])
        clock.marks["response_tokens"] = int(lengths.sum())
        return query_responses, logits

    def timed_forward(model, *args, **kwargs):
        # The PPO epochs call forward on the policy+value wrapper; scoring calls it on the reference.
        if model is trainer.model and "training" not in clock.marks:
            clock.marks["training"] = time.perf_counter()
        return forward(model, *args, **kwargs)

    ppo_module.batch_generation, ppo_module.forward = timed_batch_generation, timed_forward
    inner_optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    optimizer_step = inner_optimizer.step

    def counted_step(*args, **kwargs):
        clock.optimizer_steps += 1
        return optimizer_step(*args, **kwargs)

    inner_optimizer.step = counted_step

    trainer.train()

    measured = clock.iterations[1:]  # the first is the warm-up
    expected_steps = config.num_ppo_epochs * config.num_mini_batches
    if len(measured) != repeats or any(i["optimizer_steps"] != expected_steps for i in clock.iterations):
        sys.exit(f"expected {repeats} measured iterations of {expected_steps} optimizer steps each, "
                 f"got {[i['optimizer_steps'] for i in clock.iterations]}")
    if any(i["threads"] != 2 for i in clock.iterations):
        sys.exit(f"expected 2 threads, got {[i['threads'] for i in clock.iterations]}")
    # What TRL's defaults chose, for the report (scripts/bench_ppo reads this line).
    optimizer_class = type(inner_optimizer)
    print(f"TRL optimizer: {optimizer_class.__module__.split('.')[0]}.optim.{optimizer_class.__name__} "
          f"(optim={getattr(config.optim, 'value', config.optim)}, fused={inner_optimizer.defaults.get('fused')}), "
          f"{expected_steps} steps per iteration", file=sys.stderr)
    keys = ("step", "generation", "scoring", "training", "response_tokens")
    split = {key: [i[key] for i in measured] for key in keys}
    print(json.dumps({"impl": "trl26", "seconds": split}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
