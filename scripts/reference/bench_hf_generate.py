"""Generation throughput of transformers' generate(), the reference for examples/bench_generation.rs.

  bench_hf_generate.py MODEL_DIR PROMPTS_JSON NEW_TOKENS REPEATS

PROMPTS_JSON is a list of prompt batches (rows of one length). For each batch, greedy decoding
with the KV cache on and off: one unmeasured warm-up, then REPEATS timed runs, printed as one JSON
line per setting, in the format of the Rust side.
"""
import json
import sys
import time

import torch

from hf_models import load  # also sets torch.set_num_threads(BENCH_THREADS, default 2), as the Rust side does


def main(model_dir, prompts_path, new_tokens, repeats):
    new_tokens, repeats = int(new_tokens), int(repeats)
    model = load(model_dir)
    with open(prompts_path) as f:
        batches = json.load(f)
    for prompts in batches:
        ids = torch.tensor(prompts, dtype=torch.long)
        for use_cache in (True, False):
            seconds = []
            for repetition in range(repeats + 1):
                start = time.perf_counter()
                # min_new_tokens keeps end-of-text from stopping a row, so every run makes
                # exactly new_tokens per row.
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    use_cache=use_cache,
                    min_new_tokens=new_tokens,
                    max_new_tokens=new_tokens,
                    pad_token_id=model.config.eos_token_id,
                )
                elapsed = time.perf_counter() - start
                assert out.shape == (len(prompts), ids.shape[1] + new_tokens), out.shape
                if repetition > 0:
                    seconds.append(elapsed)
            print(json.dumps({"impl": "hf", "threads": torch.get_num_threads(), "batch": len(prompts), "kv_cache": use_cache,
                              "new_tokens": new_tokens, "seconds": seconds}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
