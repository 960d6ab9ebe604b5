"""Hugging Face transformers as the reference for rlhf-lab's architectures (parity tests,
benchmarks): GPT-2 and the Llama family (llama, qwen2, qwen3).

Subcommands (all tensors exchanged as safetensors files, ids as JSON):
  make-model CONFIG_JSON OUT_DIR SEED     random *ForCausalLM of the config's model_type (gpt2
                                          when absent), saved with save_pretrained
  logits MODEL_DIR INPUTS_JSON OUT        logits for {"input_ids", "attention_mask"} (left-padded)
  greedy MODEL_DIR INPUTS_JSON N OUT_JSON greedy generate() of N new tokens, prompts left-padded
  logits-and-greedy MODEL_DIR INPUTS_JSON N OUT OUT_JSON   both, loading the model once
  make-classifier CONFIG_JSON OUT_DIR SEED  random *ForSequenceClassification (num_labels = 1)
  scores MODEL_DIR INPUTS_JSON OUT_JSON   AutoModelForSequenceClassification scores per row
  reshard MODEL_DIR OUT_DIR MAX_SHARD_SIZE   save_pretrained again with shards of that size
  chat-template TOKENIZER_JSON SPECIAL_JSON TEMPLATE OUT_DIR WHERE CASES_JSON OUT_JSON
                                          writes a tokenizer directory (save_pretrained) with
                                          added special tokens and the chat template, kept in
                                          chat_template.jinja (WHERE = file) or in
                                          tokenizer_config.json (WHERE = key); loads it back with
                                          AutoTokenizer and writes apply_chat_template's text and
                                          ids for each {"messages", "add_generation_prompt"}
  make-peft BASE_DIR TASK TARGETS R ALPHA SEED OUT_DIR   random LoRA adapter (lora_A and lora_B
                                          both random) on the comma-separated TARGETS of a base
                                          *ForCausalLM (TASK = causal) or *ForSequenceClassification
                                          (TASK = seq-cls), saved with peft's save_pretrained
  peft-logits BASE_DIR ADAPTER_DIR INPUTS_JSON OUT   logits, as logits, of the base + adapter
  peft-scores BASE_DIR ADAPTER_DIR INPUTS_JSON OUT_JSON   scores, as scores, of the base + adapter
  peft-merge BASE_DIR ADAPTER_DIR OUT_DIR   base + adapter merged (merge_and_unload) and saved
                                          with the base's tokenizer files, a complete model
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerFast

# Two threads, as the Rust side uses by default; the benchmarks set BENCH_THREADS to compare others.
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))


def make_model(config_json, out_dir, seed, auto_class=AutoModelForCausalLM):
    torch.manual_seed(int(seed))
    settings = json.loads(config_json)
    config = AutoConfig.for_model(settings.pop("model_type", "gpt2"), **settings)
    model = auto_class.from_config(config).eval()
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


def forward(model, inputs_path):
    """The model's output logits on the inputs' left-padded rows."""
    ids, mask = read_inputs(inputs_path)
    # Positions count real tokens only, as generate() does for left-padded prompts.
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits


def write_logits(model, inputs_path, out_path):
    save_file({"logits": forward(model, inputs_path).float().contiguous()}, out_path)


def write_scores(model, inputs_path, out_path):
    out = forward(model, inputs_path)
    with open(out_path, "w") as f:
        json.dump({"scores": out[:, 0].tolist(), "architectures": model.config.architectures}, f)


def logits(model_dir, inputs_path, out_path):
    write_logits(load(model_dir), inputs_path, out_path)


def greedy(model_dir, inputs_path, max_new_tokens, out_path):
    model = load(model_dir)
    ids, mask = read_inputs(inputs_path)
    # generation_config.json's end tokens (several, for Llama 3), as generate() uses them.
    eos = model.generation_config.eos_token_id
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


def make_classifier(config_json, out_dir, seed):
    settings = json.loads(config_json)
    settings["num_labels"] = 1
    make_model(json.dumps(settings), out_dir, seed, AutoModelForSequenceClassification)


def scores(model_dir, inputs_path, out_path):
    write_scores(AutoModelForSequenceClassification.from_pretrained(model_dir).eval(), inputs_path, out_path)


def reshard(model_dir, out_dir, max_shard_size):
    load(model_dir).save_pretrained(out_dir, max_shard_size=max_shard_size)


def chat_template(tokenizer_json, special_json, template, out_dir, where, cases_path, out_path):
    chat_tokenizer(tokenizer_json, special_json, template, out_dir, where)
    apply_chat_template(out_dir, cases_path, out_path)


def chat_tokenizer(tokenizer_json, special_json, template, out_dir, where):
    special = json.loads(special_json)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=tokenizer_json, **special)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(out_dir)
    if where == "key":
        # Older transformers kept the template in tokenizer_config.json.
        import os
        os.remove(os.path.join(out_dir, "chat_template.jinja"))
        config_path = os.path.join(out_dir, "tokenizer_config.json")
        with open(config_path) as f:
            config = json.load(f)
        config["chat_template"] = template
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2)


def apply_chat_template(tokenizer_dir, cases_path, out_path):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    with open(cases_path) as f:
        cases = json.load(f)
    results = []
    for case in cases:
        text = tokenizer.apply_chat_template(case["messages"], add_generation_prompt=case["add_generation_prompt"], tokenize=False)
        ids = tokenizer.apply_chat_template(case["messages"], add_generation_prompt=case["add_generation_prompt"], tokenize=True, return_dict=False)
        results.append({"text": text, "ids": list(ids)})
    with open(out_path, "w") as f:
        json.dump(results, f)


PEFT_TASKS = {"causal": ("CAUSAL_LM", AutoModelForCausalLM), "seq-cls": ("SEQ_CLS", AutoModelForSequenceClassification)}


def make_peft(base_dir, task, targets, r, alpha, seed, out_dir):
    from peft import LoraConfig, get_peft_model

    task_type, auto_class = PEFT_TASKS[task]
    # A reward model has one label; a causal checkpoint read as a classifier would get two.
    base = auto_class.from_pretrained(base_dir, **({"num_labels": 1} if task == "seq-cls" else {}))
    torch.manual_seed(int(seed))
    config = LoraConfig(
        r=int(r),
        lora_alpha=int(alpha),
        target_modules=targets.split(","),
        lora_dropout=0.0,
        # Not peft's default (B = 0, a no-op adapter): both A and B random, so they are tested.
        init_lora_weights=False,
        # GPT-2's Conv1D keeps its weight as (in, out).
        fan_in_fan_out=base.config.model_type == "gpt2",
        task_type=task_type,
    )
    model = get_peft_model(base, config)
    # A seq-cls adapter saves its own copy of the score head (modules_to_save), equal to the
    # base's until trained; perturb it so that loading it is tested too.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".modules_to_save." in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out_dir)


def load_peft(base_dir, adapter_dir, auto_class=AutoModelForCausalLM):
    from peft import PeftModel

    labels = {"num_labels": 1} if auto_class is AutoModelForSequenceClassification else {}
    base = auto_class.from_pretrained(base_dir, dtype=torch.float32, **labels)
    return PeftModel.from_pretrained(base, adapter_dir).float().eval()


def peft_logits(base_dir, adapter_dir, inputs_path, out_path):
    write_logits(load_peft(base_dir, adapter_dir), inputs_path, out_path)


def peft_scores(base_dir, adapter_dir, inputs_path, out_path):
    write_scores(load_peft(base_dir, adapter_dir, AutoModelForSequenceClassification), inputs_path, out_path)


def peft_merge(base_dir, adapter_dir, out_dir):
    load_peft(base_dir, adapter_dir).merge_and_unload().save_pretrained(out_dir)
    for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"]:
        if os.path.exists(os.path.join(base_dir, name)):
            shutil.copy(os.path.join(base_dir, name), os.path.join(out_dir, name))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    commands = {
        "make-model": make_model,
        "logits": logits,
        "greedy": greedy,
        "logits-and-greedy": logits_and_greedy,
        "make-classifier": make_classifier,
        "scores": scores,
        "reshard": reshard,
        "chat-template": chat_template,
        "make-peft": make_peft,
        "peft-logits": peft_logits,
        "peft-scores": peft_scores,
        "peft-merge": peft_merge,
    }
    commands[command](*args)
