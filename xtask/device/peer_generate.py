"""Peer of `cargo xtask bench generate`: HF transformers + bitsandbytes `generate` on the batches
that bench exported (`--export FILE`), on the random GPT-J-6B of peer_hf.py (NF4 + double quant,
bf16 compute), greedy, each batch left-padded with its attention mask, rows stopping at EOS.

    python3 .device/peer_hf.py prepare            # /tmp/gptj-random
    python3 peer_generate.py FILE                 # prints one JSON line

Same batches, same order, same max_new_tokens, same EOS/pad ids as ours. One short batch first
(warm-up), as ours.
"""
import json, sys, time
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig


def main(path):
    spec = json.load(open(path))
    eos, pad, new = spec["eos_token_id"], spec["pad_token_id"], spec["max_new_tokens"]
    t = time.time()
    m = AutoModelForCausalLM.from_pretrained(
        "/tmp/gptj-random", dtype=torch.bfloat16, device_map={"": 0},
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16))
    m.eval()
    load_s = time.time() - t

    def run(batch, k):
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device="cuda")
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device="cuda")
        out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=k, do_sample=False,
                         eos_token_id=eos, pad_token_id=pad)
        gen = out[:, width:].tolist()
        # New tokens of each row up to and including its EOS (as ours counts them).
        return sum(next((i + 1 for i, x in enumerate(r) if x == eos), len(r)) for r in gen)

    with torch.no_grad():
        torch.cuda.synchronize(); t = time.time()
        run(spec["batches"][0], 4)
        torch.cuda.synchronize(); warm_s = time.time() - t
        t = time.time()
        n = sum(run(b, new) for b in spec["batches"])
        torch.cuda.synchronize(); secs = time.time() - t
    print(json.dumps({"peer": "hf+bnb", "bench": "generate", "model": "gptj-6b", "mode": "nf4",
                      "prompts": sum(len(b) for b in spec["batches"]), "batch": len(spec["batches"][0]),
                      "max_new_tokens": new, "new_tokens": n, "load_s": round(load_s, 1),
                      "warmup_s": round(warm_s, 2), "generate_s": round(secs, 3),
                      "new_tok_s": round(n / secs, 1),
                      "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: peer_generate.py BATCHES.json (from `xtask bench generate --export`)")
    main(sys.argv[1])
