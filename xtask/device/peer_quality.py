"""Python peer of qtune's real-weight fine-tuning quality runs: HF transformers + PEFT + bitsandbytes.

qtune exports a task's tokenized data (DIR, format below); this script trains on exactly the same
examples in the same order with the same hyperparameters, evaluates before and after, and writes
one JSON report. Run on the GPU machine (no network):

    PYTHONPATH=$PWD/.device/site python3 peer_quality.py --data DIR --gguf MODEL.gguf --out OUT.json \
        [--steps N] [--seeds 0,1,2] [--eval-only]
    python3 peer_quality.py --data DIR --hf-model HF_FOLDER --out OUT.json --train-only --steps N   # speed only

Testing flags (CPU, no bitsandbytes): --device cpu --no-quant (fp32 weights), --max-eval N.
`--selftest` checks the scoring functions and exits nonzero on failure.

DIR (written by qtune):
- meta.json: {"task": "squad_v2"|"hate_speech", "eos_id", "pad_id", "max_new_tokens", "eval_batch_size",
  "no_answer_text" (squad), "class_names" (hate), "lora": {"r", "lora_alpha", "lora_dropout",
  "target_modules"}, "quant": {"load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
  "load_in_8bit"} or null (bf16), "training": {"learning_rate", "max_steps",
  "per_device_train_batch_size", "warmup_steps", "lr_scheduler_type", "min_lr_ratio", "max_grad_norm",
  "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "logging_steps"}, "schedule_formula",
  "seeds"}
- train.jsonl / validation.jsonl: {"input_ids": [...], "labels": [...]} per line; labels are aligned with
  input_ids (HF convention: the model shifts them), -100 on prompt tokens; eos appended, truncated.
- eval.jsonl: {"id", "prompt_ids", "answers": [str]} (squad; [] = impossible) or {"id", "prompt_ids",
  "class": int} (hate speech).
- order_seed{S}.json: {"steps": [[idx, ...], ...]}: the train.jsonl indices of each optimizer step's batch.

Learning-rate schedule: the lr used by optimizer step k (0-based) is lr * f(k). If meta's
`schedule_formula` is a Python expression in `step, lr, warmup_steps, max_steps, min_lr_ratio` (and
`math`, `min`, `max`), it is evaluated and used as the lr itself; otherwise (prose, or absent) the
built-in HF formulas below are used (`get_linear_schedule_with_warmup`,
`get_cosine_with_min_lr_schedule_with_warmup`). The report says which (`schedule_source`) and lists
every step's lr, so it can be diffed against qtune's.
"""
import argparse, collections, gc, json, math, os, re, statistics, string, sys, time

import torch


def log(obj):
    print(json.dumps(obj), flush=True)


# ---------------------------------------------------------------------------------------------------
# SQuAD v2.0 scoring: the functions of the official evaluation script "evaluate-v2.0.py"
# (https://rajpurkar.github.io/SQuAD-explorer/, "Evaluation Script v2.0"), copied verbatim;
# get_raw_scores is adapted from nested articles to a flat list of (qid, gold answers).
# ---------------------------------------------------------------------------------------------------
def normalize_answer(s):
  """Lower text and remove punctuation, articles and extra whitespace."""
  def remove_articles(text):
    regex = re.compile(r'\b(a|an|the)\b', re.UNICODE)
    return re.sub(regex, ' ', text)
  def white_space_fix(text):
    return ' '.join(text.split())
  def remove_punc(text):
    exclude = set(string.punctuation)
    return ''.join(ch for ch in text if ch not in exclude)
  def lower(text):
    return text.lower()
  return white_space_fix(remove_articles(remove_punc(lower(s))))

def get_tokens(s):
  if not s: return []
  return normalize_answer(s).split()

def compute_exact(a_gold, a_pred):
  return int(normalize_answer(a_gold) == normalize_answer(a_pred))

def compute_f1(a_gold, a_pred):
  gold_toks = get_tokens(a_gold)
  pred_toks = get_tokens(a_pred)
  common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
  num_same = sum(common.values())
  if len(gold_toks) == 0 or len(pred_toks) == 0:
    # If either is no-answer, then F1 is 1 if they agree, 0 otherwise
    return int(gold_toks == pred_toks)
  if num_same == 0:
    return 0
  precision = 1.0 * num_same / len(pred_toks)
  recall = 1.0 * num_same / len(gold_toks)
  f1 = (2 * precision * recall) / (precision + recall)
  return f1

