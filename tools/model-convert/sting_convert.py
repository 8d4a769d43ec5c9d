#!/usr/bin/env python3
"""Sting's model converter: builds ONNX graphs directly from model weights (numpy + onnx, with
gguf or safetensors to read the weights), without torch or transformers.

Subcommands:
  llama-gguf GGUF OUT_DIR          Llama-architecture GGUF (e.g. SmolLM2-135M-Instruct) ->
                                   fp32 decoder with an explicit KV cache
  bert-safetensors DIR OUT_DIR     BERT sentence encoder in sentence-transformers layout
                                   (e.g. all-MiniLM-L6-v2) -> fp32 encoder
  fixture-llama OUT_DIR            tiny random-weight Llama with the decoder's I/O (for tests)
  fixture-bert OUT_DIR             tiny random-weight BERT with the encoder's I/O (for tests)

Each writes OUT_DIR/model.onnx (one file, weights inside), OUT_DIR/tokenizer.json (Hugging Face
`tokenizers` format) and OUT_DIR/manifest.json (schema in README.md). The fixtures go through
the same graph builders as the real models. Output is deterministic: the same command writes
the same bytes. Graphs use ONNX opset 17 standard operators only, so any ONNX Runtime runs them.

Run `sting_convert.py COMMAND --help` for a command's options.
"""

import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # what ONNX Runtime releases from 1.10 on load
CONVERTER_VERSION = 1
NEG_INF = -1e9  # additive mask value: exp() underflows to 0, and no inf-inf NaNs in fp32


