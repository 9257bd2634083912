#!/usr/bin/env python3
"""Writes the committed seed corpora of tests/fuzz/corpus (run from the repository root).

Small real inputs for each fuzzer: safetensors files built here, the embedded model's
config and tokenizer, the chat templates of the unit tests and the reference tokenizers
(../shared/fixtures, when present), JSONL lines, and GenerateRequest / CreateJobRequest
protos encoded with protoc from text format. Re-running rewrites the same files.
"""
import json
import os
import re
import struct
import subprocess

OUT = "tests/fuzz/corpus"
FIXTURES = "../shared/fixtures"


def write(name, filename, data):
    os.makedirs(os.path.join(OUT, name), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(OUT, name, filename), "wb") as f:
        f.write(data)


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, raw bytes)] -> file bytes, as the format defines."""
    header, offset, blob = {}, 0, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blob += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob


def f32(values):
    return struct.pack("<%df" % len(values), *values)


def bf16(values):
    return b"".join(struct.pack("<f", v)[2:] for v in values)


def safetensors_seeds():
    vec = [0.5, -1.0, 2.0, 0.0, 1.5, -0.25, 3.0, 1.0]
    meta = {"format": "steerd.steering.v1", "num_layers": "2", "hidden_size": "4",
            "model": "tiny", "model_fingerprint": "fp-tiny"}
    for name in ("safetensors", "vector_upload"):
        write(name, "vector_f32", safetensors([("steering", "F32", [2, 4], f32(vec))], meta))
        write(name, "vector_bf16", safetensors([("steering", "BF16", [2, 4], bf16(vec))]))
        write(name, "vector_partial_metadata", safetensors(
            [("steering", "F32", [2, 4], f32(vec))], {"num_layers": "2"}))
    # An unpadded header: the data sits at an odd offset (allowed; see TensorView).
    unpadded = safetensors([("steering", "BF16", [2, 4], bf16(vec))])
    header_len = struct.unpack("<Q", unpadded[:8])[0]
    header = unpadded[8:8 + header_len].rstrip(b" ")
    if (8 + len(header)) % 2 == 0:
        header += b" "
    for name in ("safetensors", "vector_upload"):
        write(name, "vector_bf16_odd_offset",
              struct.pack("<Q", len(header)) + header + unpadded[8 + header_len:])
    write("vector_upload", "vector_wrong_shape",
          safetensors([("steering", "F32", [1, 4], f32(vec[:4]))], meta))
    write("safetensors", "many_dtypes", safetensors([
        ("a.f64", "F64", [2], struct.pack("<2d", 1.0, 2.0)),
        ("b.f16", "F16", [2, 1], b"\x00\x3c\x00\x40"),
        ("c.i64", "I64", [1], struct.pack("<q", -5)),
        ("d.i32", "I32", [], struct.pack("<i", 7)),
        ("e.i16", "I16", [2], struct.pack("<2h", 1, -1)),
        ("f.i8", "I8", [3], b"\x01\x02\x03"),
        ("g.u8", "U8", [1], b"\xff"),
        ("h.bool", "BOOL", [2], b"\x00\x01"),
        ("i.empty", "F32", [0, 3], b""),
    ], {"note": "mixed"}))


def config_seeds():
    write("config", "steerd_tiny.json", open("models/steerd-tiny/config.json").read())
    for model in ("llama-tiny", "qwen2-tiny", "llama-tiny-bf16-sharded"):
        path = os.path.join(FIXTURES, "hf-reference", model, "config.json")
        if os.path.exists(path):
            write("config", model + ".json", open(path).read())
    write("config", "llama3_rope.json", json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64,
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        "attention_bias": True, "mlp_bias": False, "bos_token_id": 1,
        "eos_token_id": [2, 3], "torch_dtype": "bfloat16", "tie_word_embeddings": False}))


def tokenizer_seeds():
    tok = open("models/steerd-tiny/tokenizer.json").read()
    cfg = open("models/steerd-tiny/tokenizer_config.json").read()
    write("tokenizer", "steerd_tiny", tok.encode() + b"\0" + cfg.encode())
    # A trimmed tokenizer: 256 byte tokens, a few merges, an added special token, no
    # config, compact JSON.
    full = json.loads(tok)
    vocab = {k: v for k, v in full["model"]["vocab"].items() if v < 256}
    small = dict(full)
    small["model"] = dict(full["model"], vocab=vocab, merges=[])
    write("tokenizer", "bytes_only", json.dumps(small, ensure_ascii=False,
                                                separators=(",", ":")))
    texts = ("Q: What is 12+30?\nA: 42<|endoftext|>", "héllo wörld  \n\n\tdon't 1234567",
             "日本語のテキスト 🙂 <|endoftext|><|endoftext|>", "  x  ")
    for i, text in enumerate(texts):
        write("tokenizer_encode", "text%d" % i, text)


def chat_template_seeds():
    cfg = json.load(open("models/steerd-tiny/tokenizer_config.json"))
    write("chat_template", "steerd_qa.jinja", cfg["chat_template"])
    for name in ("llama3", "qwen2_5"):
        path = os.path.join(FIXTURES, "tokenizers", name, "tokenizer_config.json")
        if os.path.exists(path):
            write("chat_template", name + ".jinja", json.load(open(path))["chat_template"])
    test = open("tests/unit/chat_template_test.cc").read()
    m = re.search(r'kLlama31Template\[\] = R"jinja\((.*?)\)jinja";', test, re.S)
    write("chat_template", "llama31.jinja", m.group(1))
    for i, m in enumerate(re.finditer(r'R"jinja\((\{% for message.*?)\)jinja";', test)):
        write("chat_template", "chatml%d.jinja" % i, m.group(1))


def dataset_seeds():
    write("dataset", "arith.jsonl",
          '{"prompt": "Q: 2+3\\nA:", "answer": "5"}\n'
          '{"prompt": "Q: 10*4\\nA:", "answer": "40", "solution": "10*4 = 40"}\n')
    write("dataset", "unicode_blank.jsonl",
          '\n{"prompt":"Résumé \\u00e9 \\ud83d\\ude42","answer":"x","extra":[1,{"a":null}]}\n\n')
    write("dataset", "bad_line.jsonl", '{"prompt": "p", "answer": "a"}\n[1, 2]\n')


def vector_ref_seeds():
    for i, text in enumerate(["adder", "adder@3", "a.b-c_d@9223372036854775807", "x@0",
                              "-bad", "name@", "n@+1"]):
        write("vector_ref", "ref%d" % i, text)


def protoc(message, text):
    return subprocess.run(
        ["protoc", "-Iproto", "--encode=steerd.v1." + message,
         "proto/steerd/v1/generation.proto", "proto/steerd/v1/training.proto"],
        input=text.encode(), check=True, capture_output=True).stdout


def proto_seeds():
    generate = {
        "prompt": 'model: "tiny" prompt: "Q: 2+2\\nA:"',
        "messages": 'model: "tiny" messages { messages { role: ROLE_SYSTEM '
                    'content: "Be brief." } messages { role: ROLE_USER content: "Hi" } '
                    'messages { role: ROLE_ASSISTANT content: "Hello" } '
                    'messages { role: ROLE_USER content: "2+2?" } }',
        "steered": 'model: "tiny" prompt: "Hi" steering { vector: "adder@2" scale: -1.5 } '
                   'sampling { temperature: 0.7 top_p: 0.9 top_k: 40 seed: 7 '
                   'max_new_tokens: 16 stop: "\\n" stop: "Q:" } return_logprobs: true '
                   'ignore_eos: true',
        "steered_version": 'model: "tiny" prompt: "Hi" steering { vector: "adder" version: 2 }',
    }
    for name, text in generate.items():
        write("generate", name, protoc("GenerateRequest", text))
    create = {
        "inline": 'model: "tiny" output_vector: "adder" examples { examples { prompt: '
                  '"Q: 1+1\\nA:" answer: "2" } examples { prompt: "Q: 2+2\\nA:" answer: "4" } }',
        "task": 'model: "tiny" output_vector: "adder" task: "arith" eval { split: "test" '
                'max_examples: 4 } algorithm: ALGORITHM_SFT hyperparameters { steps: 3 '
                'prompts_per_step: 2 rollouts_per_prompt: 2 learning_rate: 0.01 '
                'max_new_tokens: 8 temperature: 0.8 } apply_chat_template: true '
                'description: "d"',
        "regex": 'model: "tiny" output_vector: "v" examples { examples { prompt: "p" '
                 'answer: "a" } } reward { type: TYPE_REGEX pattern: "answer: (\\\\w+)" '
                 'correct_reward: 1 incorrect_reward: -1 format_reward: 0.1 } '
                 'eval { examples { examples { prompt: "q" answer: "b" } } }',
        "numeric": 'model: "tiny" output_vector: "v" task: "arith" '
                   'reward { type: TYPE_NUMERIC }',
    }
    for name, text in create.items():
        write("create_job", name, protoc("CreateJobRequest", text))


if __name__ == "__main__":
    safetensors_seeds()
    config_seeds()
    tokenizer_seeds()
    chat_template_seeds()
    dataset_seeds()
    vector_ref_seeds()
    proto_seeds()
