#!/usr/bin/env python3
"""How much a shapes-world text encoder's output moves when a caption changes one thing.

Reads MODEL/text_encoder (safetensors, CLIPTextModel config) and MODEL/tokenizer/vocab.json and
encodes caption pairs that differ in one respect: the two entities' colours swapped, their kinds
swapped, the background changed. Prints, per token, |e(a) - e(b)| / |e(a)| and the mean over the
padding tokens, which see the whole caption. A decoder that binds each colour to its shape needs
the swap to show in the tokens it attends to. The encoder here is transformers' CLIPTextModel
written out (quick_gelu only): on ../shared/golden/clip/clip_text_quickgelu it matches the
reference last_hidden_state to 1.2e-6. Needs torch (the project's venv):
  ~/.cache/kosmosg-torch/bin/python scripts/probe_binding.py models/shapes
"""
import json
import struct
import sys

import torch

PAIRS = [
    ("colours swapped", "a green square next to a red circle on a blue background",
     "a red square next to a green circle on a blue background"),
    ("colours swapped", "a yellow triangle next to a blue square on a red background",
     "a blue triangle next to a yellow square on a red background"),
    ("kinds swapped", "a green square next to a red circle on a blue background",
     "a green circle next to a red square on a blue background"),
    ("background changed", "a green square next to a red circle on a blue background",
     "a green square next to a red circle on a yellow background"),
]


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    types = {"F16": torch.float16, "F32": torch.float32, "I64": torch.int64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in types:
            sys.exit(f"{path}: {name} is {info['dtype']}, expected F16, F32 or I64")
        start, end = info["data_offsets"]
        raw = bytearray(data[8 + n + start:8 + n + end])
        tensor = torch.frombuffer(raw, dtype=types[info["dtype"]]).reshape(info["shape"])
        out[name] = tensor if info["dtype"] == "I64" else tensor.float()
    return out


class TextEncoder:
    def __init__(self, model):
        self.w = read_safetensors(f"{model}/text_encoder/model.safetensors")
        config = json.load(open(f"{model}/text_encoder/config.json"))
        self.width, self.heads = config["hidden_size"], config["num_attention_heads"]
        self.layers, self.eps = config["num_hidden_layers"], config.get("layer_norm_eps", 1e-5)
        self.length = config.get("max_position_embeddings", 77)
        if config.get("hidden_act", "quick_gelu") != "quick_gelu":
            sys.exit(f"{model}/text_encoder/config.json: hidden_act {config['hidden_act']}, expected quick_gelu")
        self.vocab = json.load(open(f"{model}/tokenizer/vocab.json"))

    def tokens(self, caption):
        ids = [self.vocab["<|startoftext|>"]]
        for word in caption.split():
            if word + "</w>" not in self.vocab:
                sys.exit(f"'{word}' is not one token of {len(self.vocab)}; the probe takes the world's words only")
            ids.append(self.vocab[word + "</w>"])
        end = self.vocab["<|endoftext|>"]
        return torch.tensor(ids + [end] * (self.length - len(ids))), len(ids) + 1

    def norm(self, x, p):
        return torch.nn.functional.layer_norm(x, (self.width,), self.w[p + ".weight"], self.w[p + ".bias"], self.eps)

    def linear(self, x, p):
        return x @ self.w[p + ".weight"].T + self.w[p + ".bias"]

    def __call__(self, caption):
        ids, words = self.tokens(caption)
        return self.hidden(ids), words

    def hidden(self, ids):
        """last_hidden_state [77, width] of one row of token ids, as transformers' CLIPTextModel."""
        x = self.w["text_model.embeddings.token_embedding.weight"][ids]
        x = x + self.w["text_model.embeddings.position_embedding.weight"][: self.length]
        causal = torch.full((self.length, self.length), float("-inf")).triu(1)
        for i in range(self.layers):
            p = f"text_model.encoder.layers.{i}"
            h = self.norm(x, p + ".layer_norm1")
            q, k, v = (self.linear(h, f"{p}.self_attn.{n}_proj").view(self.length, self.heads, -1).transpose(0, 1)
                       for n in "qkv")
            scores = q @ k.transpose(1, 2) / (self.width // self.heads) ** 0.5 + causal
            a = (torch.softmax(scores, -1) @ v).transpose(0, 1).reshape(self.length, self.width)
            x = x + self.linear(a, p + ".self_attn.out_proj")
            h = self.linear(self.norm(x, p + ".layer_norm2"), p + ".mlp.fc1")
            x = x + self.linear(h * torch.sigmoid(1.702 * h), p + ".mlp.fc2")
        return self.norm(x, "text_model.final_layer_norm")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    encoder = TextEncoder(sys.argv[1])
    for what, a, b in PAIRS:
        ea, words = encoder(a)
        eb, _ = encoder(b)
        change = ((ea - eb).norm(dim=-1) / ea.norm(dim=-1)).tolist()
        print(f"{what}: '{a}' / '{b}'")
        print("  per token:", " ".join(f"{c:.2f}" for c in change[:words]),
              f"| padding, mean: {sum(change[words:]) / len(change[words:]):.3f}")


if __name__ == "__main__":
    main()
