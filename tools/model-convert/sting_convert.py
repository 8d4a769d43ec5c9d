#!/usr/bin/env python3
"""Sting's model converter: builds ONNX graphs directly from weights, without torch.

Subcommands:
  llama-gguf GGUF OUT_DIR          Llama-family GGUF (e.g. SmolLM2) -> decoder with KV cache
  bert-safetensors DIR OUT_DIR     BERT sentence encoder (e.g. all-MiniLM-L6-v2)
  fixture-llama OUT_DIR            tiny random Llama with the same I/O (for tests)
  fixture-bert OUT_DIR             tiny random BERT with the same I/O (for tests)

Each writes OUT_DIR/model.onnx, OUT_DIR/tokenizer.json and OUT_DIR/manifest.json (the schema is
in README.md). The fixtures go through the same graph builders as the real models, and are
deterministic: the same command writes the same bytes.
"""

import argparse
import json
import os
import re
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
CONVERTER_VERSION = 1
NEG_INF = -1e9  # additive mask value; large enough for softmax, safe in fp32


class Graph:
    """A small builder over onnx.helper: unique names, initializers, constants."""

    def __init__(self):
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.counter = 0

    def name(self, hint):
        self.counter += 1
        return f"{hint}_{self.counter}"

    def op(self, op_type, inputs, hint=None, **attrs):
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def op_named(self, op_type, inputs, out, **attrs):
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def weight(self, name, array, dtype=np.float32):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype), name))
        return name

    def const(self, values, dtype=np.int64):
        return self.weight(self.name("const"), np.array(values, dtype=dtype), dtype)

    def model(self, producer):
        graph = helper.make_graph(self.nodes, "sting", self.inputs, self.outputs, self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer
        )
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def rms_norm(g, x, weight, eps):
    squared = g.op("Mul", [x, x])
    mean = g.op("ReduceMean", [squared], axes=[-1], keepdims=1)
    denom = g.op("Sqrt", [g.op("Add", [mean, g.const([eps], np.float32)])])
    return g.op("Mul", [g.op("Div", [x, denom]), weight])


def rotate_half(g, x, half):
    """[x1, x2] -> [-x2, x1] on the last axis (the rotary layout of Hugging Face Llama)."""
    x1 = g.op("Slice", [x, g.const([0]), g.const([half]), g.const([-1])])
    x2 = g.op("Slice", [x, g.const([half]), g.const([2 * half]), g.const([-1])])
    return g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)


