"""Shared pieces of the training recipe for the default scopewatch bundle.

Everything that must agree between training, export and evaluation lives
here: the input contract (size, scaling, mean/std), how a crop is read and
resized, the network, the metrics and the hand-written safetensors format.
The Go side (inference/) reproduces the input contract from manifest.json, so
a change here is a change of the bundle contract.
"""

import csv
import json
import os
import random
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image

INPUT_SIZE = 128
FEATURES_DIM = 576
CLASSES = ["uninfected", "parasitized"]  # index = class id; manifest order
SCALE = 1.0 / 255.0
MEAN = [0.485, 0.456, 0.406]  # ImageNet statistics, RGB order
STD = [0.229, 0.224, 0.225]
HEAD_HIDDEN = 100
HEAD_DROPOUT = 0.2

# Seeds at or above this value are reserved for evaluation (acceptance tests,
# demos, drift experiments) and must never be used to generate training data.
EVAL_SEED_FLOOR = 100000


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def limit_threads(n=2):
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set once in this process


# ---------------------------------------------------------------- data


def read_labels(data_dir):
    """Reads DIR/labels.csv (path,label,slide) written by `scopewatch synth cells`."""
    path = os.path.join(data_dir, "labels.csv")
    rows = []
    with open(path, newline="") as f:
        for i, rec in enumerate(csv.DictReader(f)):
            missing = {"path", "label", "slide"} - set(rec)
            if missing:
                raise ValueError(f"{path}: header lacks {sorted(missing)}")
            if rec["label"] not in CLASSES:
                raise ValueError(f"{path} row {i + 2}: label {rec['label']!r}, want one of {CLASSES}")
            rows.append((rec["path"], CLASSES.index(rec["label"]), rec["slide"]))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def resize_like_opencv(rgb):
    """Resizes an HxWx3 uint8 image to INPUT_SIZE^2, as cv::resize INTER_LINEAR does.

    Half-pixel centres, no antialiasing, rounded back to uint8: this is what
    the Go preprocessing (gocv) does at inference time, so the network is
    trained on the same pixels it will see in the field.
    """
    h, w = rgb.shape[:2]
    if (h, w) == (INPUT_SIZE, INPUT_SIZE):
        return rgb
    t = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=False)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def load_image(path):
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I"):
            arr = np.asarray(im, dtype=np.float64) / 257.0
            rgb = np.repeat(arr.round().clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
        else:
            rgb = np.asarray(im.convert("RGB"))
    return resize_like_opencv(rgb)


def load_crops(data_dir, rows=None):
    """Returns (images uint8 [N,128,128,3], labels int64 [N], slides list, paths list)."""
    if rows is None:
        rows = read_labels(data_dir)
    images = np.empty((len(rows), INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    # One small resize per crop: thread start-up would cost more than it
    # saves, and on a busy machine spinning OpenMP threads make it far worse.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, (rel, _, _) in enumerate(rows):
            images[i] = load_image(os.path.join(data_dir, rel))
    finally:
        torch.set_num_threads(threads)
    labels = np.array([r[1] for r in rows], dtype=np.int64)
    return images, labels, [r[2] for r in rows], [r[0] for r in rows]


def normalise(batch_u8_nhwc):
    """uint8 NHWC -> float32 NCHW normalised exactly as manifest.json says."""
    x = torch.as_tensor(batch_u8_nhwc).permute(0, 3, 1, 2).float() * SCALE
    return _standardise(x)


def _standardise(x):
    mean = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------- model


class Backbone(nn.Module):
    """MobileNetV3-Small up to the pooled 576-d features (what backbone.onnx computes)."""

    def __init__(self, net):
        super().__init__()
        self.features = net.features
        self.avgpool = net.avgpool

    def forward(self, image):
        return torch.flatten(self.avgpool(self.features(image)), 1)


class Head(nn.Module):
    """The seed article's head: Dense 100 ReLU, dropout, Dense 2 (softmax applied outside)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(FEATURES_DIM, HEAD_HIDDEN)
        self.dropout = nn.Dropout(HEAD_DROPOUT)
        self.fc2 = nn.Linear(HEAD_HIDDEN, len(CLASSES))

    def forward(self, features):
        return self.fc2(self.dropout(F.relu(self.fc1(features))))


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        # weights=None: trained from scratch (no pretrained weights are available
        # offline); see MODEL_CARD.md.
        self.backbone = Backbone(torchvision.models.mobilenet_v3_small(weights=None))
        self.head = Head()
        # torchvision sets BatchNorm momentum 0.01 for long ImageNet runs; a
        # from-scratch run of a few hundred steps needs running statistics
        # that follow the weights faster, or evaluation sees stale ones.
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1

    def forward(self, image):
        return self.head(self.backbone(image))


def load_checkpoint(path):
    ckpt = torch.load(path, map_location="cpu")
    model = Classifier()
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt


@torch.no_grad()
def predict(model, images_u8, batch=256):
    """Returns (p_parasitized float64 [N], features float32 [N,576]) in eval mode."""
    model.eval()
    probs, feats = [], []
    for i in range(0, len(images_u8), batch):
        f = model.backbone(normalise(images_u8[i : i + batch]))
        p = torch.softmax(model.head(f), dim=1)[:, 1]
        feats.append(f.numpy())
        probs.append(p.double().numpy())
    return np.concatenate(probs), np.concatenate(feats)


# ---------------------------------------------------------------- metrics


def auc(y, p):
    """Area under the ROC curve (Mann-Whitney, ties count one half)."""
    from scipy.stats import rankdata

    y = np.asarray(y)
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    r = rankdata(p)
    return float((r[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def metrics(y, p, threshold):
    y = np.asarray(y)
    pred = (np.asarray(p) >= threshold).astype(np.int64)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return {
        "n": int(len(y)),
        "positives": int((y == 1).sum()),
        "accuracy": (tp + tn) / len(y),
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2,
        "auc": auc(y, p),
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
    }


METRIC_KEYS = ["accuracy", "sensitivity", "specificity", "auc"]


def bootstrap_by_slide(y, p, slides, threshold, reps=2000, seed=0):
    """95% percentile intervals from a cluster bootstrap that resamples whole slides.

    Cells of one slide share stain, focus and illumination, so they are not
    independent; resampling slides gives honest (wider) intervals than
    resampling cells.
    """
    y, p = np.asarray(y), np.asarray(p)
    slides = np.asarray(slides)
    uniq = np.unique(slides)
    idx_by_slide = [np.flatnonzero(slides == s) for s in uniq]
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in METRIC_KEYS}
    for _ in range(reps):
        pick = rng.integers(0, len(uniq), len(uniq))
        idx = np.concatenate([idx_by_slide[j] for j in pick])
        m = metrics(y[idx], p[idx], threshold)
        for k in METRIC_KEYS:
            draws[k].append(m[k])
    out = {}
    for k in METRIC_KEYS:
        d = np.asarray(draws[k], dtype=np.float64)
        out[k] = [float(np.nanpercentile(d, 2.5)), float(np.nanpercentile(d, 97.5))]
    return {"method": "cluster bootstrap over slides, percentile", "reps": reps, "seed": seed,
            "slides": int(len(uniq)), "ci95": out}


def choose_threshold(y, p):
    """Threshold on p(parasitized) maximising balanced accuracy.

    Candidates are the midpoints between consecutive distinct scores. Among
    equally good thresholds the one nearest 0.5 is kept, so a cleanly
    separated validation set does not push the threshold against one class.
    """
    y, p = np.asarray(y), np.asarray(p, dtype=np.float64)
    s = np.unique(p)
    cands = np.concatenate([[0.0], (s[:-1] + s[1:]) / 2, [np.nextafter(1.0, 2.0)]])
    bal = np.array([metrics(y, p, t)["balanced_accuracy"] for t in cands])
    best = bal.max()
    # Each optimal candidate stands for the open interval between its two
    # neighbouring scores; prefer 0.5 itself when it lies in such an interval.
    lo = np.concatenate([[0.0], s])
    hi = np.concatenate([s, [1.0]])
    for t, a, b, v in zip(cands, lo, hi, bal):
        if v == best and a < 0.5 <= b:
            return 0.5, float(best)
    opt = cands[bal == best]
    return float(opt[np.argmin(np.abs(opt - 0.5))]), float(best)


# ---------------------------------------------------------------- safetensors


def write_safetensors(path, tensors):
    """Writes {name: float32 ndarray} in the safetensors format.

    Layout: 8-byte little-endian header length, a JSON header
    {name: {dtype, shape, data_offsets}} padded with spaces to a multiple of
    8 bytes, then the raw little-endian tensor bytes back to back.
    """
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        a = np.ascontiguousarray(arr, dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if spec["dtype"] != "F32":
            raise ValueError(f"{path}: {name}: dtype {spec['dtype']}, want F32")
        a, b = spec["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype="<f4").reshape(spec["shape"])
    return out


def head_tensors(head):
    """The head's weights under the tensor names the Go head reads (PyTorch layout, out x in)."""
    sd = {k: v.detach().cpu().numpy() for k, v in head.state_dict().items()}
    return {
        "fc1.weight": sd["fc1.weight"],
        "fc1.bias": sd["fc1.bias"],
        "fc2.weight": sd["fc2.weight"],
        "fc2.bias": sd["fc2.bias"],
    }


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
