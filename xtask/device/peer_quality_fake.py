"""Writes a tiny fake qtune export DIR for smoke-testing peer_quality.py (tokenized with the GGUF's tokenizer).

    python3 peer_quality_fake.py --gguf MODEL.gguf --task squad_v2|hate_speech --out DIR
"""
import argparse, json, os, random

from transformers import AutoTokenizer

SQUAD = [  # (context, question, answers); [] = impossible
    ("Paris is the capital of France. The Eiffel Tower was finished in 1889.", "When was the Eiffel Tower finished?", ["1889"]),
    ("Paris is the capital of France. The Eiffel Tower was finished in 1889.", "What is the capital of Germany?", []),
    ("The Nile is a river in Africa. It flows north into the Mediterranean Sea.", "Which sea does the Nile flow into?", ["the Mediterranean Sea", "Mediterranean Sea"]),
    ("The Nile is a river in Africa. It flows north into the Mediterranean Sea.", "Who discovered the Nile?", []),
    ("Denver Broncos won Super Bowl 50 against the Carolina Panthers.", "Who won Super Bowl 50?", ["Denver Broncos"]),
    ("Water boils at 100 degrees Celsius at sea level.", "At what temperature does water boil at sea level?", ["100 degrees Celsius"]),
]
HATE = [("I love this sunny day with my friends", 2), ("you are a stupid idiot", 1), ("go back to your country, you vermin", 0),
        ("what a great game last night", 2), ("shut up you dumb clown", 1), ("those people are animals and should die", 0)]
NAMES = ["hate speech", "offensive language", "neither"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--task", default="squad_v2")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(a.gguf)), gguf_file=os.path.basename(a.gguf))
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), 0

    def chat(user):
        return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)

    if a.task == "squad_v2":
        items = [(chat(f"Context: {c}\nQuestion: {q}\nAnswer with a span of the context, or 'unanswerable'."),
                  ans[0] if ans else "unanswerable", {"answers": ans}) for c, q, ans in SQUAD]
    else:
        items = [(chat(f"Classify the tweet as hate speech, offensive language or neither.\nTweet: {t}"), NAMES[c], {"class": c})
                 for t, c in HATE]
    os.makedirs(a.out, exist_ok=True)
    train, evals = [], []
    for i, (prompt, target, gold) in enumerate(items):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        t = tok(target, add_special_tokens=False)["input_ids"] + [eos]
        train.append({"input_ids": p + t, "labels": [-100] * len(p) + t})
        evals.append({"id": f"q{i}", "prompt_ids": p, **gold})
    for name, rows in [("train", train), ("validation", train[:3]), ("eval", evals)]:
        with open(os.path.join(a.out, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    meta = {"task": a.task, "eos_id": eos, "pad_id": pad, "max_new_tokens": 8, "eval_batch_size": 3,
            "no_answer_text": "unanswerable", "class_names": NAMES,
            "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
            "quant": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True, "load_in_8bit": False},
            "training": {"learning_rate": 2e-4, "max_steps": a.steps, "per_device_train_batch_size": a.batch,
                         "warmup_steps": 1, "lr_scheduler_type": "cosine", "min_lr_ratio": 0.1, "max_grad_norm": 1.0,
                         "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "logging_steps": 1},
            "schedule_formula": "lr * step / warmup_steps if step < warmup_steps else lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (max_steps - warmup_steps))))",
            "seeds": [0, 1]}
    json.dump(meta, open(os.path.join(a.out, "meta.json"), "w"), indent=1)
    for s in meta["seeds"]:
        r = random.Random(s)
        json.dump({"steps": [r.sample(range(len(train)), a.batch) for _ in range(a.steps)]},
                  open(os.path.join(a.out, f"order_seed{s}.json"), "w"))
    print(json.dumps({"out": a.out, "train": len(train), "eval": len(evals), "eos": eos, "pad": pad}))


if __name__ == "__main__":
    main()
