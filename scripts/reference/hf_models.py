"""Hugging Face transformers as the reference for rlhf-lab's architectures (parity tests,
benchmarks): GPT-2 and the Llama family (llama, qwen2, qwen3).

Subcommands (all tensors exchanged as safetensors files, ids as JSON):
  make-model CONFIG_JSON OUT_DIR SEED     random *ForCausalLM of the config's model_type (gpt2
                                          when absent), saved with save_pretrained
  logits MODEL_DIR INPUTS_JSON OUT        logits for {"input_ids", "attention_mask"} (left-padded)
  greedy MODEL_DIR INPUTS_JSON N OUT_JSON greedy generate() of N new tokens, prompts left-padded
  logits-and-greedy MODEL_DIR INPUTS_JSON N OUT OUT_JSON   both, loading the model once
"""
import json
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

torch.set_num_threads(2)


def make_model(config_json, out_dir, seed):
    torch.manual_seed(int(seed))
    settings = json.loads(config_json)
    config = AutoConfig.for_model(settings.pop("model_type", "gpt2"), **settings)
    model = AutoModelForCausalLM.from_config(config).eval()
    # Default init leaves norms at exactly 1 (and 0) and biases at 0; perturb them so that they
    # are tested too.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln_" in name or "norm" in name or name.endswith(".bias"):
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out_dir, safe_serialization=True)


def load(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()


def read_inputs(path):
    with open(path) as f:
        inputs = json.load(f)
    ids = torch.tensor(inputs["input_ids"], dtype=torch.long)
    mask = torch.tensor(inputs["attention_mask"], dtype=torch.long)
    return ids, mask


def logits(model_dir, inputs_path, out_path):
    model = load(model_dir)
    ids, mask = read_inputs(inputs_path)
    # Positions count real tokens only, as generate() does for left-padded prompts.
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    save_file({"logits": out.float().contiguous()}, out_path)


def greedy(model_dir, inputs_path, max_new_tokens, out_path):
    model = load(model_dir)
    ids, mask = read_inputs(inputs_path)
    eos = model.config.eos_token_id
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=int(max_new_tokens),
            eos_token_id=eos,
            pad_token_id=eos[0] if isinstance(eos, list) else eos,
        )
    new_tokens = out[:, ids.shape[1]:].tolist()
    with open(out_path, "w") as f:
        json.dump({"completion_ids": new_tokens}, f)


def logits_and_greedy(model_dir, inputs_path, max_new_tokens, logits_path, greedy_path):
    logits(model_dir, inputs_path, logits_path)
    greedy(model_dir, inputs_path, max_new_tokens, greedy_path)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    commands = {"make-model": make_model, "logits": logits, "greedy": greedy, "logits-and-greedy": logits_and_greedy}
    commands[command](*args)
