#!/usr/bin/env python3
"""Where a shapes-world decoder's UNet looks in its caption: the cross-attention of every block,
split into the left and the right half of the latent (a two-entity scene puts its first entity on
the left), for each entity's colour and kind word and for the padding after the caption.

A decoder that binds each colour to its shape reads the first colour on the left and the second on
the right; one that reads a colour alike in both halves, or reads the padding (which sees the whole
caption and so carries a bag of its words), cannot. The UNet runs on pure noise at timesteps 900,
600 and 300 (seeded), and the attention is averaged over heads, queries of each half and the three
timesteps. Needs torch, diffusers and transformers, e.g. in a virtual environment of its own:
  python3 -m venv ~/.cache/kosmosg-probe && ~/.cache/kosmosg-probe/bin/pip install torch diffusers transformers
  ~/.cache/kosmosg-probe/bin/python scripts/probe_attention.py models/shapes
"""
import sys

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from transformers import CLIPTextModel, CLIPTokenizer

CAPTIONS = [
    "a green square next to a red circle on a blue background",
    "a yellow triangle next to a blue square on a red background",
]
COLOURS = {"red", "green", "blue", "yellow", "purple", "orange", "cyan"}
KINDS = {"circle", "square", "triangle"}
TIMESTEPS = (900, 600, 300)


class HalvesRecorder(AttnProcessor):
    """Computes attention as diffusers' AttnProcessor does, and keeps each cross-attention's
    probabilities averaged over heads and over the queries of the left and the right half."""

    def __init__(self, name, records):
        super().__init__()
        self.name, self.records = name, records

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None:
            query = attn.head_to_batch_dim(attn.to_q(hidden_states))
            key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
            probs = attn.get_attention_scores(query, key, None).mean(0)  # queries x tokens
            side = int(probs.shape[0] ** 0.5)
            grid = probs.view(side, side, -1)
            halves = torch.stack([grid[:, :side // 2].mean((0, 1)), grid[:, side // 2:].mean((0, 1))])
            self.records.setdefault(self.name, []).append(halves)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: probe_attention.py MODEL (a diffusers folder with unet/, text_encoder/, tokenizer/)")
    model = sys.argv[1]
    torch.set_num_threads(1)
    unet = UNet2DConditionModel.from_pretrained(f"{model}/unet").eval()
    encoder = CLIPTextModel.from_pretrained(f"{model}/text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(f"{model}/tokenizer")
    length = encoder.config.max_position_embeddings
    records = {}
    unet.set_attn_processor({name: HalvesRecorder(name, records) for name in unet.attn_processors})
    generator = torch.Generator().manual_seed(0)
    channels, size = unet.config.in_channels, unet.config.sample_size
    with torch.no_grad():
        for caption in CAPTIONS:
            ids = tokenizer(caption, padding="max_length", max_length=length, truncation=True,
                            return_tensors="pt").input_ids
            used = len(tokenizer(caption).input_ids)  # bos, the words, eos
            words = [tokenizer.convert_ids_to_tokens(int(i)).replace("</w>", "") for i in ids[0, :used]]
            colours = [i for i, w in enumerate(words) if w in COLOURS][:2]
            kinds = [i for i, w in enumerate(words) if w in KINDS][:2]
            states = encoder(ids).last_hidden_state
            records.clear()
            for t in TIMESTEPS:
                unet(torch.randn(1, channels, size, size, generator=generator), torch.tensor([t]),
                     encoder_hidden_states=states)
            print(f"{caption}  ({used} tokens with bos and eos, {length - used} padding)")
            for name, halves in records.items():
                p = torch.stack(halves).mean(0)
                cells = []
                for side, label in ((0, "left"), (1, "right")):
                    parts = [f"{words[i]}:{p[side, i]:.2f}" for i in colours + kinds]
                    cells.append(f"{label} " + " ".join(parts) + f" padding:{p[side, used:].sum():.2f}")
                print(f"  {name.split('.attn2')[0]:48s} " + " | ".join(cells))


if __name__ == "__main__":
    main()
