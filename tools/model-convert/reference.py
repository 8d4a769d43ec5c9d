#!/usr/bin/env python3
"""Reference outputs for a converted model, computed with Python onnxruntime + tokenizers,
independently of Sting's Rust code. Sting's tests compare against the JSON this writes.

  reference.py chat MODEL_DIR OUT.json [--max-new N]
      Greedy continuation (batch 1, KV cache) of a fixed question under the manifest's chat
      template -> {"question", "prompt", "prompt_ids", "generated_ids", "text",
      "first_step_logits_top5"}. Also checks that the tokenizer round-trips text, and that a
      left-padded batch of two prompts decodes exactly like each prompt alone (PASS/FAIL;
      exits non-zero on FAIL).
  reference.py embed MODEL_DIR OUT.json
      Mean-pooled, L2-normalised embeddings of fixed sentences -> {"sentences", "embeddings"}.

Independent checks of a conversion against the source weights, in float64 numpy (no ONNX):
  reference.py check-llama MODEL_DIR GGUF [--new N]
      Logits of the prompt and of N greedy tokens decoded through the KV cache, against a numpy
      Llama on the raw GGUF tensors using llama.cpp's own (interleaved) rotary layout, so the
      converter's Q/K un-permutation is tested, not assumed.
  reference.py check-bert MODEL_DIR SOURCE_DIR
      Embeddings (also from a padded batch) against a numpy BERT on model.safetensors;
      PASS when every cosine is >= 0.9999.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

QUESTION = "What is the capital of France?"
# Longer than QUESTION, so that the batched check really left-pads QUESTION's row.
OTHER_QUESTION = "Tell me about bees and honey, and how the workers in a hive share their jobs."
SENTENCES = ["The capital of France is Paris.", "Bees make honey in the hive.",
             "What is the company vacation policy?"]
ROUND_TRIP = ["Hello, world!", "The year 2024 had 366 days; π ≈ 3.14159.", "  spaces\tand\nnewlines  ",
              "Émoji 🐝 and 日本語", "<|im_start|>user\nhi<|im_end|>\n"]


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


def empty_cache(manifest, rows):
    layers, kv, dim = manifest["num_layers"], manifest["num_kv_heads"], manifest["head_dim"]
    return {f"past_key_values.{i}.{k}": np.zeros((rows, kv, 0, dim), np.float32)
            for i in range(layers) for k in ("key", "value")}


def greedy(manifest, session, prompts_ids, max_new, eos_ids):
    """Greedy decoding of a left-padded batch with KV cache.
    Returns (new ids per row, last-position logits of the first step [rows, vocab])."""
    rows = len(prompts_ids)
    width = max(len(ids) for ids in prompts_ids)
    ids = np.array([[0] * (width - len(p)) + p for p in prompts_ids], dtype=np.int64)
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts_ids], dtype=np.int64)
    # Each row counts positions from its first real token; pads get 0 (they are masked anyway).
    positions = np.array([[0] * (width - len(p)) + list(range(len(p))) for p in prompts_ids], dtype=np.int64)
    past = empty_cache(manifest, rows)
    output_names = ["logits"] + [name.replace("past_key_values", "present") for name in past]
    generated = [[] for _ in range(rows)]
    done = [False] * rows
    next_positions = np.array([[len(p)] for p in prompts_ids], dtype=np.int64)
    first_logits = None
    for _ in range(max_new):
        outputs = session.run(output_names, {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past})
        logits = outputs[0][:, -1, :]
        if first_logits is None:
            first_logits = logits.copy()
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
    return generated, first_logits


def check_round_trip(tokenizer):
    bad = [t for t in ROUND_TRIP if tokenizer.decode(tokenizer.encode(t, add_special_tokens=False).ids,
                                                     skip_special_tokens=False) != t]
    print(f"tokenizer round-trip of {len(ROUND_TRIP)} texts: {'PASS' if not bad else 'FAIL ' + repr(bad)}")
    return not bad


def chat(args):
    manifest, session, tokenizer = load(args.model_dir)
    ok = check_round_trip(tokenizer)
    prompt = render(manifest["chat_template"], QUESTION)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    eos_ids = {tokenizer.token_to_id(t) for t in manifest["eos_tokens"]} - {None}
    [generated], first = greedy(manifest, session, [prompt_ids], args.max_new, eos_ids)
    text = tokenizer.decode(generated, skip_special_tokens=True)
    top5 = np.argsort(-first[0], kind="stable")[:5]

    other_ids = tokenizer.encode(render(manifest["chat_template"], OTHER_QUESTION), add_special_tokens=False).ids
    assert len(other_ids) > len(prompt_ids), "the batched check needs prompts of different lengths"
    [other], other_first = greedy(manifest, session, [other_ids], args.max_new, eos_ids)
    batched, batched_first = greedy(manifest, session, [prompt_ids, other_ids], args.max_new, eos_ids)
    drift = float(np.abs(batched_first - np.concatenate([first, other_first])).max())
    same = batched == [generated, other]
    ok &= same
    print(f"batched (row 0 left-padded by {len(other_ids) - len(prompt_ids)}) == single: "
          f"{'PASS' if same else 'FAIL'} (first-step logits differ by at most {drift:.2e})")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"question": QUESTION, "prompt": prompt, "prompt_ids": prompt_ids,
                   "generated_ids": generated, "text": text,
                   "first_step_logits_top5": [[int(i), round(float(first[0, i]), 4)] for i in top5]},
                  f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{manifest['name']}: {text!r}")
    if not ok:
        sys.exit(1)


def embed_onnx(manifest, session, tokenizer, sentences):
    tokenizer.enable_truncation(manifest["context_length"])
    tokenizer.enable_padding()
    encodings = tokenizer.encode_batch(sentences)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask}
    if any(i.name == "token_type_ids" for i in session.get_inputs()):
        feeds["token_type_ids"] = np.zeros_like(ids)
    hidden = session.run(["last_hidden_state"], feeds)[0]
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def embed(args):
    manifest, session, tokenizer = load(args.model_dir)
    pooled = embed_onnx(manifest, session, tokenizer, SENTENCES)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"sentences": SENTENCES, "embeddings": [[round(float(v), 7) for v in row] for row in pooled]}, f)
        f.write("\n")
    print(f"{manifest['name']}: {len(SENTENCES)} embeddings of dimension {pooled.shape[1]}")


# ---------------------------------------------------------------------------------------------
# Independent numpy implementations (float64), straight from the source weights.

def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def llama_numpy(gguf_path, ids):
    """Logits [len(ids), vocab] of a Llama GGUF, computed as llama.cpp does: Q/K weights as
    stored (permuted) and rotary on adjacent pairs (x[2j], x[2j+1])."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(gguf_path)
    meta = lambda key, default=None: reader.fields[key].contents() if key in reader.fields else default
    tensors = {t.name: t for t in reader.tensors}

    def load(name):
        t = tensors[name]
        return dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)]).astype(np.float64)

    hidden, heads = int(meta("llama.embedding_length")), int(meta("llama.attention.head_count"))
    kv_heads = int(meta("llama.attention.head_count_kv", heads))
    D, eps = hidden // heads, float(meta("llama.attention.layer_norm_rms_epsilon"))
    theta = float(meta("llama.rope.freq_base", 10000.0))
    S = len(ids)
    angles = np.arange(S)[:, None] * theta ** (-np.arange(0, D, 2) / D)[None, :]  # [S, D/2]
    cos, sin = np.cos(angles), np.sin(angles)

    def rope_adjacent_pairs(t):  # [n, S, D]
        a, b = t[..., 0::2], t[..., 1::2]
        out = np.empty_like(t)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
        return out

    embed = load("token_embd.weight")
    x = embed[ids]
    causal = np.where(np.tril(np.ones((S, S), bool)), 0.0, -np.inf)
    for i in range(int(meta("llama.block_count"))):
        b = f"blk.{i}."
        h = rms_norm(x, load(b + "attn_norm.weight"), eps)
        q = (h @ load(b + "attn_q.weight").T).reshape(S, heads, D).transpose(1, 0, 2)
        k = (h @ load(b + "attn_k.weight").T).reshape(S, kv_heads, D).transpose(1, 0, 2)
        v = (h @ load(b + "attn_v.weight").T).reshape(S, kv_heads, D).transpose(1, 0, 2)
        q, k = rope_adjacent_pairs(q), rope_adjacent_pairs(k)
        k, v = np.repeat(k, heads // kv_heads, axis=0), np.repeat(v, heads // kv_heads, axis=0)
        attn = softmax(q @ k.transpose(0, 2, 1) / np.sqrt(D) + causal) @ v
        x = x + attn.transpose(1, 0, 2).reshape(S, heads * D) @ load(b + "attn_output.weight").T
        h = rms_norm(x, load(b + "ffn_norm.weight"), eps)
        gate, up = h @ load(b + "ffn_gate.weight").T, h @ load(b + "ffn_up.weight").T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ load(b + "ffn_down.weight").T
    x = rms_norm(x, load("output_norm.weight"), eps)
    head = load("output.weight") if "output.weight" in tensors else embed
    return x @ head.T


def check_llama(args):
    manifest, session, tokenizer = load(args.model_dir)
    prompt_ids = tokenizer.encode(render(manifest["chat_template"], QUESTION), add_special_tokens=False).ids
    # ONNX: prefill in two chunks (the second one attends to a cache, as a chunked prefill
    # does), then one token at a time through the KV cache.
    past = empty_cache(manifest, 1)
    names = ["logits"] + [n.replace("past_key_values", "present") for n in past]
    ids, rows, done = [], [], 0
    half = len(prompt_ids) // 2
    steps = [prompt_ids[:half], prompt_ids[half:]] + [None] * args.new
    for step in steps:
        if step is None:  # the greedy choice after the previous step
            step = [int(rows[-1][-1].argmax())]
        ids += step
        outputs = session.run(names, {"input_ids": np.array([step], np.int64),
                                      "attention_mask": np.ones((1, len(ids)), np.int64),
                                      "position_ids": np.arange(done, len(ids), dtype=np.int64)[None], **past})
        past = {n.replace("present", "past_key_values"): o for n, o in zip(names[1:], outputs[1:])}
        rows.append(outputs[0][0])
        done = len(ids)
    onnx_logits = np.concatenate(rows)
    ref = llama_numpy(args.gguf, ids)
    diff = np.abs(onnx_logits - ref).max()
    scale = np.abs(ref).max()
    same_argmax = (onnx_logits.argmax(-1) == ref.argmax(-1)).mean()
    ok = diff / scale < 1e-3 and same_argmax == 1.0
    print(f"ONNX vs numpy llama.cpp-layout reference over {len(ids)} positions (prefill in 2 chunks, "
          f"{args.new} single steps): "
          f"max |diff| {diff:.2e} (logits up to {scale:.1f}), argmax agreement {same_argmax:.0%}: "
          f"{'PASS' if ok else 'FAIL'}")
    if not ok:
        sys.exit(1)


def bert_numpy(source_dir, ids, mask):
    """last_hidden_state of a BERT from model.safetensors + config.json, in float64."""
    from math import erf, sqrt

    from safetensors.numpy import load_file

    with open(os.path.join(source_dir, "config.json")) as f:
        config = json.load(f)
    t = {k.removeprefix("bert."): v.astype(np.float64) for k, v in
         load_file(os.path.join(source_dir, "model.safetensors")).items()}
    eps, H, Hh = config.get("layer_norm_eps", 1e-12), config["hidden_size"], config["num_attention_heads"]
    D = H // Hh
    verf = np.vectorize(erf)

    def layer_norm(x, prefix):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * t[prefix + ".weight"] + t[prefix + ".bias"]

    def linear(x, prefix):
        return x @ t[prefix + ".weight"].T + t[prefix + ".bias"]

    B, S = ids.shape
    x = t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][:S] \
        + t["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, "embeddings.LayerNorm")
    bias = np.where(mask[:, None, None, :] == 1, 0.0, -np.inf)
    for i in range(config["num_hidden_layers"]):
        b = f"encoder.layer.{i}."
        split = lambda y: y.reshape(B, S, Hh, D).transpose(0, 2, 1, 3)
        q, k, v = (split(linear(x, b + "attention.self." + n)) for n in ("query", "key", "value"))
        attn = (softmax(q @ k.transpose(0, 1, 3, 2) / sqrt(D) + bias) @ v).transpose(0, 2, 1, 3).reshape(B, S, H)
        x = layer_norm(x + linear(attn, b + "attention.output.dense"), b + "attention.output.LayerNorm")
        inner = linear(x, b + "intermediate.dense")
        x = layer_norm(x + linear(0.5 * inner * (1 + verf(inner / sqrt(2))), b + "output.dense"), b + "output.LayerNorm")
    return x


def check_bert(args):
    manifest, session, tokenizer = load(args.model_dir)
    sentences = SENTENCES + ["A much longer sentence, so that the others in its batch are padded: "
                             "bees visit flowers, gather nectar, and make honey in the hive."]
    onnx_embeddings = embed_onnx(manifest, session, tokenizer, sentences)  # one padded batch
    tokenizer.no_padding()
    cosines, worst = [], 0.0
    for sentence, got in zip(sentences, onnx_embeddings):
        e = tokenizer.encode(sentence)  # alone: no padding at all
        ids, mask = np.array([e.ids]), np.array([e.attention_mask])
        hidden = bert_numpy(args.source_dir, ids, mask)[0]
        ref = hidden.mean(0)
        cosines.append(float(ref @ got / np.linalg.norm(ref) / np.linalg.norm(got)))
        worst = max(worst, float(np.abs(ref / np.linalg.norm(ref) - got / np.linalg.norm(got)).max()))
    ok = min(cosines) >= 0.9999
    print(f"ONNX (padded batch) vs numpy BERT (unpadded), {len(cosines)} sentences: min cosine "
          f"1 - {1 - min(cosines):.1e}, max |diff| of unit vectors {worst:.1e}: {'PASS' if ok else 'FAIL'}")
    if not ok:
        sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = sub.add_parser("chat", help="greedy reference continuation + batched-vs-single check")
    c.add_argument("model_dir")
    c.add_argument("out")
    c.add_argument("--max-new", type=int, default=24, help="most new tokens (default: %(default)s)")
    e = sub.add_parser("embed", help="reference embeddings of fixed sentences")
    e.add_argument("model_dir")
    e.add_argument("out")
    cl = sub.add_parser("check-llama", help="converted decoder vs numpy on the raw GGUF weights")
    cl.add_argument("model_dir")
    cl.add_argument("gguf")
    cl.add_argument("--new", type=int, default=8, help="greedy tokens decoded through the cache (default: %(default)s)")
    cb = sub.add_parser("check-bert", help="converted encoder vs numpy on model.safetensors")
    cb.add_argument("model_dir")
    cb.add_argument("source_dir", help="directory with model.safetensors and config.json")
    args = parser.parse_args()
    {"chat": chat, "embed": embed, "check-llama": check_llama, "check-bert": check_bert}[args.command](args)


if __name__ == "__main__":
    main()