def get_raw_scores(examples, preds):
  """examples: [(qid, [gold answer texts])]; adapted from the official nested-article loop."""
  exact_scores = {}
  f1_scores = {}
  for qid, answers in examples:
    gold_answers = [a for a in answers if normalize_answer(a)]
    if not gold_answers:
      # For unanswerable questions, only correct answer is empty string
      gold_answers = ['']
    if qid not in preds:
      print('Missing prediction for %s' % qid)
      continue
    a_pred = preds[qid]
    # Take max over all gold answers
    exact_scores[qid] = max(compute_exact(a, a_pred) for a in gold_answers)
    f1_scores[qid] = max(compute_f1(a, a_pred) for a in gold_answers)
  return exact_scores, f1_scores

def make_eval_dict(exact_scores, f1_scores, qid_list=None):
  if not qid_list:
    total = len(exact_scores)
    return collections.OrderedDict([
        ('exact', 100.0 * sum(exact_scores.values()) / total),
        ('f1', 100.0 * sum(f1_scores.values()) / total),
        ('total', total),
    ])
  else:
    total = len(qid_list)
    return collections.OrderedDict([
        ('exact', 100.0 * sum(exact_scores[k] for k in qid_list) / total),
        ('f1', 100.0 * sum(f1_scores[k] for k in qid_list) / total),
        ('total', total),
    ])

def merge_eval(main_eval, new_eval, prefix):
  for k in new_eval:
    main_eval['%s_%s' % (prefix, k)] = new_eval[k]
# ----------------------------------- end of the official SQuAD v2.0 code ---------------------------


def squad_prediction(text, no_answer_text):
    """A generated text as a SQuAD prediction, as qtune's `answer_from_generation`: up to the first
    newline or <|endoftext|>, stripped; the no-answer target string (after normalize_answer) means
    the empty answer."""
    ends = [i for i in (text.find("\n"), text.find("<|endoftext|>")) if i >= 0]
    t = text[:min(ends)] if ends else text
    t = t.strip()
    return "" if normalize_answer(t) == normalize_answer(no_answer_text) else t


def squad_metrics(examples, preds):
    """Official v2.0 main metrics (no na_probs file: na_prob_thresh 1.0 changes nothing)."""
    exact_raw, f1_raw = get_raw_scores(examples, preds)
    has_ans = [qid for qid, a in examples if a]  # official: qid_to_has_ans = bool(qa['answers'])
    no_ans = [qid for qid, a in examples if not a]
    out = make_eval_dict(exact_raw, f1_raw)
    if has_ans:
        merge_eval(out, make_eval_dict(exact_raw, f1_raw, qid_list=has_ans), 'HasAns')
    if no_ans:
        merge_eval(out, make_eval_dict(exact_raw, f1_raw, qid_list=no_ans), 'NoAns')
    out["predicted_no_answer"] = sum(1 for qid, _ in examples if preds.get(qid) == "")
    return dict(out)


def hate_class(text, class_names):
    """As qtune's `label_from_generation`: the first class name the lowercased, whitespace-collapsed
    prediction starts with, followed by the end or a non-alphanumeric character; else -1 (invalid)."""
    t = " ".join(text.lower().split())
    for i, name in enumerate(class_names):
        name = name.lower()
        if t.startswith(name) and not (len(t) > len(name) and t[len(name)].isalnum()):
            return i
    return -1


def hate_metrics(golds, preds, class_names):
    """golds, preds: class indices (pred -1 = invalid). Confusion rows gold, cols predicted + invalid."""
    k = len(class_names)
    conf = [[0] * (k + 1) for _ in range(k)]
    for g, p in zip(golds, preds):
        conf[g][p if p >= 0 else k] += 1
    n = len(golds)
    per_class = {}
    f1s = []
    for c, name in enumerate(class_names):
        tp = conf[c][c]
        pred_c = sum(conf[g][c] for g in range(k))
        gold_c = sum(conf[c])
        prec = tp / pred_c if pred_c else 0.0
        rec = tp / gold_c if gold_c else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[name] = {"precision": prec, "recall": rec, "f1": f1, "support": gold_c}
        f1s.append(f1)
    return {"accuracy": 100.0 * sum(conf[c][c] for c in range(k)) / n, "macro_f1": 100.0 * sum(f1s) / k,
            "per_class": per_class, "confusion": conf, "confusion_cols": list(class_names) + ["invalid"],
            "invalid": sum(conf[g][k] for g in range(k)), "total": n}