def _varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_header(number, length):
    """Header of a length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(length)


class Graph:
    """A small builder over onnx.helper: unique names, initializers, constants.

    Weights do not stay in memory: each initializer is serialized when it is made and spilled to
    a temporary file, so the caller can drop its numpy copy at once. `save` then writes the
    model as protobuf's own serializer would (fields in field-number order: the same bytes),
    streaming the weights from the spill file. Converting SmolLM2 (540 MB of fp32 weights) then
    peaks under 1 GB instead of 2 (SerializeToString on a full model holds two more copies)."""

    def __init__(self, spill_dir):
        self.nodes, self.inputs, self.outputs = [], [], []
        self.counter = 0
        # In the output directory, not /tmp: /tmp is often RAM (tmpfs). Deleted on close.
        self.spill = tempfile.TemporaryFile(dir=spill_dir)
        self.spilled = 0  # bytes of GraphProto.initializer fields in the spill file
        self.weight_types = []  # (name, element type, dims) of each initializer, for the checker

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
        proto = numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype), name)
        self.weight_types.append((name, proto.data_type, list(proto.dims)))
        tensor = proto.SerializeToString()
        chunk = _field_header(5, len(tensor)) + tensor  # GraphProto field 5: initializer
        self.spill.write(chunk)
        self.spilled += len(chunk)
        return name

    def const(self, values, dtype=np.int64):
        return self.weight(self.name("const"), np.array(values, dtype=dtype), dtype)

    def save(self, path, producer):
        """Runs the ONNX checker on the graph, then writes the model to `path` (one file,
        weights inside). The Graph is spent after."""
        # The checker sees a skeleton with each weight as a typed graph input: it checks the
        # topology and every node against its schema without loading 0.5 GB of weights again.
        skeleton = helper.make_model(
            helper.make_graph(self.nodes, "sting", self.inputs + [
                helper.make_tensor_value_info(name, dtype, dims) for name, dtype, dims in self.weight_types],
                self.outputs),
            opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
        onnx.checker.check_model(skeleton)
        # GraphProto: node (1), name (2), initializer (5), input (11), output (12).
        head = onnx.GraphProto(node=self.nodes, name="sting").SerializeToString()
        tail = onnx.GraphProto(input=self.inputs, output=self.outputs).SerializeToString()
        # ModelProto: ir_version (1), producer_name (2), graph (7), opset_import (8).
        model_head = onnx.ModelProto(ir_version=IR_VERSION, producer_name=producer).SerializeToString()
        model_tail = onnx.ModelProto(opset_import=[helper.make_opsetid("", OPSET)]).SerializeToString()
        graph_length = len(head) + self.spilled + len(tail)
        if graph_length > 2**31 - 1:
            sys.exit("model over protobuf's 2 GB limit: a single-file model.onnx cannot hold it")
        with open(path, "wb") as f:
            f.write(model_head + _field_header(7, graph_length) + head)
            self.spill.seek(0)
            shutil.copyfileobj(self.spill, f, 1 << 24)
            f.write(tail + model_tail)
        self.spill.close()


# ---------------------------------------------------------------------------------------------
# Graph builders (shared by the real models and the fixtures)

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


def build_llama(p, w, path):
    """Writes the decoder graph to `path`.

    `p`: shape parameters (hidden, layers, heads, kv_heads, head_dim, vocab, rope_theta, eps).
    `w`: weights as numpy fp32, projections as [in, out]: "embed" [vocab, hidden], "final_norm",
    "lm_head" ([hidden, vocab], or None for a head tied to "embed"), and "layer": a function
    i -> that layer's dict (called once per layer, so a converter can load layers one at a time).

    Inputs: input_ids, attention_mask [B, past+S], position_ids [B, S], and
    past_key_values.{i}.key|value [B, kv_heads, past, head_dim] (past may be 0).
    Outputs: logits [B, S, vocab], present.{i}.key|value [B, kv_heads, past+S, head_dim].
    """
    g = Graph(os.path.dirname(path))
    L, Hq, Hkv, D, V = p["layers"], p["heads"], p["kv_heads"], p["head_dim"], p["vocab"]
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

    # The one copy of the embedding matrix: a Gather for the input, and (when tied) the head.
    embed = g.weight("embed_tokens", w["embed"])
    x = g.op("Gather", [embed, "input_ids"], axis=0)

    # Rotary tables from the position ids (so left-padded rows rotate by their own positions):
    # angle[b, s, j] = position_ids[b, s] * inv_freq[j mod D/2], as cos/sin [B, 1, S, D].
    inv_freq = 1.0 / (p["rope_theta"] ** (np.arange(0, D, 2, dtype=np.float64) / D))
    positions = g.op("Unsqueeze", [g.op("Cast", ["position_ids"], to=TensorProto.FLOAT), g.const([-1])])
    freqs = g.op("Mul", [positions, g.weight("inv_freq", inv_freq.astype(np.float32))])
    angles = g.op("Unsqueeze", [g.op("Concat", [freqs, freqs], axis=-1), g.const([1])])
    cos, sin = g.op("Cos", [angles]), g.op("Sin", [angles])

    # Additive mask [B, 1, S, T]: the query at index q (absolute position past+q) may attend
    # key k iff k <= past+q (causal) and attention_mask[b, k] == 1 (not padding). With left
    # padding a row's pad keys are masked for every query; a pad query row sees no key at all,
    # and since every score then gets the same -1e9 its softmax stays finite (its output is
    # garbage that nobody reads).
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

    def rope(t):  # rotate-half rotary: t*cos + rotate_half(t)*sin
        return g.op("Add", [g.op("Mul", [t, cos]), g.op("Mul", [rotate_half(g, t, D // 2), sin])])

    def repeat_kv(t):  # [B, Hkv, T, D] -> [B, Hq, T, D]; kv head j serves query heads j*rep..j*rep+rep-1
        if rep == 1:
            return t
        t5 = g.op("Unsqueeze", [t, g.const([2])])
        return g.op("Reshape", [g.op("Concat", [t5] * rep, axis=2), g.const([0, Hq, -1, D])])

    for i in range(L):
        lw = w["layer"](i)
        h = rms_norm(g, x, g.weight(f"l{i}.attn_norm", lw["attn_norm"]), p["eps"])
        q = rope(heads(g.op("MatMul", [h, g.weight(f"l{i}.q", lw["q"])]), Hq))
        k = rope(heads(g.op("MatMul", [h, g.weight(f"l{i}.k", lw["k"])]), Hkv))
        v = heads(g.op("MatMul", [h, g.weight(f"l{i}.v", lw["v"])]), Hkv)
        # The cache holds rotated keys (as Hugging Face's does), un-repeated ([B, Hkv, T, D]).
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
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])  # SiLU(gate) * up
        x = g.op("Add", [x, g.op("MatMul", [act, g.weight(f"l{i}.down", lw["down"])])])
        del lw

    x = rms_norm(g, x, g.weight("final_norm", w["final_norm"]), p["eps"])
    if w.get("lm_head") is None:
        # Tied embeddings: the head multiplies by the transpose of the one stored matrix.
        g.op_named("MatMul", [x, g.op("Transpose", [embed], perm=[1, 0])], "logits")
    else:
        g.op_named("MatMul", [x, g.weight("lm_head", w["lm_head"])], "logits")
    g.save(path, "sting-convert llama")


def build_bert(p, w, path):
    """Writes the encoder graph to `path`: input_ids, attention_mask, token_type_ids
    [B, S] -> last_hidden_state [B, S, hidden]. `w`: numpy fp32, projections as [in, out]."""
    g = Graph(os.path.dirname(path))
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
    # Padding keys get -1e9 before the softmax ([B, 1, 1, S], broadcast over heads and queries).
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
        # Exact (erf) GELU, as BERT uses.
        gelu = g.op("Mul", [g.op("Mul", [inner, g.const(0.5, np.float32)]),
                            g.op("Add", [g.const(1.0, np.float32), g.op("Erf", [g.op("Div", [inner, g.const(np.sqrt(2.0), np.float32)])])])])
        x = layer_norm(g.op("Add", [x, linear(gelu, f"l{i}.ffn_out")]), f"l{i}.ffn_norm")
    g.op_named("Identity", [x], "last_hidden_state")
    g.save(path, "sting-convert bert")


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


def added_token(token_id, content, special):
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def byte_level_bpe(tokens, merges, specials, split_digits, user_defined=(), bos=None):
    """A GPT-2 style byte-level BPE tokenizer. `specials` (control tokens) and `user_defined`
    tokens are matched literally before BPE; only `specials` are skipped when decoding with
    skip_special_tokens. `bos`: a token the post-processor puts first (None: nothing added)."""
    ids = {t: i for i, t in enumerate(tokens)}
    added = sorted([added_token(ids[s], s, True) for s in specials] +
                   [added_token(ids[s], s, False) for s in user_defined], key=lambda t: t["id"])
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    pre = byte_level
    if split_digits:
        pre = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    post = None
    if bos is not None:
        first = {"SpecialToken": {"id": bos, "type_id": 0}}
        post = {"type": "TemplateProcessing",
                "single": [first, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [first, {"Sequence": {"id": "A", "type_id": 0}}, first, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [ids[bos]], "tokens": [bos]}}}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": pre, "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": ids, "merges": merges},
    }


def word_piece(vocab):
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ids = {t: i for i, t in enumerate(vocab)}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added_token(ids[s], s, True) for s in specials],
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


def write(out_dir, build, tokenizer, manifest):
    """Writes OUT_DIR/model.onnx (through `build(path)`), tokenizer.json and manifest.json."""
    os.makedirs(out_dir, exist_ok=True)
    model_path = os.path.join(out_dir, "model.onnx")
    build(model_path)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False, indent=None, separators=(",", ":"))
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print(f"wrote {out_dir}: model.onnx {os.path.getsize(model_path) / 1e6:.1f} MB")


def chat_manifest(name, display, description, params, p, eos, bos, default_system, source):
    return {
        "name": name, "display_name": display, "description": description, "kind": "chat",
        "family": "llama", "parameters": params, "context_length": p["context"], "vocab_size": p["vocab"],
        "num_layers": p["layers"], "num_kv_heads": p["kv_heads"], "head_dim": p["head_dim"],
        "hidden_size": p["hidden"], "eos_tokens": eos, "bos_token": bos,
        "chat_template": dict(CHATML, default_system=default_system),
        "source": source, "converter_version": CONVERTER_VERSION,
    }


def wheel_source(path):
    """{"package", "version"} of the PyPI distribution a file came from, when it sits in an
    unpacked wheel or a site-packages directory (found through the *.dist-info RECORD that
    lists it); {} otherwise."""
    path = os.path.abspath(path)
    root = os.path.dirname(path)
    for _ in range(4):
        root = os.path.dirname(root)
        relative = os.path.relpath(path, root).replace(os.sep, "/")
        for info in sorted(glob.glob(os.path.join(root, "*.dist-info"))):
            try:
                with open(os.path.join(info, "RECORD"), encoding="utf-8") as f:
                    if not any(line.split(",")[0] == relative for line in f):
                        continue
                with open(os.path.join(info, "METADATA"), encoding="utf-8") as f:
                    headers = dict(line.rstrip("\n").split(": ", 1) for line in f
                                   if line.startswith(("Name: ", "Version: ")))
                return {"package": headers["Name"], "version": headers["Version"]}
            except (OSError, KeyError, ValueError):
                continue
    return {}


def source_info(args, path, file, fmt):
    found = wheel_source(path)
    package = args.source_package or found.get("package")
    version = args.source_version or found.get("version")
    info = {"package": package, "version": version} if package else {}
    return dict(info, file=file, format=fmt)


# ---------------------------------------------------------------------------------------------
# Real models

def gguf_value(reader, key, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def unpermute(weight, n_heads):
    """Undoes llama.cpp's Q/K row permutation.

    Hugging Face Llama rotates pairs (j, j + D/2) of each head ("rotate_half"); llama.cpp
    rotates adjacent pairs (2j, 2j+1). Its converter therefore reorders each head's rows of the
    Q and K projections from (2, D/2) to (D/2, 2) order, so that GGUF row 2j is HF row j and row
    2j+1 is HF row j + D/2. Reversing that lets the graph use rotate_half; attention scores are
    the same either way (reference.py's `check-llama` verifies it against llama.cpp's rope on
    the raw GGUF weights)."""
    out, inp = weight.shape
    return weight.reshape(n_heads, out // n_heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


# tokenizer.ggml.pre values whose pre-tokenizer this converter reproduces exactly.
GGUF_PRE_TOKENIZERS = {"smollm": True, "gpt-2": False}  # value: split digits individually first

QUANT_SUFFIX = re.compile(r"[.-](q\d\w*|iq\d\w*|f16|f32|bf16)$", re.IGNORECASE)


def default_system_prompt(template):
    """The system prompt a ChatML template inserts when a conversation has none, or None.
    Only a literal is accepted: `'<|im_start|>system\n' + message['content']` is not one."""
    match = re.search(r"<\|im_start\|>system\s*(.*?)<\|im_end\|>", template, re.DOTALL)
    if match and not re.search(r"['\"{}+]", match.group(1)):
        return match.group(1)
    return None


def convert_llama_gguf(args):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(args.gguf)
    meta = lambda key, default=None: gguf_value(reader, key, default)
    arch = meta("general.architecture")
    if arch != "llama":
        sys.exit(f"unsupported architecture {arch!r} (llama only)")
    hidden = int(meta("llama.embedding_length"))
    heads = int(meta("llama.attention.head_count"))
    p = {
        "hidden": hidden, "layers": int(meta("llama.block_count")), "heads": heads,
        "kv_heads": int(meta("llama.attention.head_count_kv", heads)),
        "head_dim": int(meta("llama.attention.key_length", hidden // heads)),
        "rope_theta": float(meta("llama.rope.freq_base", 10000.0)),
        "eps": float(meta("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "context": int(meta("llama.context_length")),
    }
    if int(meta("llama.rope.dimension_count", p["head_dim"])) != p["head_dim"]:
        sys.exit("partial rotary embeddings (rope.dimension_count != head_dim) are not supported")
    if meta("llama.rope.scaling.type", "none") != "none":
        sys.exit(f"rope scaling {meta('llama.rope.scaling.type')!r} is not supported")
    tensors = {t.name: t for t in reader.tensors}
    if "rope_freqs.weight" in tensors:
        sys.exit("per-frequency rope factors (Llama 3.1 style rope_freqs) are not supported")

    def load(name):
        """A tensor dequantised to fp32 in numpy order ([out, in] for a projection)."""
        t = tensors[name]
        try:
            data = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            sys.exit(f"{name}: the gguf package cannot dequantise {t.tensor_type.name}")
        shape = [int(d) for d in reversed(t.shape)]  # GGUF lists dimensions fastest-varying first
        return np.ascontiguousarray(data.reshape(shape), dtype=np.float32)

    def proj(name, permuted_heads=None):  # [out, in] -> [in, out] for x @ W
        m = load(name)
        if permuted_heads:
            m = unpermute(m, permuted_heads)
        return np.ascontiguousarray(m.T)

    def layer(i):
        b = f"blk.{i}."
        return {"attn_norm": load(b + "attn_norm.weight"), "ffn_norm": load(b + "ffn_norm.weight"),
                "q": proj(b + "attn_q.weight", p["heads"]), "k": proj(b + "attn_k.weight", p["kv_heads"]),
                "v": proj(b + "attn_v.weight"), "o": proj(b + "attn_output.weight"),
                "gate": proj(b + "ffn_gate.weight"), "up": proj(b + "ffn_up.weight"),
                "down": proj(b + "ffn_down.weight")}

    w = {"embed": load("token_embd.weight"), "final_norm": load("output_norm.weight"),
         "lm_head": proj("output.weight") if "output.weight" in tensors else None, "layer": layer}
    p["vocab"] = w["embed"].shape[0]

    # Tokenizer: byte-level BPE ("gpt2" in GGUF terms).
    if meta("tokenizer.ggml.model") != "gpt2":
        sys.exit(f"tokenizer model {meta('tokenizer.ggml.model')!r} is not supported (gpt2 byte-level BPE only)")
    tokens = list(meta("tokenizer.ggml.tokens"))
    merges = list(meta("tokenizer.ggml.merges", []))
    types = list(meta("tokenizer.ggml.token_type", [1] * len(tokens)))
    specials = [t for t, kind in zip(tokens, types) if kind in (2, 3)]  # UNKNOWN, CONTROL
    user_defined = [t for t, kind in zip(tokens, types) if kind == 4]  # USER_DEFINED
    pre = meta("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE_TOKENIZERS:
        print(f"warning: pre-tokenizer {pre!r} is approximated by GPT-2's; check tokenisation", file=sys.stderr)
    bos = None
    if meta("tokenizer.ggml.add_bos_token", False) and meta("tokenizer.ggml.bos_token_id") is not None:
        bos = tokens[int(meta("tokenizer.ggml.bos_token_id"))]
    tokenizer = byte_level_bpe(tokens, merges, specials, GGUF_PRE_TOKENIZERS.get(pre, False), user_defined, bos)

    template = meta("tokenizer.chat_template", "") or ""
    if "<|im_start|>" not in template:
        sys.exit("only ChatML chat templates are supported; write the manifest's chat_template by hand")
    eos = [tokens[int(meta("tokenizer.ggml.eos_token_id"))]]
    eos += [t for t in ("<|im_end|>", "<|endoftext|>") if t in tokens and t not in eos]

    stem = QUANT_SUFFIX.sub("", os.path.basename(args.gguf).removesuffix(".gguf"))
    display = args.display_name or stem.replace("-", " ").replace("_", " ")
    params = meta("general.size_label") or f"{sum(int(np.prod(t.shape)) for t in reader.tensors) / 1e6:.0f}M"
    org = meta("general.organization")
    description = args.description or (
        f"{stem}{' by ' + org if org else ''}: a {params}-parameter chat model, converted to fp32 ONNX "
        f"from {os.path.basename(args.gguf)}")
    manifest = chat_manifest(
        args.name or stem.lower(), display, description, params, p, eos, bos,
        default_system_prompt(template), source_info(args, args.gguf, os.path.basename(args.gguf), "gguf"))
    write(args.out_dir, lambda path: build_llama(p, w, path), tokenizer, manifest)


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
            w[f"l{i}.{short}.w"] = np.ascontiguousarray(t[b + long + ".weight"].T)  # [out, in] -> [in, out]
            w[f"l{i}.{short}.b"] = t[b + long + ".bias"]
        for short, long in {"attn_norm": "attention.output.LayerNorm", "ffn_norm": "output.LayerNorm"}.items():
            w[f"l{i}.{short}.w"] = t[b + long + ".weight"]
            w[f"l{i}.{short}.b"] = t[b + long + ".bias"]
    with open(os.path.join(args.model_dir, "tokenizer.json"), encoding="utf-8") as f:
        tokenizer = json.load(f)
    tokenizer["truncation"] = None  # the runtime truncates at the manifest's context_length
    tokenizer["padding"] = None  # and pads each batch to its longest input
    # The length the model was trained at (sentence-transformers' max_seq_length), not the
    # size of the position table (512 for MiniLM, which was trained at 256).
    max_seq = config.get("max_position_embeddings", 512)
    st_config = os.path.join(args.model_dir, "sentence_bert_config.json")
    if os.path.exists(st_config):
        with open(st_config) as f:
            max_seq = json.load(f).get("max_seq_length", max_seq)
    manifest = {
        "name": args.name or "all-minilm-l6-v2", "display_name": args.display_name or "all-MiniLM-L6-v2",
        "description": args.description or "sentence-transformers' all-MiniLM-L6-v2: 384-dimensional sentence embeddings",
        "kind": "embedding", "family": "bert", "parameters": args.parameters, "context_length": max_seq,
        "embedding_dimension": p["hidden"], "pooling": "mean", "normalize": True,
        "source": source_info(args, os.path.join(args.model_dir, "model.safetensors"), "model.safetensors", "safetensors"),
        "converter_version": CONVERTER_VERSION,
    }
    write(args.out_dir, lambda path: build_bert(p, w, path), tokenizer, manifest)


# ---------------------------------------------------------------------------------------------
# Fixtures: tiny random models through the same builders, for tests. The weights are scaled so
# activations stay O(1) and logits are decisive (top-1 well clear of top-2): greedy decoding
# then gives the same tokens in Python and in Rust, whatever the batch shape or thread count.

def fixture_llama(args):
    rng = np.random.default_rng(args.seed)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + byte_level_alphabet()
    p = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 16, "vocab": len(tokens),
         "rope_theta": 10000.0, "eps": 1e-5, "context": 256}
    ff = 128

    def mat(rows, cols):  # std 1/sqrt(fan-in)
        return (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)

    H, Hq, Hkv, D = p["hidden"], p["heads"], p["kv_heads"], p["head_dim"]
    w = {"embed": rng.standard_normal((p["vocab"], H)).astype(np.float32),
         "final_norm": np.ones(H, np.float32), "lm_head": None}
    if args.untied:
        w["lm_head"] = (3.0 * mat(H, p["vocab"])).astype(np.float32)
    layers = []
    for _ in range(p["layers"]):
        layers.append({
            "attn_norm": np.ones(H, np.float32), "ffn_norm": np.ones(H, np.float32),
            "q": mat(H, Hq * D), "k": mat(H, Hkv * D), "v": mat(H, Hkv * D), "o": mat(Hq * D, H),
            "gate": mat(H, ff), "up": mat(H, ff), "down": mat(ff, H)})
    w["layer"] = layers.__getitem__
    manifest = chat_manifest("fixture-chat", "Fixture chat model", "Tiny random-weight Llama for tests",
                             "0.1M", p, ["<|im_end|>", "<|endoftext|>"], None, "You are Bee.",
                             {"format": "fixture", "seed": args.seed})
    write(args.out_dir, lambda path: build_llama(p, w, path), byte_level_bpe(tokens, [], specials, split_digits=True), manifest)


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
    write(args.out_dir, lambda path: build_bert(p, w, path), word_piece(vocab), manifest)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    llama = sub.add_parser(
        "llama-gguf", help="convert a Llama-architecture GGUF to an fp32 ONNX decoder with KV cache",
        description="Dequantises every tensor to fp32 (any type the gguf package reads), un-permutes "
                    "llama.cpp's Q/K layout, and writes a decoder with explicit KV cache, a byte-level "
                    "BPE tokenizer.json rebuilt from the GGUF metadata, and a manifest. Needs a ChatML "
                    "chat template. Defaults: name = the file name without .gguf and its "
                    "quantisation suffix, lower-cased (SmolLM2-135M-Instruct.Q4_1.gguf -> "
                    "smollm2-135m-instruct); display name = the same with spaces for dashes.")
    llama.add_argument("gguf", help="the .gguf file")
    llama.add_argument("out_dir", help="directory to write model.onnx, tokenizer.json, manifest.json")
    bert = sub.add_parser(
        "bert-safetensors", help="convert a BERT sentence encoder (sentence-transformers layout)",
        description="Reads config.json and model.safetensors, writes an fp32 encoder, the model's "
                    "tokenizer.json without its fixed truncation and padding, and a manifest (mean "
                    "pooling, normalised; context_length from sentence_bert_config.json). The naming "
                    "defaults describe all-MiniLM-L6-v2: pass --name etc. for another model.")
    bert.add_argument("model_dir", help="directory with model.safetensors, config.json, tokenizer.json")
    bert.add_argument("out_dir", help="directory to write model.onnx, tokenizer.json, manifest.json")
    bert.add_argument("--parameters", default="22M", help="manifest 'parameters' (default: %(default)s)")
    for command in (llama, bert):
        command.add_argument("--name", help="manifest 'name': the model's id in Sting's API")
        command.add_argument("--display-name", help="manifest 'display_name'")
        command.add_argument("--description", help="manifest 'description'")
        command.add_argument("--source-package", help="manifest source.package (default: the PyPI "
                             "distribution whose *.dist-info RECORD lists the input file, if any)")
        command.add_argument("--source-version", help="manifest source.version (default: as above)")
    for name, help_text in (("fixture-llama", "tiny random Llama with the decoder's I/O (0.4 MB)"),
                            ("fixture-bert", "tiny random BERT with the encoder's I/O (0.1 MB)")):
        fixture = sub.add_parser(name, help=help_text, description=help_text + "; deterministic for a seed.")
        fixture.add_argument("out_dir", help="directory to write model.onnx, tokenizer.json, manifest.json")
        fixture.add_argument("--seed", type=int, default=7, help="numpy default_rng seed (default: %(default)s)")
    sub.choices["fixture-llama"].add_argument(
        "--untied", action="store_true", help="a separate output head instead of tied embeddings "
        "(the committed fixture uses it: its greedy output is then not just the input echoed)")
    args = parser.parse_args()
    {"llama-gguf": convert_llama_gguf, "bert-safetensors": convert_bert_safetensors,
     "fixture-llama": fixture_llama, "fixture-bert": fixture_bert}[args.command](args)


if __name__ == "__main__":
    main()
