#!/usr/bin/env python3
"""Records llama.cpp's tokenization of hard strings for every pre-tokenizer
tandem supports, on one small byte-level BPE vocabulary.

The vocabulary (fixtures/vocab/synth-bpe.gguf) is byte-level BPE: first
TRAINED merges learned from the test strings themselves with no
pre-tokenization (so tokens cross every place a pre-tokenizer may cut:
spaces, digits, scripts, punctuation, and any difference in where a
pre-tokenizer cuts changes the ids), then the first MERGES merges of
llama.cpp's models/ggml-vocab-qwen2.gguf, plus a few control and
user-defined tokens. For each pre-tokenizer name the
script writes a copy whose `tokenizer.ggml.pre` is that name, tokenizes
every string with llama.cpp's `llama_tokenize` (through llama-cpp-python's
ctypes bindings of the same llama.cpp, as `llama-tokenize --ids` calls it:
add_special = the model's add_bos, parse_special = true; and
add_special = parse_special = false as with `--no-bos --no-parse-special`),
and writes the ids to fixtures/vocab/synth-bpe.<pre>.json. The tests load synth-bpe.gguf, set the
pre name, and must produce the same ids.

It also copies llama.cpp's models/ggml-vocab-*.gguf.inp/.out test cases, and
records `llama-tokenize`'s full printed output for a few strings
(fixtures/vocab/*.llama-tokenize.txt) for the CLI test.

usage: make_vocab_fixtures.py LLAMA_CPP_SRC LLAMA_CPP_BIN OUT_DIR
  (LLAMA_CPP_BIN holds libllama.so and llama-tokenize; llama-cpp-python's
  llama_cpp/llama_cpp.py must be importable, e.g. from the sdist that
  tools/fixtures/setup.sh unpacks: PYTHONPATH=<sdist> with its package
  __init__ reduced to the bindings.)
"""
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile

LLAMA_SRC, LLAMA_BIN, OUT = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, os.path.join(LLAMA_SRC, "gguf-py"))
import gguf  # noqa: E402

os.environ.setdefault("LLAMA_CPP_LIB_PATH", LLAMA_BIN)
from llama_cpp import llama_cpp as L  # noqa: E402

L.llama_backend_init()


def lib_tokenize(path, texts):
    """[(ids as llama-tokenize --ids, ids with --no-bos --no-parse-special)]"""
    p = L.llama_model_default_params()
    p.vocab_only = True
    m = L.llama_model_load_from_file(path.encode(), p)
    if not m:
        raise RuntimeError(f"llama.cpp cannot load {path}")
    v = L.llama_model_get_vocab(m)
    add_bos = bool(L.llama_vocab_get_add_bos(v))
    out = []
    for t in texts:
        b = t.encode("utf-8")
        res = []
        for add, parse in [(add_bos, True), (False, False)]:
            cap = len(b) + 16
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(v, b, len(b), buf, cap, add, parse)
            if n < 0:
                raise RuntimeError(f"buffer too small for {t!r}")
            res.append(list(buf[:n]))
        out.append(res)
    L.llama_model_free(m)
    return out

MERGES = 6000
TRAINED = 3000
PRES = [
    "deepseek-v3", "kimi-k2", "glm4", "gpt-4o", "deepseek-llm", "deepseek-coder",
    "falcon", "starcoder", "qwen35", "qwen2", "llama-bpe", "gpt-2", "default",
    "command-r", "refact", "mpt", "smollm", "chatglm-bpe", "tekken", "minimax-m2",
    "bailingmoe2", "hunyuan", "hunyuan-dense", "afmoe", "grok-2", "seed-coder",
    "llama4", "exaone4", "olmo", "dbrx", "poro-chat", "viking", "chameleon",
    "tiny_aya", "superbpe", "minicpm5", "youtu", "exaone-moe", "laguna",
    "granite-embed-multi-97m", "jais-2", "ufakzeka", "spark2_5", "solar-open",
]
SPECIALS = [("<|endoftext|>", 3), ("<|im_start|>", 3), ("<|im_end|>", 3), ("<tool_call>", 4)]