def build_llama(p, w):
    """Decoder graph. `p`: shape parameters; `w`: weights as numpy, projections [in, out].

    Inputs: input_ids, attention_mask [B, past+S], position_ids, past_key_values.{i}.key|value
    [B, kv_heads, past, head_dim]. Outputs: logits [B, S, vocab], present.{i}.key|value.
    """
    g = Graph()
    H, L, Hq, Hkv, D, V = p["hidden"], p["layers"], p["heads"], p["kv_heads"], p["head_dim"], p["vocab"]
    rep = Hq // Hkv
    g.inputs += [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
    ]
    for i in range(L):
        for kind in ("key", "value"):
            g.inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{i}.{kind}", TensorProto.FLOAT, ["batch", Hkv, "past", D]))
    g.outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", V]))
    for i in range(L):
        for kind in ("key", "value"):
            g.outputs.append(helper.make_tensor_value_info(
                f"present.{i}.{kind}", TensorProto.FLOAT, ["batch", Hkv, "total", D]))

    embed = g.weight("embed_tokens", w["embed"])
    x = g.op("Gather", [embed, "input_ids"], axis=0)

    # Rotary tables from the position ids: [B, 1, S, D].
    inv_freq = 1.0 / (p["rope_theta"] ** (np.arange(0, D, 2, dtype=np.float64) / D))
    positions = g.op("Unsqueeze", [g.op("Cast", ["position_ids"], to=TensorProto.FLOAT), g.const([-1])])
    freqs = g.op("Mul", [positions, g.weight("inv_freq", inv_freq.astype(np.float32))])
    angles = g.op("Unsqueeze", [g.op("Concat", [freqs, freqs], axis=-1), g.const([1])])
    cos, sin = g.op("Cos", [angles]), g.op("Sin", [angles])

    # Additive mask [B, 1, S, T]: query q (absolute position past+q) sees key k iff k <= past+q
    # and attention_mask[b, k] == 1. This also handles left padding inside a batch.
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const(1)], axis=0)
    total = g.op("Gather", [g.op("Shape", ["attention_mask"]), g.const(1)], axis=0)
    past = g.op("Sub", [total, seq_len])
    k_idx = g.op("Range", [g.const(0), total, g.const(1)])
    q_idx = g.op("Add", [g.op("Range", [g.const(0), seq_len, g.const(1)]), past])
    causal = g.op("LessOrEqual", [g.op("Unsqueeze", [k_idx, g.const([0])]), g.op("Unsqueeze", [q_idx, g.const([1])])])
    padding = g.op("Equal", ["attention_mask", g.const(1)])
    padding = g.op("Unsqueeze", [padding, g.const([1, 2])])
    allowed = g.op("And", [g.op("Unsqueeze", [causal, g.const([0, 1])]), padding])
    bias = g.op("Where", [allowed, g.const(0.0, np.float32), g.const(NEG_INF, np.float32)])
    scale = g.const(1.0 / np.sqrt(D), np.float32)

    def heads(t, n):  # [B, S, n*D] -> [B, n, S, D]
        return g.op("Transpose", [g.op("Reshape", [t, g.const([0, 0, n, D])])], perm=[0, 2, 1, 3])

    def rope(t):
        return g.op("Add", [g.op("Mul", [t, cos]), g.op("Mul", [rotate_half(g, t, D // 2), sin])])

    def repeat_kv(t):  # [B, Hkv, T, D] -> [B, Hq, T, D], each kv head serving `rep` query heads
        if rep == 1:
            return t
        t5 = g.op("Unsqueeze", [t, g.const([2])])
        return g.op("Reshape", [g.op("Concat", [t5] * rep, axis=2), g.const([0, Hq, -1, D])])

    for i in range(L):
        lw = w["layers"][i]
        h = rms_norm(g, x, g.weight(f"l{i}.attn_norm", lw["attn_norm"]), p["eps"])
        q = rope(heads(g.op("MatMul", [h, g.weight(f"l{i}.q", lw["q"])]), Hq))
        k = rope(heads(g.op("MatMul", [h, g.weight(f"l{i}.k", lw["k"])]), Hkv))
        v = heads(g.op("MatMul", [h, g.weight(f"l{i}.v", lw["v"])]), Hkv)
        k_all = g.op_named("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
        v_all = g.op_named("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
        scores = g.op("MatMul", [q, g.op("Transpose", [repeat_kv(k_all)], perm=[0, 1, 3, 2])])
        scores = g.op("Add", [g.op("Mul", [scores, scale]), bias])
        attn = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), repeat_kv(v_all)])
        attn = g.op("Reshape", [g.op("Transpose", [attn], perm=[0, 2, 1, 3]), g.const([0, 0, Hq * D])])
        x = g.op("Add", [x, g.op("MatMul", [attn, g.weight(f"l{i}.o", lw["o"])])])
        h = rms_norm(g, x, g.weight(f"l{i}.ffn_norm", lw["ffn_norm"]), p["eps"])
        gate = g.op("MatMul", [h, g.weight(f"l{i}.gate", lw["gate"])])
        up = g.op("MatMul", [h, g.weight(f"l{i}.up", lw["up"])])
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
        x = g.op("Add", [x, g.op("MatMul", [act, g.weight(f"l{i}.down", lw["down"])])])

    x = rms_norm(g, x, g.weight("final_norm", w["final_norm"]), p["eps"])
    if w.get("lm_head") is None:
        # Tied embeddings: the head reuses the one stored embedding matrix.
        g.op_named("MatMul", [x, g.op("Transpose", [embed], perm=[1, 0])], "logits")
    else:
        g.op_named("MatMul", [x, g.weight("lm_head", w["lm_head"])], "logits")
    return g.model("sting-convert llama")


def build_bert(p, w):
    """Encoder graph: input_ids, attention_mask, token_type_ids [B, S] -> last_hidden_state."""
    g = Graph()
    H, Hh, L = p["hidden"], p["heads"], p["layers"]
    D = H // Hh
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        g.inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"]))
    g.outputs.append(helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", H]))
    eps = p["eps"]

    def layer_norm(t, prefix):
        return g.op("LayerNormalization", [t, g.weight(prefix + ".w", w[prefix + ".w"]), g.weight(prefix + ".b", w[prefix + ".b"])], axis=-1, epsilon=eps)

    def linear(t, prefix):
        return g.op("Add", [g.op("MatMul", [t, g.weight(prefix + ".w", w[prefix + ".w"])]), g.weight(prefix + ".b", w[prefix + ".b"])])

    # Position embeddings as the first S rows of the table (a Slice, not a Gather of a Range:
    # ONNX Runtime's embedding fusion mis-rewrites the latter pattern).
    seq_len = g.op("Shape", ["input_ids"], start=1, end=2)
    position = g.op("Slice", [g.weight("position", w["position"]), g.const([0]), seq_len, g.const([0])])
    x = g.op("Add", [g.op("Gather", [g.weight("word", w["word"]), "input_ids"], axis=0), position])
    x = g.op("Add", [x, g.op("Gather", [g.weight("token_type", w["token_type"]), "token_type_ids"], axis=0)])
    x = layer_norm(x, "embed_norm")
    mask = g.op("Cast", [g.op("Unsqueeze", ["attention_mask", g.const([1, 2])])], to=TensorProto.FLOAT)
    bias = g.op("Mul", [g.op("Sub", [g.const(1.0, np.float32), mask]), g.const(NEG_INF, np.float32)])
    scale = g.const(1.0 / np.sqrt(D), np.float32)

    def heads(t):
        return g.op("Transpose", [g.op("Reshape", [t, g.const([0, 0, Hh, D])])], perm=[0, 2, 1, 3])

    for i in range(L):
        q, k, v = (heads(linear(x, f"l{i}.{n}")) for n in ("q", "k", "v"))
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]), scale]), bias])
        attn = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        attn = g.op("Reshape", [g.op("Transpose", [attn], perm=[0, 2, 1, 3]), g.const([0, 0, H])])
        x = layer_norm(g.op("Add", [x, linear(attn, f"l{i}.attn_out")]), f"l{i}.attn_norm")
        inner = linear(x, f"l{i}.ffn_in")
        gelu = g.op("Mul", [g.op("Mul", [inner, g.const(0.5, np.float32)]),
                            g.op("Add", [g.const(1.0, np.float32), g.op("Erf", [g.op("Div", [inner, g.const(np.sqrt(2.0), np.float32)])])])])
        x = layer_norm(g.op("Add", [x, linear(gelu, f"l{i}.ffn_out")]), f"l{i}.ffn_norm")
    g.op_named("Identity", [x], "last_hidden_state")
    return g.model("sting-convert bert")


