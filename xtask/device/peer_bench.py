"""Peer of `cargo xtask bench train --model llama-7b|llama3-8b`: HF transformers + PEFT +
bitsandbytes LoRA/QLoRA on a random-weight Llama of the real shape (timing does not depend on
weight values), with the recipe of shared/bench/peer_hf.py (the GPT-J peer): batch 8 x 512, LoRA
r16 alpha 32 dropout 0.05, gradient checkpointing, PagedAdamW8bit for quantized bases, 8 timed
steps after 3 warm-up, then prefill 1x512 and greedy decode of 128 tokens at batch 1.

    python3 peer_bench.py prepare MODEL         # writes /tmp/MODEL-random (bf16 safetensors)
    python3 peer_bench.py train MODEL MODE [--batch B] [--seq T] [--optim default|adamw] [--no-infer]
        # MODE: nf4 | nf4-all | int8 | int8-all | bf16 | bf16-all; --optim adamw: torch AdamW
        # (QUALITY.md's recipe) instead of PagedAdamW8bit for quantized bases

Prints JSON lines. The shapes equal xtask/src/bench_train.rs' `llama_config`.
"""
import json, os, sys, time
import torch

from peer_common import random_bf16

SHAPES = {
    "llama-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                     max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                     bos_token_id=1, eos_token_id=2),
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                      bos_token_id=128000, eos_token_id=128001),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
}
MODES = ["nf4", "nf4-all", "int8", "int8-all", "bf16", "bf16-all"]
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def ckpt(model):
    return f"/tmp/{model}-random"


def prepare(model):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**SHAPES[model])
    t = time.time()
    m, n = random_bf16(LlamaForCausalLM, cfg)
    m.save_pretrained(ckpt(model), max_shard_size="5GB")
    print(json.dumps({"model": model, "prepare_s": round(time.time() - t, 1), "params": n}), flush=True)


def load(model, mode):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    kw = dict(dtype=torch.bfloat16, device_map={"": 0})
    if mode.startswith("int8"):
        kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif mode.startswith("nf4"):
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(ckpt(model), **kw)


def train(model, mode, batch=8, seq=512, steps=8, warm=3, optim="default", infer=True):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    import bitsandbytes as bnb
    torch.cuda.reset_peak_memory_stats()
    t = time.time()
    m = load(model, mode)
    load_s = time.time() - t
    weights_gb = torch.cuda.memory_allocated() / 2**30
    if "int8" in mode or "nf4" in mode:
        m = prepare_model_for_kbit_training(m, use_gradient_checkpointing=True)
    else:
        m.gradient_checkpointing_enable()
        m.enable_input_require_grads()
    targets = ALL if mode.endswith("all") else ["q_proj", "v_proj"]
    m = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets,
                                     bias="none", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = (bnb.optim.PagedAdamW8bit(params, lr=2e-4)
           if optim == "default" and mode.startswith(("int8", "nf4"))
           else torch.optim.AdamW(params, lr=2e-4))
    vocab = min(SHAPES[model]["vocab_size"], 50257)
    m.train()
    g = torch.Generator(device="cuda").manual_seed(0)
    times = []
    for i in range(warm + steps):
        ids = torch.randint(0, vocab, (batch, seq), device="cuda", generator=g)
        torch.cuda.synchronize(); t0 = time.time()
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= warm:
            times.append(time.time() - t0)
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({"peer": "hf+peft+bnb", "model": model, "mode": mode, "optim": type(opt).__name__,
                      "batch": batch, "seq": seq,
                      "load_s": round(load_s, 1), "weights_gib": round(weights_gb, 2), "trainable": trainable,
                      "step_s_median": round(med, 3), "tokens_per_s": round(batch * seq / med),
                      "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                      "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
                      "loss": float(loss)}), flush=True)
    if not infer:
        return
    m.eval()
    with torch.no_grad():
        ids = torch.randint(0, vocab, (1, 512), device="cuda", generator=g)
        for _ in range(2):
            m(input_ids=ids)
        torch.cuda.synchronize(); t0 = time.time()
        for _ in range(5):
            m(input_ids=ids)
        torch.cuda.synchronize(); pre = (time.time() - t0) / 5
        ids = ids[:, :32]
        m.generate(input_ids=ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        torch.cuda.synchronize(); t0 = time.time()
        m.generate(input_ids=ids, max_new_tokens=128, min_new_tokens=128, do_sample=False)
        torch.cuda.synchronize(); dec = time.time() - t0
    print(json.dumps({"peer": "hf+peft+bnb", "model": model, "mode": mode, "prefill512_tok_s": round(512 / pre),
                      "decode_tok_s_b1": round(128 / dec, 1)}), flush=True)


if __name__ == "__main__":
    cmd, model = sys.argv[1], sys.argv[2]
    if model not in SHAPES:
        sys.exit(f"unknown model {model}: use one of {', '.join(SHAPES)}")
    if cmd == "prepare":
        prepare(model)
    elif cmd == "train":
        if len(sys.argv) < 4 or sys.argv[3] not in MODES:
            sys.exit(f"train {model} MODE: use one of {', '.join(MODES)}")
        import argparse
        ap = argparse.ArgumentParser(prog=f"peer_bench.py train {model} {sys.argv[3]}")
        ap.add_argument("--batch", type=int, default=8)
        ap.add_argument("--seq", type=int, default=512)
        ap.add_argument("--optim", choices=["default", "adamw"], default="default")
        ap.add_argument("--no-infer", action="store_true")
        a = ap.parse_args(sys.argv[4:])
        train(model, sys.argv[3], batch=a.batch, seq=a.seq, optim=a.optim, infer=not a.no_infer)
    else:
        sys.exit(f"unknown command {cmd}: prepare | train")