HARD = [
    "Hello world", " Hello World!", "I'M DON'T you'll WE'VE they'Re", "CamelCaseWord HTTPServer iPhone",
    "12 123 1234 12345 1234567 3.14159 $1,000,000.00", "٣٤٥ ١٢ ⅷ ½",
    "你好，世界！我爱北京天安门。", "日本語のテキストとカタカナ、ひらがな。", "한국어 텍스트입니다",
    "中文English混合123文本", "漢字𠀀𪚥", "Ｆｕｌｌｗｉｄｔｈ １２３ ＡＢＣ",
    "e\u0301 a\u0308 n\u0303o", "Ελληνικά κείμενα", "Привет, мир! ЁЖИК", "مرحبا بالعالم", "สวัสดีครับ", "नमस्ते दुनिया",
    "🦙🦙 🤖!! 👍🏽 ❤️", "∑∫√ ≤≥ → ⇒ ∞", "tabs\tand\nnewlines\r\n\r\n  \n", "   leading and trailing   ",
    "\u3000全角スペース\u00a0nbsp\u2003em", "a\u200bb\u200dc", "!!!???...,,,;;;", "'quoted' \"double\" `back`",
    "def f(x):\n    return x**2  # comment\n", "<html><body class=\"x\">&amp;</body></html>",
    "https://example.com/path?q=1&r=2#frag", "user@example.com", "<|im_start|>user\nhi<|im_end|>",
    "<tool_call>{\"a\": 1}</tool_call>", "<|endoftext|><|endoftext|>", "x<|im_end|>y",
    "\n\n\n", " ", "  ", "\t", "", "a", "'s", "' s", "don't", "Don'T", "it's 'S'",
    "ǅungla ǈ ǋ", "ß ẞ ﬁ", "\u0000\u0001\u001f", "〜・ー", "（括号）【方括号】「引号」",
    "Kimi K2: 月之暗面 released on 2025-07-11!", "DeepSeek-V3 深度求索 671B", "GLM-4.5 智谱 355B-A32B",
]


def read_cases(path):
    raw = open(path, encoding="utf-8").read()
    sep = "\n__ggml_vocab_test__\n"
    out, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(sep, pos)
        if nxt < 0:
            out.append(raw[pos:])
            break
        out.append(raw[pos:nxt])
        pos = nxt + len(sep)
    return out


