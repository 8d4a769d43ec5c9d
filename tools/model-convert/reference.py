#!/usr/bin/env python3
"""Reference outputs for a converted model, computed with Python onnxruntime + tokenizers,
independently of Sting's Rust code. Sting's tests compare against the JSON this writes.

  reference.py chat MODEL_DIR OUT.json [--max-new N]   greedy continuation of a fixed question
  reference.py embed MODEL_DIR OUT.json                embeddings of fixed sentences

`chat` also checks that a left-padded batch of two prompts decodes exactly like each prompt
alone (the attention mask handles padding), and exits non-zero if not.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

QUESTION = "What is the capital of France?"
SENTENCES = ["The capital of France is Paris.", "Bees make honey in the hive.",
             "What is the company vacation policy?"]


def load(model_dir):
    with open(os.path.join(model_dir, "manifest.json")) as f:
        manifest = json.load(f)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), options, providers=["CPUExecutionProvider"])
    return manifest, session, Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))


def render(template, question):
    prompt = ""
    if template.get("default_system"):
        prompt += template["system"].replace("{content}", template["default_system"])
    prompt += template["user"].replace("{content}", question)
    return prompt + template["generation_prompt"]


def greedy(manifest, session, prompts_ids, max_new, eos_ids):
    """Greedy decoding of a left-padded batch with KV cache; returns new ids per row."""
    rows = len(prompts_ids)
    width = max(len(ids) for ids in prompts_ids)
    ids = np.array([[0] * (width - len(p)) + p for p in prompts_ids], dtype=np.int64)
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts_ids], dtype=np.int64)
    positions = np.array([[0] * (width - len(p)) + list(range(len(p))) for p in prompts_ids], dtype=np.int64)
    layers, kv, dim = manifest["num_layers"], manifest["num_kv_heads"], manifest["head_dim"]
    past = {f"past_key_values.{i}.{k}": np.zeros((rows, kv, 0, dim), np.float32)
            for i in range(layers) for k in ("key", "value")}
    output_names = ["logits"] + [f"present.{i}.{k}" for i in range(layers) for k in ("key", "value")]
    generated = [[] for _ in range(rows)]
    done = [False] * rows
    next_positions = np.array([[len(p)] for p in prompts_ids], dtype=np.int64)
    for _ in range(max_new):
        outputs = session.run(output_names, {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past})
        logits = outputs[0][:, -1, :]
        for i, name in enumerate(output_names[1:]):
            past[name.replace("present", "past_key_values")] = outputs[i + 1]
        tokens = logits.argmax(-1)
        for r in range(rows):
            if not done[r]:
                if int(tokens[r]) in eos_ids:
                    done[r] = True
                else:
                    generated[r].append(int(tokens[r]))
        if all(done):
            break
        ids = tokens.reshape(rows, 1).astype(np.int64)
        mask = np.concatenate([mask, np.ones((rows, 1), np.int64)], axis=1)
        positions = next_positions
        next_positions = next_positions + 1
    return generated


def chat(args):
    manifest, session, tokenizer = load(args.model_dir)
    prompt = render(manifest["chat_template"], QUESTION)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    eos_ids = {tokenizer.token_to_id(t) for t in manifest["eos_tokens"]} - {None}
    [generated] = greedy(manifest, session, [prompt_ids], args.max_new, eos_ids)
    text = tokenizer.decode(generated, skip_special_tokens=True)
    other_ids = tokenizer.encode(render(manifest["chat_template"], "Tell me about bees and honey."), add_special_tokens=False).ids
    [other] = greedy(manifest, session, [other_ids], args.max_new, eos_ids)
    batched = greedy(manifest, session, [prompt_ids, other_ids], args.max_new, eos_ids)
    ok = batched == [generated, other]
    print(f"batched (left-padded) == single: {'PASS' if ok else 'FAIL'}")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"question": QUESTION, "prompt": prompt, "prompt_ids": prompt_ids,
                   "generated_ids": generated, "text": text}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{manifest['name']}: {text!r}")
    if not ok:
        sys.exit(1)


def embed(args):
    manifest, session, tokenizer = load(args.model_dir)
    tokenizer.enable_truncation(manifest["context_length"])
    tokenizer.enable_padding()
    encodings = tokenizer.encode_batch(SENTENCES)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask}
    if any(i.name == "token_type_ids" for i in session.get_inputs()):
        feeds["token_type_ids"] = np.zeros_like(ids)
    hidden = session.run(["last_hidden_state"], feeds)[0]
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"sentences": SENTENCES, "embeddings": [[round(float(v), 7) for v in row] for row in pooled]}, f)
        f.write("\n")
    print(f"{manifest['name']}: {len(SENTENCES)} embeddings of dimension {pooled.shape[1]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("chat")
    c.add_argument("model_dir")
    c.add_argument("out")
    c.add_argument("--max-new", type=int, default=24)
    e = sub.add_parser("embed")
    e.add_argument("model_dir")
    e.add_argument("out")
    args = parser.parse_args()
    {"chat": chat, "embed": embed}[args.command](args)


if __name__ == "__main__":
    main()