def selftest():
    fails = []
    def check(name, got, want):
        ok = abs(got - want) < 1e-9 if isinstance(want, float) else got == want
        if not ok:
            fails.append(f"{name}: got {got!r}, want {want!r}")
    check("normalize", normalize_answer("The  Eiffel-Tower, a landmark!"), "eiffeltower landmark")
    check("exact articles/punct", compute_exact("the Eiffel Tower", "Eiffel tower."), 1)
    check("exact differs", compute_exact("Paris", "London"), 0)
    check("f1 partial", compute_f1("Eiffel Tower in Paris", "the Eiffel Tower"), 2 * (1.0 * 2 / 4) / (1 + 2 / 4))
    check("f1 zero", compute_f1("Paris", "London"), 0)
    check("f1 both empty", compute_f1("", ""), 1)
    check("f1 gold empty, pred not", compute_f1("", "Paris"), 0)
    check("f1 pred empty, gold not", compute_f1("Paris", ""), 0)
    check("f1 pred only articles", compute_f1("", "the"), 1)  # normalizes to no tokens = no-answer
    check("no-answer text", squad_prediction("  unanswerable \n", "unanswerable"), "")
    check("no-answer empty", squad_prediction("   ", ""), "")
    check("answer kept", squad_prediction(" 1867 ", "unanswerable"), "1867")
    ex = [("q1", ["Denver Broncos", "the Broncos"]), ("q2", []), ("q3", ["1867"]), ("q4", [])]
    preds = {"q1": "Broncos", "q2": "", "q3": "in 1867", "q4": "Paris"}
    m = squad_metrics(ex, preds)
    # q1: exact 1 ("the Broncos" -> "broncos"), f1 1; q2: 1/1; q3: exact 0, f1 2/3; q4: 0/0
    check("squad exact", m["exact"], 50.0)
    check("squad f1", m["f1"], 100.0 * (1 + 1 + 2 / 3 + 0) / 4)
    check("squad HasAns_exact", m["HasAns_exact"], 50.0)
    check("squad HasAns_f1", m["HasAns_f1"], 100.0 * (1 + 2 / 3) / 2)
    check("squad NoAns_exact", m["NoAns_exact"], 50.0)
    check("squad NoAns_total", m["NoAns_total"], 2)
    names = ["hate speech", "offensive language", "neither"]
    check("hate parse", hate_class("  Offensive language.", names), 1)
    check("hate parse 2", hate_class("neither\n", names), 2)
    check("hate invalid", hate_class("offensive", names), -1)
    check("hate invalid empty", hate_class("", names), -1)
    hm = hate_metrics([0, 1, 1, 2, 2], [0, 1, -1, 1, 2], names)
    check("hate accuracy", hm["accuracy"], 60.0)
    check("hate confusion", hm["confusion"], [[1, 0, 0, 0], [0, 1, 0, 1], [0, 1, 1, 0]])
    # f1: class0 1.0; class1 p=1/2 r=1/2 -> 0.5; class2 p=1 r=1/2 -> 2/3
    check("hate macro_f1", hm["macro_f1"], 100.0 * (1 + 0.5 + 2 / 3) / 3)
    check("hate invalid count", hm["invalid"], 1)
    f = schedule_fn({"lr_scheduler_type": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.1, "learning_rate": 1.0}, None, 10)[0]
    check("cosine warmup 0", f(0), 0.0)
    check("cosine warmup 1", f(1), 0.5)
    check("cosine start", f(2), 1.0)
    check("cosine mid", f(6), 0.1 + 0.9 * 0.5)
    g = schedule_fn({"lr_scheduler_type": "linear", "warmup_steps": 0, "min_lr_ratio": 0.0, "learning_rate": 2.0},
                    "lr * (max_steps - step) / max_steps", 4)
    check("formula source", g[1], "formula")
    check("formula value", g[0](1), 1.5)
    for line in fails:
        print("FAIL " + line)
    print(json.dumps({"selftest": "fail" if fails else "ok", "failures": len(fails)}))
    return 1 if fails else 0


