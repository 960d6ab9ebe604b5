"""One PPO iteration with TRL's classic PPOTrainer (trl 0.11, the last release that has it), the
reference for examples/bench_ppo.rs. Runs in its own venv (.venv-trl, made by scripts/bench_ppo).

  bench_trl_ppo.py MODEL_DIR PROMPTS_JSON REPEATS

The same work as the Rust side on the same GPT-2 directory and prompts: sample one 48-token
response per prompt (temperature 1, no top-k/top-p), score prompt + response with a GPT-2
reward model (GPT2ForSequenceClassification, the last real token), then `PPOTrainer.step`:
log-probs of policy and reference, KL-shaped rewards (β 0.05, fixed), GAE (γ 1, λ 0.95), 4 PPO
epochs over minibatches of 16, clipped policy and value losses. TRL's value head shares the
policy's backbone (vf_coef 0.1). One unmeasured warm-up iteration, then REPEATS timed ones,
printed as one JSON line in the Rust side's format: generation, scoring (reward model, plus
TRL's forward passes, rewards and advantages, which the Rust side also counts as scoring) and
training (TRL's optimisation phase).
"""
import json
import sys
import time
import warnings

import torch
from transformers import GPT2ForSequenceClassification

from ppo_bench_inputs import prompts_and_tokenizer
from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
torch.manual_seed(0)
MAX_NEW_TOKENS = 48


def main(model_dir, prompts_path, repeats):
    repeats = int(repeats)
    prompts, tokenizer = prompts_and_tokenizer(model_dir, prompts_path)
    policy = AutoModelForCausalLMWithValueHead.from_pretrained(model_dir)
    reference = AutoModelForCausalLMWithValueHead.from_pretrained(model_dir)
    reward_model = GPT2ForSequenceClassification.from_pretrained(model_dir, num_labels=1).eval()
    reward_model.config.pad_token_id = tokenizer.pad_token_id
    config = PPOConfig(
        batch_size=len(prompts), mini_batch_size=16, gradient_accumulation_steps=1, ppo_epochs=4,
        learning_rate=1e-5, init_kl_coef=0.05, adap_kl_ctrl=False, kl_penalty="kl",
        gamma=1.0, lam=0.95, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, max_grad_norm=1.0,
        seed=0, log_with=None,
    )
    trainer = PPOTrainer(config, policy, reference, tokenizer)
    queries = [tokenizer(p, return_tensors="pt").input_ids[0] for p in prompts]
    generation_kwargs = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=True, top_k=0, top_p=1.0,
                             temperature=1.0, pad_token_id=tokenizer.pad_token_id)

    split = {"step": [], "generation": [], "scoring": [], "training": [], "response_tokens": []}
    for iteration in range(repeats + 1):
        started = time.perf_counter()
        responses = trainer.generate(queries, batch_size=len(queries), return_prompt=False, **generation_kwargs)
        generated = time.perf_counter()
        with torch.no_grad():
            rows = [torch.cat([q, r]) for q, r in zip(queries, responses)]
            batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
            scores = reward_model(**batch).logits[:, 0]
        scored = time.perf_counter()
        stats = trainer.step(queries, list(responses), list(scores))
        finished = time.perf_counter()
        if iteration == 0:
            continue  # warm-up
        # TRL's step first recomputes log-probs and values and the advantages (the Rust side
        # counts these as scoring), then optimises.
        optimise = float(stats["time/ppo/optimize_step"])
        split["step"].append(finished - started)
        split["generation"].append(generated - started)
        split["scoring"].append(scored - generated + (finished - scored - optimise))
        split["training"].append(optimise)
        split["response_tokens"].append(sum(len(r) for r in responses))
    print(json.dumps({"impl": "trl", "seconds": split}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