def field(r, k):
    f = r.fields[k]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def byte_chars():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def train(texts, n):
    """Plain BPE over whole strings (no pre-tokenization): the most frequent
    adjacent pair first, ties by first appearance."""
    bc = byte_chars()
    seqs = [[bc[b] for b in t.encode("utf-8")] for t in texts]
    merges = []
    for _ in range(n):
        counts = {}
        for s in seqs:
            for a, b in zip(s, s[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        best = max(counts.items(), key=lambda kv: kv[1])[0]
        if counts[best] < 1:
            break
        merges.append(best)
        for i, s in enumerate(seqs):
            out, j = [], 0
            while j < len(s):
                if j + 1 < len(s) and (s[j], s[j + 1]) == best:
                    out.append(s[j] + s[j + 1])
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[i] = out
    return [f"{a} {b}" for a, b in merges]


def build_base(texts):
    r = gguf.GGUFReader(os.path.join(LLAMA_SRC, "models", "ggml-vocab-qwen2.gguf"))
    merges = train(texts, TRAINED)
    have = set(merges)
    merges += [m for m in field(r, "tokenizer.ggml.merges")[:MERGES] if m not in have]
    tokens = [byte_chars()[b] for b in range(256)]
    seen = set(tokens)
    for m in merges:
        a, b = m.split(" ", 1)
        assert a in seen and b in seen, m
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    types = [1] * len(tokens)
    for t, ty in SPECIALS:
        if t in seen:  # learned from the strings: the special keeps that id
            types[tokens.index(t)] = ty
            continue
        tokens.append(t)
        types.append(ty)
    return tokens, types, merges


def write_gguf(path, pre, tokens, types, merges):
    w = gguf.GGUFWriter(path, "qwen2")
    w.add_name("synth-bpe")
    w.add_block_count(1)
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    eot = tokens.index("<|endoftext|>")
    w.add_bos_token_id(eot)
    w.add_eos_token_id(eot)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def printed(path, text):
    p = L.llama_model_default_params()
    p.vocab_only = True
    m = L.llama_model_load_from_file(path.encode(), p)
    v = L.llama_model_get_vocab(m)
    b = text.encode("utf-8")
    cap = len(b) + 16
    buf = (L.llama_token * cap)()
    n = L.llama_tokenize(v, b, len(b), buf, cap, bool(L.llama_vocab_get_add_bos(v)), True)
    out = b""
    for tok in buf[:n]:
        piece = (ctypes.c_char * 256)()
        k = L.llama_token_to_piece(v, tok, piece, 256, 0, True)
        out += b"%6d -> '" % tok + bytes(piece[:k]) + b"'\n"
    L.llama_model_free(m)
    return out


def llama_tokenize(model, text, extra, ids=True):
    with tempfile.NamedTemporaryFile("wb", delete=False) as f:
        f.write(text.encode("utf-8"))
        name = f.name
    try:
        args = [os.path.join(LLAMA_BIN, "llama-tokenize"), "-m", model, "-f", name, "--no-escape", "--log-disable"]
        if ids:
            args.append("--ids")
        p = subprocess.run(args + extra, capture_output=True)
    finally:
        os.unlink(name)
    if p.returncode != 0:
        raise RuntimeError(f"llama-tokenize failed on {model} {text!r}: {p.stderr.decode(errors='replace')[-2000:]}")
    if not ids:
        return p.stdout
    line = p.stdout.decode().strip().splitlines()[-1]
    return json.loads(line)


def main():
    os.makedirs(OUT, exist_ok=True)
    # llama.cpp's own test cases, and the small vocabularies worth committing.
    for name in ["llama-spm", "phi-3", "deepseek-coder", "deepseek-llm", "falcon", "starcoder", "qwen35",
                 "qwen2", "llama-bpe", "gpt-2", "mpt", "refact", "command-r", "bert-bge", "gemma-4"]:
        for ext in [".gguf.inp", ".gguf.out"]:
            src = os.path.join(LLAMA_SRC, "models", f"ggml-vocab-{name}{ext}")
            if os.path.exists(src):
                shutil.copy(src, os.path.join(OUT, f"ggml-vocab-{name}{ext}"))
    for name in ["llama-spm", "deepseek-coder"]:
        shutil.copy(os.path.join(LLAMA_SRC, "models", f"ggml-vocab-{name}.gguf"), OUT)

    texts = []
    for f in sorted(os.listdir(os.path.join(LLAMA_SRC, "models"))):
        if f.endswith(".gguf.inp"):
            texts += read_cases(os.path.join(LLAMA_SRC, "models", f))
    texts += HARD
    texts = list(dict.fromkeys(texts))

    tokens, types, merges = build_base(texts)
    base = os.path.join(OUT, "synth-bpe.gguf")
    write_gguf(base, "default", tokens, types, merges)
    tmp = tempfile.mkdtemp()
    for pre in PRES:
        path = os.path.join(tmp, f"synth-{pre}.gguf")
        write_gguf(path, pre, tokens, types, merges)
        cases = []
        for t, (ids, plain) in zip(texts, lib_tokenize(path, texts)):
            cases.append({"text": t, "ids": ids, "ids_plain": plain})
        with open(os.path.join(OUT, f"synth-bpe.{pre}.json"), "w", encoding="utf-8") as f:
            json.dump({"pre": pre, "cases": cases}, f, ensure_ascii=False, indent=0)
        print(f"{pre}: {len(cases)} strings", file=sys.stderr)
    # The printed form of llama-tokenize, for `tandem tokenize`: from the
    # tool when it is built, else composed as tools/tokenize/tokenize.cpp
    # prints it ("%6d -> '%s'\n", the piece of common_token_to_piece, that
    # is llama_token_to_piece(..., lstrip = 0, special = true)).
    have_tool = os.path.exists(os.path.join(LLAMA_BIN, "llama-tokenize"))
    for pre, t in [("kimi-k2", "Kimi K2: 月之暗面 <|im_end|> x\n"), ("llama-bpe", "Hello world's 123 🦙\t<|endoftext|>")]:
        path = os.path.join(tmp, f"synth-{pre}.gguf")
        if have_tool:
            out = llama_tokenize(path, t, [], ids=False)
        else:
            print("llama-tokenize not built: printed output composed from llama_token_to_piece", file=sys.stderr)
            out = printed(path, t)
        with open(os.path.join(OUT, f"synth-bpe.{pre}.llama-tokenize.txt"), "wb") as f:
            f.write(out)
        with open(os.path.join(OUT, f"synth-bpe.{pre}.prompt.txt"), "wb") as f:
            f.write(t.encode())
    shutil.rmtree(tmp)


main()