# ---------------------------------------------------------------------------------------------------
def schedule_fn(tr, formula, total_steps):
    """(lr_of_step, source): the lr used by optimizer step k (0-based) of `total_steps`."""
    lr, warm = float(tr["learning_rate"]), int(tr.get("warmup_steps", 0) or 0)
    kind = tr.get("lr_scheduler_type", "linear")
    min_ratio = float(tr.get("min_lr_ratio", 0.0) or 0.0)

    def builtin(k):  # HF transformers optimization.py, same arithmetic
        if k < warm:
            return lr * k / max(1, warm)
        progress = (k - warm) / max(1, total_steps - warm)
        if kind == "linear":
            return lr * max(0.0, (total_steps - k) / max(1, total_steps - warm))
        if kind in ("cosine", "cosine_with_min_lr"):
            factor = 0.5 * (1.0 + math.cos(math.pi * 2.0 * 0.5 * progress))
            return lr * max(0.0, factor * (1 - min_ratio) + min_ratio)
        if kind == "constant":
            return lr
        raise ValueError(f"lr_scheduler_type {kind!r} not supported")

    if formula:
        try:
            code = compile(formula, "schedule_formula", "eval")
            env = {"__builtins__": {}, "math": math, "min": min, "max": max, "lr": lr, "warmup_steps": warm,
                   "max_steps": total_steps, "min_lr_ratio": min_ratio}
            fn = lambda k: float(eval(code, dict(env, step=k)))
            fn(0)
            return fn, "formula"
        except Exception:
            pass
    return builtin, f"builtin:{kind}"


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def versions():
    from importlib import metadata
    v = {"python": sys.version.split()[0], "cuda": torch.version.cuda}
    for p in ["torch", "transformers", "peft", "accelerate", "bitsandbytes", "gguf", "tokenizers"]:
        try:
            v[p] = metadata.version(p)
        except Exception:
            v[p] = None
    if torch.cuda.is_available():
        v["gpu"] = torch.cuda.get_device_name(0)
    return v


def quant_config(q, compute_dtype):
    from transformers import BitsAndBytesConfig
    if not q:
        return None
    if q.get("load_in_8bit"):
        return BitsAndBytesConfig(load_in_8bit=True)
    if q.get("load_in_4bit"):
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.get("bnb_4bit_quant_type", "nf4"),
                                  bnb_4bit_use_double_quant=bool(q.get("bnb_4bit_use_double_quant", False)),
                                  bnb_4bit_compute_dtype=compute_dtype)
    return None


def load_model(folder, quant, dtype, device):
    from transformers import AutoModelForCausalLM
    kw = dict(dtype=dtype)
    qc = quant_config(quant, dtype)
    if qc is not None:
        kw["quantization_config"] = qc
    if device == "cuda":
        kw["device_map"] = {"": 0}
    m = AutoModelForCausalLM.from_pretrained(folder, **kw)
    if device != "cuda":
        m = m.to(device)
    return m


def gguf_name(path):
    """The GGUF's `general.name` metadata, or None."""
    try:
        import gguf
        f = gguf.GGUFReader(path).fields.get("general.name")
        return bytes(f.parts[f.data[0]]).decode() if f else None
    except Exception:
        return None


def load_gguf_plain(gdir, gname, dtype):
    """The GGUF dequantized to an ordinary `dtype` model that save_pretrained accepts.

    Older transformers dequantize GGUF on load and return a plain model. Newer ones (a GgufHfQuantizer,
    seen in 5.25) may keep the blocks packed and mark the model quantized, which save_pretrained
    refuses: ask for dequantization and, once every weight is a plain tensor, drop the marker."""
    from transformers import AutoModelForCausalLM
    kw = dict(gguf_file=gname, dtype=dtype)
    try:
        import inspect
        from transformers import GgufConfig
        if "dequantize" in inspect.signature(GgufConfig.__init__).parameters:
            kw["quantization_config"] = GgufConfig(gguf_file=gname, dequantize=True)
    except ImportError:
        pass
    m = AutoModelForCausalLM.from_pretrained(gdir, **kw)
    bad = [n for n, p in m.named_parameters() if p.dtype != dtype]
    if bad:
        raise SystemExit(f"GGUF not fully dequantized to {dtype}: {bad[:5]}")
    if getattr(m, "hf_quantizer", None) is not None:
        m.hf_quantizer = None
        if hasattr(m.config, "quantization_config"):
            delattr(m.config, "quantization_config")
    return m


