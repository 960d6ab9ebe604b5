"""The inputs both TRL PPO benchmarks read: the prompts and the model directory's tokenizer
(end-of-text as eos and pad, left padding for generation)."""
import json

from transformers import PreTrainedTokenizerFast


def prompts_and_tokenizer(model_dir, prompts_path):
    with open(prompts_path) as f:
        prompts = json.load(f)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=f"{model_dir}/tokenizer.json",
                                        eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.padding_side = "left"
    return prompts, tokenizer
