"""Peer of `cargo xtask bench load`: how long HF transformers + bitsandbytes take to load a real
checkpoint folder onto the GPU as 4-bit weights, timed the same way (page cache warmed by one
untimed read of every .safetensors file; CUDA initialized before the clock starts).

    python3 peer_load.py prepare gptj-6b DIR     # random GPTJForCausalLM of the real 6B shape, bf16,
                                                 # built on the GPU, save_pretrained(DIR, max_shard_size="5GB")
    python3 peer_load.py load DIR [REPEAT]       # from_pretrained(DIR, NF4 + double quant, bf16 compute)
    python3 peer_load.py quantized DIR OUT       # the same load, then save_pretrained(OUT): bnb's own
                                                 # serialized 4-bit folder (for qtune to load)
    python3 peer_load.py load-quantized DIR [REPEAT]  # from_pretrained of a 4-bit folder (bnb's or
                                                 # `qtune quantize`'s): its own quantization_config

Prints JSON lines.
"""
import json, os, sys, time
import torch

from peer_common import random_bf16

SHAPES = {
    # EleutherAI/gpt-j-6b config.json (transformers' GPTJConfig field names).
    "gptj-6b": dict(vocab_size=50400, n_positions=2048, n_embd=4096, n_layer=28, n_head=16,
                    rotary_dim=64, n_inner=None, activation_function="gelu_new",
                    layer_norm_epsilon=1e-5, bos_token_id=50256, eos_token_id=50256,
                    tie_word_embeddings=False),
}


def prepare(model, out):
    from transformers import GPTJConfig, GPTJForCausalLM
    cfg = GPTJConfig(**SHAPES[model])
    t = time.time()
    m, n = random_bf16(GPTJForCausalLM, cfg)
    m.config.torch_dtype = torch.bfloat16
    m.save_pretrained(out, max_shard_size="5GB")
    print(json.dumps({"peer": "prepare", "model": model, "dir": out, "params": n,
                      "prepare_s": round(time.time() - t, 1)}), flush=True)


def shards(d):
    files = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".safetensors"))
    if not files:
        sys.exit(f"{d}: no .safetensors files")
    return files


def warm(d):
    """Reads every shard once (untimed for the load), so the page cache holds them."""
    t, n = time.time(), 0
    for f in shards(d):
        with open(f, "rb") as fh:
            while True:
                b = fh.read(64 << 20)
                if not b:
                    break
                n += len(b)
    s = time.time() - t
    print(json.dumps({"peer": "hf+bnb", "phase": "warm_read", "bytes": n, "seconds": round(s, 3),
                      "gb_per_s": round(n / 1e9 / s, 2)}), flush=True)
    return n


def from_pretrained(d, prequantized=False):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    if prequantized:
        return AutoModelForCausalLM.from_pretrained(d, device_map={"": 0})
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                           bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(d, quantization_config=q, dtype=torch.bfloat16,
                                                device_map={"": 0})


def load(d, repeat=3, prequantized=False):
    """Run 0 also pays bitsandbytes' and CUDA's first-use costs; the median is over the others."""
    n = warm(d)
    import transformers  # noqa: F401  (imported before the clock, as a user's script has it)
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    times = []
    for i in range(repeat):
        t = time.time()
        m = from_pretrained(d, prequantized)
        torch.cuda.synchronize()
        s = time.time() - t
        times.append(s)
        print(json.dumps({"peer": "hf+bnb", "phase": "load", "run": i, "seconds": round(s, 3),
                          "gb_per_s": round(n / 1e9 / s, 2),
                          "gpu_gib": round(torch.cuda.memory_allocated() / 2**30, 2)}), flush=True)
        del m
        torch.cuda.empty_cache()
    later = sorted(times[1:] or times)
    print(json.dumps({"peer": "hf+bnb", "phase": "summary", "dir": d, "prequantized": prequantized,
                      "bytes": n, "first_seconds": round(times[0], 3),
                      "median_seconds": round(later[len(later) // 2], 3),
                      "min_seconds": round(min(times), 3)}), flush=True)


def quantized(d, out):
    t = time.time()
    m = from_pretrained(d)
    m.save_pretrained(out)
    print(json.dumps({"peer": "hf+bnb", "phase": "save_quantized", "dir": out,
                      "seconds": round(time.time() - t, 1)}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cmd = sys.argv[1]
    if cmd == "prepare":
        if len(sys.argv) != 4 or sys.argv[2] not in SHAPES:
            sys.exit(f"prepare MODEL DIR: MODEL one of {', '.join(SHAPES)}")
        prepare(sys.argv[2], sys.argv[3])
    elif cmd == "load":
        load(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 3)
    elif cmd == "load-quantized":
        load(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 3, prequantized=True)
    elif cmd == "quantized":
        if len(sys.argv) != 4:
            sys.exit("quantized DIR OUT")
        quantized(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {cmd}: prepare | load | load-quantized | quantized")