def pad_right(seqs, pad, device):
    n = max(len(s) for s in seqs)
    return torch.tensor([s + [pad] * (n - len(s)) for s in seqs], dtype=torch.long, device=device)


def collate_train(examples, pad_id):
    ids = pad_right([e["input_ids"] for e in examples], pad_id, "cpu")
    labels = pad_right([e["labels"] for e in examples], -100, "cpu")
    mask = pad_right([[1] * len(e["input_ids"]) for e in examples], 0, "cpu")
    return ids, mask, labels


@torch.no_grad()
def generate_all(model, tok, eval_rows, meta, device):
    """Greedy, left-padded batches of eval_batch_size in file order; returns [(text, new ids)]."""
    eos, pad, bs = meta["eos_id"], meta["pad_id"], int(meta.get("eval_batch_size", 16))
    model.eval()
    out = []
    for i in range(0, len(eval_rows), bs):
        prompts = [r["prompt_ids"] for r in eval_rows[i:i + bs]]
        n = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (n - len(p)) + p for p in prompts], dtype=torch.long, device=device)
        mask = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=int(meta["max_new_tokens"]),
                             do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
                             eos_token_id=eos, pad_token_id=pad, use_cache=True)
        for row in gen[:, n:].tolist():
            if eos in row:
                row = row[:row.index(eos)]
            out.append((tok.decode(row, skip_special_tokens=True).strip(), row))
    return out


@torch.no_grad()
def validation_loss(model, rows, meta, device):
    """Mean next-token cross entropy over all target tokens of validation.jsonl (micro-average)."""
    model.eval()
    bs, total, count = int(meta.get("eval_batch_size", 16)), 0.0, 0
    for i in range(0, len(rows), bs):
        ids, mask, labels = (t.to(device) for t in collate_train(rows[i:i + bs], meta["pad_id"]))
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        tgt = labels[:, 1:]
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                                   ignore_index=-100, reduction="sum").item()
        count += int((tgt != -100).sum())
    return total / max(1, count)


def evaluate(model, tok, eval_rows, val_rows, meta, device):
    t0 = time.time()
    gens = generate_all(model, tok, eval_rows, meta, device)
    if meta["task"] == "squad_v2":
        nat = meta.get("no_answer_text", "")
        preds = {r["id"]: squad_prediction(text, nat) for r, (text, _) in zip(eval_rows, gens)}
        metrics = squad_metrics([(r["id"], r["answers"]) for r in eval_rows], preds)
    elif meta["task"] == "hate_speech":
        names = meta["class_names"]
        metrics = hate_metrics([r["class"] for r in eval_rows], [hate_class(t, names) for t, _ in gens], names)
    else:
        raise ValueError(f"unknown task {meta['task']!r}")
    metrics["eval_seconds"] = round(time.time() - t0, 2)
    if val_rows:
        metrics["val_loss"] = validation_loss(model, val_rows, meta, device)
    preds = {r["id"]: {"text": t, "ids": ids} for r, (t, ids) in zip(eval_rows, gens)}
    return metrics, preds


