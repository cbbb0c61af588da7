"""Builds the two example files of "Your own data" from the SQuAD 2.0 dev set (CC BY-SA 4.0).

    python3 datasets/examples/make.py [PATH/TO/dev-v2.0.json]

Default input: ../shared/datasets/squad-v2/dev-v2.0.json (the project's data mirror). Only
answerable questions are used; each record keeps the one context sentence that holds the first
gold answer (sentences split on ". "), so the records stay short. Deterministic: articles in
file order from the last one backwards, at most 3 questions a paragraph.
- squad_completion.jsonl: 240 records {"prompt", "completion"}:
  prompt "Context: {sentence}\\nQuestion: {question}\\nAnswer:", completion " {answer}".
- squad_chat.jsonl: 200 records {"messages": [...]} (OpenAI roles): a system turn, then one
  user/assistant exchange, or two (a second question on the same paragraph) for odd-numbered
  records when the paragraph has a question left.
"""
import json, os, sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = os.path.join(HERE, "../../../shared/datasets/squad-v2/dev-v2.0.json")
SYSTEM = "Answer the question with a short span copied from the context."


def sentence_with(context, start, end):
    lo = context.rfind(". ", 0, start)
    lo = 0 if lo < 0 else lo + 2
    hi = context.find(". ", end)
    hi = len(context) if hi < 0 else hi + 1
    return context[lo:hi].strip()


def items(path):
    data = json.load(open(path, encoding="utf-8"))["data"]
    for art in reversed(data):
        for para in art["paragraphs"]:
            ctx = para["context"]
            n = 0
            for qa in para["qas"]:
                if qa.get("is_impossible") or not qa["answers"] or n >= 3:
                    continue
                a = qa["answers"][0]
                s, t = a["answer_start"], a["answer_start"] + len(a["text"])
                if ctx[s:t] != a["text"]:
                    continue
                sent = sentence_with(ctx, s, t)
                if len(sent) > 400 or a["text"] not in sent:
                    continue
                n += 1
                yield para, sent, qa["question"].strip(), a["text"].strip()


def main(path):
    all_items = list(items(path))
    comp = all_items[:240]
    with open(os.path.join(HERE, "squad_completion.jsonl"), "w", encoding="utf-8") as f:
        for _, sent, q, a in comp:
            rec = {"prompt": f"Context: {sent}\nQuestion: {q}\nAnswer:", "completion": f" {a}"}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    groups = []  # the remaining items, by paragraph
    for it in all_items[240:]:
        if groups and groups[-1][0][0] is it[0]:
            groups[-1].append(it)
        else:
            groups.append([it])
    chats = []
    for g in groups:
        while g and len(chats) < 200:
            _, sent, q, a = g.pop(0)
            msgs = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Context: {sent}\nQuestion: {q}"},
                    {"role": "assistant", "content": a}]
            if len(chats) % 2 == 1 and g:
                _, sent2, q2, a2 = g.pop(0)
                msgs += [{"role": "user", "content": f"Context: {sent2}\nQuestion: {q2}"},
                         {"role": "assistant", "content": a2}]
            chats.append({"messages": msgs})
    with open(os.path.join(HERE, "squad_chat.jsonl"), "w", encoding="utf-8") as f:
        for c in chats:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")
    print(json.dumps({"completion": len(comp), "chat": len(chats),
                      "two_exchanges": sum(len(c["messages"]) == 5 for c in chats)}))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else DEFAULT)
