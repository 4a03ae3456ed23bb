"""Writes head_torch_small.safetensors and head_torch_small.json: a small
head built from torch.nn modules (Linear 16->100, ReLU, Dropout, Linear
100->2, softmax), its state_dict in safetensors form, and torch's float32
probabilities on fixed random features. TestHeadMatchesTorchSmall checks the
Go head against them independently of the shipped model.

  /usr/bin/python3 gen_head_torch_small.py   (run in inference/testdata)
"""
import json
import struct

import torch
import torch.nn as nn

torch.manual_seed(20261128)
IN, HIDDEN, CLASSES, N = 16, 100, 2, 12


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x):
        return torch.softmax(self.fc2(self.drop(torch.relu(self.fc1(x)))), dim=1)


head = Head().eval()
# Non-negative, spread-out features like a pooled hardswish output; a few
# rows scaled up so that some logits are large.
feats = torch.relu(torch.randn(N, IN) * 2)
feats[0] *= 0
feats[1] *= 25
with torch.no_grad():
    probs = head(feats)

# safetensors by hand (the format is an 8-byte length, a JSON header, data).
sd = {k: v.contiguous().float() for k, v in head.state_dict().items()}
header, blobs, off = {}, [], 0
for name in sorted(sd):
    raw = sd[name].numpy().astype("<f4").tobytes()
    header[name] = {"dtype": "F32", "shape": list(sd[name].shape), "data_offsets": [off, off + len(raw)]}
    blobs.append(raw)
    off += len(raw)
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open("head_torch_small.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))

with open("head_torch_small.json", "w") as f:
    json.dump({
        "features_dim": IN,
        "classes": CLASSES,
        "cases": [{"features": [float(v) for v in x], "probabilities": [float(p) for p in pr]}
                  for x, pr in zip(feats.numpy(), probs.double().numpy())],
    }, f, indent=1)
    f.write("\n")