def headline(task):
    return ["exact", "f1", "HasAns_f1", "NoAns_exact"] if task == "squad_v2" else ["accuracy", "macro_f1"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="folder written by qtune (meta.json, train.jsonl, eval.jsonl, order_seed*.json)")
    ap.add_argument("--gguf", help="the model's .gguf file (transformers dequantizes it)")
    ap.add_argument("--out", help="report JSON; predictions go to OUT with .predictions.json")
    ap.add_argument("--steps", type=int, help="optimizer steps (default meta training.max_steps)")
    ap.add_argument("--seeds", help="comma-separated seeds (default meta seeds)")
    ap.add_argument("--eval-only", action="store_true", help="zero-shot evaluation only")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: fp32 weights (testing)")
    ap.add_argument("--no-quant", action="store_true", help="ignore meta quant: plain bf16 (fp32 on cpu) LoRA")
    ap.add_argument("--max-eval", type=int, help="evaluate only the first N eval prompts (testing)")
    ap.add_argument("--no-val-loss", action="store_true", help="skip validation.jsonl loss")
    ap.add_argument("--model-dir", default="/tmp/peer-model-bf16", help="where the dequantized model is saved")
    ap.add_argument("--tokenizer", help="tokenizer folder for decoding (default: the GGUF's tokenizer)")
    ap.add_argument("--hf-model", help="an HF model folder instead of --gguf (e.g. peer_load.py's random GPT-J-6B)")
    ap.add_argument("--train-only", action="store_true",
                    help="no zero-shot, no evaluation: train and report speed and memory (throughput runs)")
    ap.add_argument("--selftest", action="store_true", help="check the scoring functions and exit")
    args = ap.parse_args()
    if args.selftest:
        sys.exit(selftest())
    if not (args.data and args.out and (args.gguf or args.hf_model)):
        ap.error("--data, --out and one of --gguf / --hf-model are required")
    if args.gguf and args.hf_model:
        ap.error("--gguf and --hf-model exclude each other")

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    meta = json.load(open(os.path.join(args.data, "meta.json")))
    task, tr = meta["task"], meta["training"]
    quant = None if args.no_quant else meta.get("quant")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [int(s) for s in meta.get("seeds", [0])]
    steps = args.steps or int(tr["max_steps"])
    train_rows = read_jsonl(os.path.join(args.data, "train.jsonl"))
    eval_rows = read_jsonl(os.path.join(args.data, "eval.jsonl"))[:args.max_eval]
    vpath = os.path.join(args.data, "validation.jsonl")
    val_rows = read_jsonl(vpath) if os.path.exists(vpath) and not args.no_val_loss else []
    for e in train_rows[:50] + val_rows[:50]:
        assert len(e["input_ids"]) == len(e["labels"]), "labels must be aligned with input_ids"

    # 1. dequantize the GGUF once, save it as an ordinary HF folder (or use the given folder)
    t0 = time.time()
    if args.hf_model:
        from transformers import AutoConfig
        args.model_dir, gname, model_name = args.hf_model, None, os.path.basename(os.path.normpath(args.hf_model))
        arch, n_params = AutoConfig.from_pretrained(args.hf_model).architectures, None
        tok = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else None
    else:
        gdir, gname = os.path.dirname(os.path.abspath(args.gguf)), os.path.basename(args.gguf)
        base = load_gguf_plain(gdir, gname, dtype)
        base.save_pretrained(args.model_dir)
        model_name = gguf_name(args.gguf) or gname
        n_params = sum(p.numel() for p in base.parameters())
        arch = base.config.architectures
        del base
        gc.collect()
        tok = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else \
            AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    if tok is None and not args.train_only:
        ap.error("--hf-model without --tokenizer needs --train-only (evaluation decodes text)")
    report = {"model": {"gguf": gname, "hf_model": args.hf_model, "name": model_name, "architectures": arch,
                        "params": n_params},
              "versions": versions(), "task": task, "device": device, "dtype": str(dtype).replace("torch.", ""),
              "quant": quant, "lora": meta["lora"], "training": dict(tr, steps=steps),
              "schedule_formula": meta.get("schedule_formula"), "eval_prompts": len(eval_rows),
              "validation_examples": len(val_rows), "zero_shot": None, "runs": [], "summary": None}
    log({"stage": "load", "seconds": round(time.time() - t0, 1), "model": report["model"], "versions": report["versions"]})

    stem = args.out[:-5] if args.out.endswith(".json") else args.out
    all_preds = {}

    def save():
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        with open(stem + ".predictions.json", "w") as f:
            json.dump(all_preds, f)

    # 2. zero-shot: the base model as loaded for training (quantized), no adapter
    if not args.train_only:
        m = load_model(args.model_dir, quant, dtype, device)
        metrics, all_preds["zero_shot"] = evaluate(m, tok, eval_rows, val_rows, meta, device)
        report["zero_shot"] = metrics
        log({"stage": "zero_shot", "metrics": metrics})
        save()
        del m
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    if args.eval_only:
        return

    # 3. fine-tune per seed
    lr_of, sched_src = schedule_fn(tr, meta.get("schedule_formula"), steps)
    lrs = [lr_of(k) for k in range(steps)]
    report["schedule_source"] = sched_src
    report["lrs"] = lrs
    log_every = max(1, int(tr.get("logging_steps", 10) or 10))
    bsz = int(tr.get("per_device_train_batch_size", 0) or 0)
    for seed in seeds:
        order = json.load(open(os.path.join(args.data, f"order_seed{seed}.json")))["steps"]
        if len(order) < steps:
            raise SystemExit(f"order_seed{seed}.json has {len(order)} steps, {steps} asked")
        batches = [collate_train([train_rows[i] for i in order[k]], meta["pad_id"]) for k in range(steps)]
        if bsz and any(len(order[k]) != bsz for k in range(steps)):
            log({"stage": "warning", "seed": seed, "msg": "a step's batch size differs from per_device_train_batch_size"})
        real_tokens = sum(int(b[1].sum()) for b in batches)
        target_tokens = sum(int((b[2][:, 1:] != -100).sum()) for b in batches)

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        m = load_model(args.model_dir, quant, dtype, device)
        n_quant = sum(1 for x in m.modules() if type(x).__name__ in ("Linear4bit", "Linear8bitLt"))
        if quant:
            m = prepare_model_for_kbit_training(m, use_gradient_checkpointing=True)
        else:
            m.gradient_checkpointing_enable()
            m.enable_input_require_grads()
        lc = meta["lora"]
        torch.manual_seed(seed)  # LoRA A init and dropout masks depend on the seed alone
        m = get_peft_model(m, LoraConfig(r=int(lc["r"]), lora_alpha=lc["lora_alpha"], lora_dropout=float(lc.get("lora_dropout", 0.0)),
                                         target_modules=lc["target_modules"], bias="none", task_type="CAUSAL_LM"))
        params = [p for p in m.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in params)
        opt = torch.optim.AdamW(params, lr=lrs[0], betas=(float(tr["adam_beta1"]), float(tr["adam_beta2"])),
                                eps=float(tr["adam_epsilon"]), weight_decay=float(tr["weight_decay"]))
        clip = float(tr.get("max_grad_norm", 0) or 0)
        weights_gib = torch.cuda.memory_allocated() / 2**30 if device == "cuda" else None
        m.train()
        losses, norms = [], []
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        sync()
        t_start = time.time()
        t_first = None
        for k in range(steps):
            ids, mask, labels = (t.to(device, non_blocking=True) for t in batches[k])
            for g in opt.param_groups:
                g["lr"] = lrs[k]
            loss = m(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            norms.append(torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0 else
                         torch.nn.utils.clip_grad_norm_(params, float("inf")))
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            if k == 0:
                sync()
                t_first = time.time()
            if (k + 1) % log_every == 0 or k + 1 == steps:
                window = torch.stack(losses[-log_every:]).float().mean().item()
                log({"stage": "train", "seed": seed, "step": k + 1, "loss": window, "lr": lrs[k],
                     "grad_norm": float(norms[-1]), "elapsed_s": round(time.time() - t_start, 1)})
        sync()
        secs = time.time() - t_start
        losses = [float(x) for x in losses]
        norms = [float(x) for x in norms]
        first_tokens = int(batches[0][1].sum())
        run = {"seed": seed, "steps": steps, "trainable_params": trainable, "quantized_linears": n_quant, "losses": losses, "grad_norms": norms,
               "train_seconds": round(secs, 3), "real_tokens": real_tokens, "target_tokens": target_tokens,
               "tokens_per_s": round(real_tokens / secs, 1),
               "tokens_per_s_after_first": round((real_tokens - first_tokens) / (t_start + secs - t_first), 1) if steps > 1 else None,
               "weights_gib": round(weights_gib, 3) if weights_gib is not None else None,
               "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if device == "cuda" else None,
               "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3) if device == "cuda" else None}
        log({"stage": "trained", **{k: v for k, v in run.items() if k not in ("losses", "grad_norms")},
             "final_loss": losses[-1]})
        if args.train_only:
            run["metrics"] = {}
        else:
            run["metrics"], all_preds[f"seed{seed}"] = evaluate(m, tok, eval_rows, val_rows, meta, device)
            log({"stage": "eval", "seed": seed, "metrics": run["metrics"]})
        report["runs"].append(run)
        save()
        del m, opt, params
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()

    # 5. summary over seeds: mean and sample std (n-1; 0 for one seed)
    summary = {}
    for key in headline(task) + ["val_loss"]:
        vals = [r["metrics"][key] for r in report["runs"] if key in r["metrics"]]
        if vals:
            summary[key] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                            "n": len(vals), "values": vals, "zero_shot": (report["zero_shot"] or {}).get(key)}
    summary["tokens_per_s"] = {"mean": statistics.fmean(r["tokens_per_s"] for r in report["runs"])}
    report["summary"] = summary
    save()
    log({"stage": "summary", "summary": summary})


if __name__ == "__main__":
    main()