# ---------------------------------------------------------------------------------------------
# Tokenizers (Hugging Face tokenizers' JSON format)

def byte_level_alphabet():
    """GPT-2's printable stand-ins for the 256 byte values, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def byte_level_bpe(tokens, merges, specials, split_digits):
    added = [{"id": tokens.index(s), "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s in specials]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    pre = byte_level
    if split_digits:
        pre = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": pre, "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }


def word_piece(vocab):
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ids = {t: i for i, t in enumerate(vocab)}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": ids[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for s in specials],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {s: {"id": s, "ids": [ids[s]], "tokens": [s]} for s in ("[CLS]", "[SEP]")},
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": ids},
    }


CHATML = {
    "system": "<|im_start|>system\n{content}<|im_end|>\n",
    "user": "<|im_start|>user\n{content}<|im_end|>\n",
    "assistant": "<|im_start|>assistant\n{content}<|im_end|>\n",
    "generation_prompt": "<|im_start|>assistant\n",
}


def write(out_dir, model, tokenizer, manifest):
    os.makedirs(out_dir, exist_ok=True)
    onnx.save(model, os.path.join(out_dir, "model.onnx"))
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False, indent=None, separators=(",", ":"))
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print(f"wrote {out_dir}: model.onnx {os.path.getsize(os.path.join(out_dir, 'model.onnx')) / 1e6:.1f} MB")


def chat_manifest(name, display, description, params, p, eos, default_system, source):
    return {
        "name": name, "display_name": display, "description": description, "kind": "chat",
        "family": "llama", "parameters": params, "context_length": p["context"], "vocab_size": p["vocab"],
        "num_layers": p["layers"], "num_kv_heads": p["kv_heads"], "head_dim": p["head_dim"],
        "hidden_size": p["hidden"], "eos_tokens": eos, "bos_token": None,
        "chat_template": dict(CHATML, default_system=default_system),
        "source": source, "converter_version": CONVERTER_VERSION,
    }


# ---------------------------------------------------------------------------------------------
# Real models

def gguf_value(reader, key, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def unpermute(weight, n_heads):
    """Undoes llama.cpp's Q/K row permutation (interleaved rotary pairs) back to the
    rotate-half layout: rows (head, pair, 2) -> (head, 2, pair)."""
    out, inp = weight.shape
    return weight.reshape(n_heads, out // n_heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def convert_llama_gguf(args):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(args.gguf)
    arch = gguf_value(reader, "general.architecture")
    if arch != "llama":
        sys.exit(f"unsupported architecture {arch!r} (llama only)")
    hidden = int(gguf_value(reader, "llama.embedding_length"))
    heads = int(gguf_value(reader, "llama.attention.head_count"))
    p = {
        "hidden": hidden, "layers": int(gguf_value(reader, "llama.block_count")), "heads": heads,
        "kv_heads": int(gguf_value(reader, "llama.attention.head_count_kv", heads)),
        "head_dim": hidden // heads,
        "rope_theta": float(gguf_value(reader, "llama.rope.freq_base", 10000.0)),
        "eps": float(gguf_value(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "context": int(gguf_value(reader, "llama.context_length")),
    }
    tensors = {}
    for t in reader.tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float32)
        tensors[t.name] = data.reshape([int(d) for d in reversed(t.shape)]) if data.ndim == 1 and len(t.shape) > 1 else data
    p["vocab"] = tensors["token_embd.weight"].shape[0]
    T = lambda m: np.ascontiguousarray(m.T)  # [out, in] -> [in, out]
    w = {"embed": tensors["token_embd.weight"], "final_norm": tensors["output_norm.weight"],
         "lm_head": T(tensors["output.weight"]) if "output.weight" in tensors else None, "layers": []}
    for i in range(p["layers"]):
        b = f"blk.{i}."
        w["layers"].append({
            "attn_norm": tensors[b + "attn_norm.weight"], "ffn_norm": tensors[b + "ffn_norm.weight"],
            "q": T(unpermute(tensors[b + "attn_q.weight"], p["heads"])),
            "k": T(unpermute(tensors[b + "attn_k.weight"], p["kv_heads"])),
            "v": T(tensors[b + "attn_v.weight"]), "o": T(tensors[b + "attn_output.weight"]),
            "gate": T(tensors[b + "ffn_gate.weight"]), "up": T(tensors[b + "ffn_up.weight"]),
            "down": T(tensors[b + "ffn_down.weight"]),
        })
    tokens = list(gguf_value(reader, "tokenizer.ggml.tokens"))
    merges = list(gguf_value(reader, "tokenizer.ggml.merges", []))
    types = list(gguf_value(reader, "tokenizer.ggml.token_type", []))
    specials = [t for t, kind in zip(tokens, types) if kind == 3]  # 3 = control token
    pre = gguf_value(reader, "tokenizer.ggml.pre", "default")
    tokenizer = byte_level_bpe(tokens, merges, specials, split_digits=pre in ("smollm", "default"))
    template = gguf_value(reader, "tokenizer.chat_template", "") or ""
    if "<|im_start|>" not in template:
        sys.exit("only ChatML chat templates are supported; write the manifest's chat_template by hand")
    match = re.search(r"<\|im_start\|>system\s*(.*?)<\|im_end\|>", template)
    default_system = match.group(1) if match else None
    eos = [tokens[int(gguf_value(reader, "tokenizer.ggml.eos_token_id"))]]
    eos += [t for t in ("<|im_end|>", "<|endoftext|>") if t in tokens and t not in eos]
    name = args.name or "smollm2-135m-instruct"
    manifest = chat_manifest(
        name, args.display_name or "SmolLM2 135M Instruct",
        "Hugging Face's SmolLM2-135M-Instruct: a small, fast chat model", "135M", p, eos, default_system,
        {"file": os.path.basename(args.gguf), "format": "gguf"})
    write(args.out_dir, build_llama(p, w), tokenizer, manifest)


def convert_bert_safetensors(args):
    from safetensors.numpy import load_file

    with open(os.path.join(args.model_dir, "config.json")) as f:
        config = json.load(f)
    raw = load_file(os.path.join(args.model_dir, "model.safetensors"))
    t = {k.removeprefix("bert."): v.astype(np.float32) for k, v in raw.items()}
    p = {"hidden": config["hidden_size"], "heads": config["num_attention_heads"],
         "layers": config["num_hidden_layers"], "eps": config.get("layer_norm_eps", 1e-12)}
    w = {"word": t["embeddings.word_embeddings.weight"], "position": t["embeddings.position_embeddings.weight"],
         "token_type": t["embeddings.token_type_embeddings.weight"],
         "embed_norm.w": t["embeddings.LayerNorm.weight"], "embed_norm.b": t["embeddings.LayerNorm.bias"]}
    for i in range(p["layers"]):
        b = f"encoder.layer.{i}."
        pairs = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                 "attn_out": "attention.output.dense", "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}
        for short, long in pairs.items():
            w[f"l{i}.{short}.w"] = np.ascontiguousarray(t[b + long + ".weight"].T)
            w[f"l{i}.{short}.b"] = t[b + long + ".bias"]
        for short, long in {"attn_norm": "attention.output.LayerNorm", "ffn_norm": "output.LayerNorm"}.items():
            w[f"l{i}.{short}.w"] = t[b + long + ".weight"]
            w[f"l{i}.{short}.b"] = t[b + long + ".bias"]
    with open(os.path.join(args.model_dir, "tokenizer.json"), encoding="utf-8") as f:
        tokenizer = json.load(f)
    tokenizer["truncation"] = None  # the runtime truncates at the manifest's context_length
    tokenizer["padding"] = None
    max_seq = 256
    st_config = os.path.join(args.model_dir, "sentence_bert_config.json")
    if os.path.exists(st_config):
        with open(st_config) as f:
            max_seq = json.load(f).get("max_seq_length", max_seq)
    manifest = {
        "name": args.name or "all-minilm-l6-v2", "display_name": args.display_name or "all-MiniLM-L6-v2",
        "description": "sentence-transformers' all-MiniLM-L6-v2: 384-dimensional sentence embeddings",
        "kind": "embedding", "family": "bert", "parameters": "22M", "context_length": max_seq,
        "embedding_dimension": p["hidden"], "pooling": "mean", "normalize": True,
        "source": {"format": "safetensors"}, "converter_version": CONVERTER_VERSION,
    }
    write(args.out_dir, build_bert(p, w), tokenizer, manifest)


# ---------------------------------------------------------------------------------------------
# Fixtures

def fixture_llama(args):
    rng = np.random.default_rng(args.seed)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + byte_level_alphabet()
    p = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 16, "vocab": len(tokens),
         "rope_theta": 10000.0, "eps": 1e-5, "context": 256}
    ff = 128

    def mat(rows, cols):  # scaled so activations stay O(1) and logits are decisive
        return (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)

    H, Hq, Hkv, D = p["hidden"], p["heads"], p["kv_heads"], p["head_dim"]
    w = {"embed": rng.standard_normal((p["vocab"], H)).astype(np.float32),
         "final_norm": np.ones(H, np.float32), "lm_head": None, "layers": []}
    if args.untied:
        w["lm_head"] = (3.0 * mat(H, p["vocab"])).astype(np.float32)
    for _ in range(p["layers"]):
        w["layers"].append({
            "attn_norm": np.ones(H, np.float32), "ffn_norm": np.ones(H, np.float32),
            "q": mat(H, Hq * D), "k": mat(H, Hkv * D), "v": mat(H, Hkv * D), "o": mat(Hq * D, H),
            "gate": mat(H, ff), "up": mat(H, ff), "down": mat(ff, H)})
    manifest = chat_manifest("fixture-chat", "Fixture chat model", "Tiny random-weight Llama for tests",
                             "0.1M", p, ["<|im_end|>", "<|endoftext|>"], "You are Bee.",
                             {"format": "fixture", "seed": args.seed})
    write(args.out_dir, build_llama(p, w), byte_level_bpe(tokens, [], specials, split_digits=True), manifest)


FIXTURE_WORDS = ("the a an is are was be to of and in that it for on with as at by from this what which "
                 "who how where when capital france paris bee honey jar hive policy vacation document "
                 "search answer question model chat").split()


def fixture_bert(args):
    rng = np.random.default_rng(args.seed)
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,?!") + letters + ["##" + c for c in letters] + FIXTURE_WORDS
    p = {"hidden": 32, "heads": 2, "layers": 2, "eps": 1e-12}
    H, ff, positions = 32, 64, 64

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)

    w = {"word": rng.standard_normal((len(vocab), H)).astype(np.float32),
         "position": (0.1 * rng.standard_normal((positions, H))).astype(np.float32),
         "token_type": (0.1 * rng.standard_normal((2, H))).astype(np.float32),
         "embed_norm.w": np.ones(H, np.float32), "embed_norm.b": np.zeros(H, np.float32)}
    for i in range(p["layers"]):
        for short, (rows, cols) in {"q": (H, H), "k": (H, H), "v": (H, H), "attn_out": (H, H),
                                    "ffn_in": (H, ff), "ffn_out": (ff, H)}.items():
            w[f"l{i}.{short}.w"] = mat(rows, cols)
            w[f"l{i}.{short}.b"] = np.zeros(cols, np.float32)
        for short in ("attn_norm", "ffn_norm"):
            w[f"l{i}.{short}.w"] = np.ones(H, np.float32)
            w[f"l{i}.{short}.b"] = np.zeros(H, np.float32)
    manifest = {"name": "fixture-embed", "display_name": "Fixture embedding model",
                "description": "Tiny random-weight BERT for tests", "kind": "embedding", "family": "bert",
                "parameters": "0.03M", "context_length": positions, "embedding_dimension": H,
                "pooling": "mean", "normalize": True, "source": {"format": "fixture", "seed": args.seed},
                "converter_version": CONVERTER_VERSION}
    write(args.out_dir, build_bert(p, w), word_piece(vocab), manifest)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    llama = sub.add_parser("llama-gguf", help="convert a Llama-family GGUF to an ONNX decoder")
    llama.add_argument("gguf")
    llama.add_argument("out_dir")
    bert = sub.add_parser("bert-safetensors", help="convert a BERT sentence encoder")
    bert.add_argument("model_dir", help="directory with model.safetensors, config.json, tokenizer.json")
    bert.add_argument("out_dir")
    for command in (llama, bert):
        command.add_argument("--name")
        command.add_argument("--display-name")
    for name, help_text in (("fixture-llama", "tiny random Llama"), ("fixture-bert", "tiny random BERT")):
        fixture = sub.add_parser(name, help=help_text)
        fixture.add_argument("out_dir")
        fixture.add_argument("--seed", type=int, default=7)
    llama_fixture = sub.choices["fixture-llama"]
    llama_fixture.add_argument("--untied", action="store_true", help="a separate output head instead of tied embeddings")
    args = parser.parse_args()
    {"llama-gguf": convert_llama_gguf, "bert-safetensors": convert_bert_safetensors,
     "fixture-llama": fixture_llama, "fixture-bert": fixture_bert}[args.command](args)


if __name__ == "__main__":
    main()
