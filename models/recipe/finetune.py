"""Fine-tunes an incumbent bundle's backbone and head on labelled crops: one tuning trial.

  /usr/bin/python3 finetune.py --incumbent BUNDLE --train DIR [--train DIR ...] [--val DIR ...] < trial.json

Speaks the trial protocol of tuning/doc.go: one JSON object on stdin
  {"trial": N, "seed": S, "params": {...}, "max_epochs": E, "dir": "<trial folder>"}
and one JSON line per epoch on stdout (epoch, train_loss, val_loss, val_acc,
lr, best_epoch, seconds), then a last line without "epoch" that carries the
kept (best) epoch's val_loss, which is the trial's value. Exit non-zero on
any failure (a NaN loss included).

The incumbent's backbone.onnx is turned back into a torch MobileNetV3-Small
(BatchNorm is folded into the convs in the exported graph: the fused conv
weights and biases are loaded and every BatchNorm becomes an identity), its
head.safetensors into the seed article's head. Blocks features.<unfreeze_from>
.. features.12 and the head are trained, the blocks before stay frozen (their
activations are computed once per trial and cached when there is no
augmentation). The incumbent itself is epoch 0: a trial never keeps weights
worse on validation than the incumbent's.

Data: every --train / --val DIR holds labels.csv (path,label,slide[,split])
as `scopewatch synth cells` writes. With --val, those folders are the
validation set. Without it, rows whose split column says "val" are validation;
if there is no split column, a seeded shuffle of each --train folder's slides
(--split-seed, the same for every trial) puts --val-frac of its slides into
validation. Slides are never in both. Folders named seed-<S> with S >= 100000
are refused (reserved for evaluation).

Writes into the trial folder:
  backbone.onnx      image [N,3,128,128] -> features [N,576], opset 17, dynamic batch (as export.py)
  head.safetensors   export.py's format (fc1.weight [100,576], fc1.bias, fc2.weight [2,100], fc2.bias)
  manifest.json      the incumbent's manifest, unsigned and without file hashes, with the new
                     threshold; `scopewatch bundle seal` (and a baseline) make it a bundle
  finetune.json      params, data, split, epochs, threshold, validation metrics, timings

params (all optional): lr (1e-3), weight_decay (1e-5), unfreeze_from (0: the whole
network; 12: only the last 1x1 conv; 13: the head only), epochs (capped by
max_epochs; default max_epochs), patience (3, early stopping on val_loss),
batch_size (64), augment (0 or 1: augment.py on the pixels, slower),
prevalence (0.1: the threshold minimises expected FP+FN at this prevalence;
ties nearest 0.5).
"""

import argparse
import copy
import csv
import json
import math
import os
import re
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import common
from augment import augment

OPSET = 17
N_BLOCKS = 13  # mobilenet_v3_small.features[0..12]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--incumbent", required=True, help="bundle folder: backbone.onnx, head.safetensors, manifest.json")
    ap.add_argument("--train", action="append", required=True, help="labelled folder (repeatable)")
    ap.add_argument("--val", action="append", default=[], help="validation folder (repeatable)")
    ap.add_argument("--val-frac", type=float, default=0.2, help="share of each --train folder's slides (no --val, no split column)")
    ap.add_argument("--split-seed", type=int, default=1, help="seed of the slide split (not the trial seed: every trial sees the same split)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-export", action="store_true", help="train and report only")
    return ap.parse_args()


# ---------------------------------------------------------------- model


def recover_backbone(onnx_path):
    """torch Backbone with the weights of an exported (BatchNorm-folded) backbone.onnx."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(onnx_path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    bb = common.Backbone(torchvision.models.mobilenet_v3_small(weights=None))
    tconvs = [(k, mod) for k, mod in bb.named_modules() if isinstance(mod, nn.Conv2d)]
    if len(tconvs) != len(convs):
        raise SystemExit(f"{onnx_path}: {len(convs)} Conv nodes, mobilenet_v3_small has {len(tconvs)}")
    for (k, mod), n in zip(tconvs, convs):
        # Nodes are in module order; their output names carry the module path.
        if not all(p in n.output[0] for p in k.split(".")):
            raise SystemExit(f"{onnx_path}: Conv node {n.output[0]} does not match module {k}")
        if len(n.input) < 3:
            raise SystemExit(f"{onnx_path}: Conv node {n.output[0]} has no bias (BatchNorm not folded?)")
        w, b = inits[n.input[1]], inits[n.input[2]]
        if tuple(w.shape) != tuple(mod.weight.shape):
            raise SystemExit(f"{onnx_path}: {k}: weight {w.shape}, want {tuple(mod.weight.shape)}")
        mod.weight = nn.Parameter(torch.from_numpy(w.copy()))
        mod.bias = nn.Parameter(torch.from_numpy(b.copy()))

    def strip(mod):
        for name, ch in mod.named_children():
            if isinstance(ch, nn.BatchNorm2d):
                setattr(mod, name, nn.Identity())
            else:
                strip(ch)

    strip(bb)
    return bb.eval()


def load_head(path):
    head = common.Head()
    w = common.read_safetensors(path)
    head.load_state_dict({k: torch.from_numpy(np.array(w[k])) for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")})
    return head


class Tail(nn.Module):
    def __init__(self, blocks, head):
        super().__init__()
        self.blocks = blocks
        self.head = head

    def forward(self, z):
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.blocks(z), 1), 1))


class Exported(nn.Module):
    """Backbone as export.py exports it: features -> avgpool -> flatten."""

    def __init__(self, features):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, image):
        return torch.flatten(self.avgpool(self.features(image)), 1)


# ---------------------------------------------------------------- data


def check_seed(d):
    m = re.fullmatch(r"seed-(\d+)", os.path.basename(os.path.normpath(d)))
    if m and int(m.group(1)) >= common.EVAL_SEED_FLOOR:
        raise SystemExit(f"{d}: seed {m.group(1)} is reserved for evaluation (>= {common.EVAL_SEED_FLOOR})")


def read_folder(d):
    """(rows, split column or None): rows are (path, label, slide) as common.read_labels."""
    check_seed(d)
    rows = common.read_labels(d)
    with open(os.path.join(d, "labels.csv"), newline="") as f:
        recs = list(csv.DictReader(f))
    split = None
    if recs and "split" in recs[0]:
        split = [r["split"].strip() for r in recs]
        bad = sorted(set(split) - {"train", "val"})
        if bad:
            raise SystemExit(f"{d}/labels.csv: split values {bad}, want train or val")
    return rows, split


def load_data(args):
    """Returns (train, val, description); train/val are (images u8, labels, slide ids)."""
    parts = {"train": [], "val": []}
    desc = {"train": [], "val": [], "rule": ""}

    def add(name, d, rows):
        if not rows:
            return
        im, y, s, _ = common.load_crops(d, rows)
        tag = os.path.abspath(d)
        parts[name].append((im, y, np.array([f"{tag}#{x}" for x in s])))
        desc[name].append({"dir": tag, "crops": len(rows), "slides": len(set(s)),
                           "parasitized": int(sum(r[1] for r in rows))})

    for d in args.train:
        rows, split = read_folder(d)
        if args.val:
            add("train", d, rows)
            desc["rule"] = "validation: the --val folders"
        elif split is not None:
            add("train", d, [r for r, s in zip(rows, split) if s == "train"])
            add("val", d, [r for r, s in zip(rows, split) if s == "val"])
            desc["rule"] = "validation: rows with split=val"
        else:
            slides = sorted(set(r[2] for r in rows))
            rng = np.random.default_rng(args.split_seed)
            k = max(1, int(round(args.val_frac * len(slides))))
            if k >= len(slides):
                raise SystemExit(f"{d}: {len(slides)} slides, too few for a slide-disjoint validation split")
            val = set(rng.permutation(np.array(slides))[:k].tolist())
            add("train", d, [r for r in rows if r[2] not in val])
            add("val", d, [r for r in rows if r[2] in val])
            desc["rule"] = f"validation: {args.val_frac:g} of each folder's slides, split seed {args.split_seed}"
    for d in args.val:
        rows, _ = read_folder(d)
        add("val", d, rows)
    out = []
    for name in ("train", "val"):
        if not parts[name]:
            raise SystemExit(f"no {name} crops")
        im = np.concatenate([p[0] for p in parts[name]])
        y = np.concatenate([p[1] for p in parts[name]])
        s = np.concatenate([p[2] for p in parts[name]])
        if y.min() == y.max():
            raise SystemExit(f"{name} set has only one class")
        out.append((im, y, s))
    if set(out[0][2].tolist()) & set(out[1][2].tolist()):
        raise SystemExit("a slide is in both train and val")
    return out[0], out[1], desc


# ---------------------------------------------------------------- metrics


def choose_threshold(y, p, prevalence):
    """Minimises expected FP+FN at the given prevalence: (1-prev)*FPR + prev*FNR; ties nearest 0.5."""
    y, p = np.asarray(y), np.asarray(p, dtype=np.float64)
    s = np.unique(p)
    cands = np.concatenate([[0.0], (s[:-1] + s[1:]) / 2, [np.nextafter(1.0, 2.0)]])
    order = np.argsort(p)
    ps, ys = p[order], y[order]
    npos, nneg = int((y == 1).sum()), int((y == 0).sum())
    # predictions >= t are positive: count below each candidate with searchsorted
    below = np.searchsorted(ps, cands, side="left")
    fn = np.concatenate([[0], np.cumsum(ys == 1)])[below]
    tn = np.concatenate([[0], np.cumsum(ys == 0)])[below]
    fp = nneg - tn
    cost = (1 - prevalence) * fp / nneg + prevalence * fn / npos
    best = cost.min()
    opt = cands[cost <= best + 1e-12]
    return float(opt[np.argmin(np.abs(opt - 0.5))]), float(best)


def rates(y, p, t):
    pred = np.asarray(p) >= t
    y = np.asarray(y) == 1
    return {"n": int(len(y)), "accuracy": float((pred == y).mean()), "sensitivity": float(pred[y].mean()),
            "specificity": float((~pred[~y]).mean())}


# ---------------------------------------------------------------- trial


def main():
    args = parse_args()
    trial = json.loads(sys.stdin.readline())
    params = trial.get("params") or {}
    known = {"lr", "weight_decay", "unfreeze_from", "epochs", "patience", "batch_size", "augment", "prevalence"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise SystemExit(f"unknown parameters {unknown}; known: {sorted(known)}")
    seed = int(trial.get("seed", 1))
    # The Go runner's seeds are 64-bit; numpy's legacy seeding takes 32 bits.
    seed32 = seed % (1 << 32)
    out_dir = trial.get("dir") or "."
    lr = float(params.get("lr", 1e-3))
    wd = float(params.get("weight_decay", 1e-5))
    start = int(params.get("unfreeze_from", 0))
    max_epochs = int(trial.get("max_epochs") or 0)
    epochs = int(params.get("epochs", max_epochs or 10))
    if max_epochs:
        epochs = min(epochs, max_epochs)
    patience = int(params.get("patience", 3))
    batch = int(params.get("batch_size", 64))
    use_aug = bool(int(params.get("augment", 0)))
    prevalence = float(params.get("prevalence", 0.1))
    if not 0 <= start <= N_BLOCKS:
        raise SystemExit(f"unfreeze_from {start}: want 0..{N_BLOCKS}")
    if not (lr > 0 and epochs >= 1 and batch >= 2 and 0 < prevalence < 1):
        raise SystemExit(f"bad parameters: lr {lr}, epochs {epochs}, batch_size {batch}, prevalence {prevalence}")

    common.limit_threads(args.threads)
    common.seed_everything(seed32)
    torch.use_deterministic_algorithms(True)
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()

    bb = recover_backbone(os.path.join(args.incumbent, "backbone.onnx"))
    head = load_head(os.path.join(args.incumbent, "head.safetensors"))
    trunk = bb.features[:start].eval()
    for p in trunk.parameters():
        p.requires_grad_(False)
    tail = Tail(bb.features[start:], head)

    (xtr, ytr, str_), (xva, yva, sva), desc = load_data(args)
    t_load = time.time() - t0
    log(f"train {len(ytr)} crops ({len(set(str_.tolist()))} slides), val {len(yva)} crops "
        f"({len(set(sva.tolist()))} slides); unfreeze_from {start}, lr {lr:g}, wd {wd:g}, aug {use_aug}")

    @torch.no_grad()
    def run_trunk(x_u8, b=250):
        return torch.cat([trunk(common.normalise(x_u8[i : i + b])) for i in range(0, len(x_u8), b)])

    t = time.time()
    zva = run_trunk(xva)
    ztr = None if use_aug else run_trunk(xtr)
    t_cache = time.time() - t
    yva_t, ytr_t = torch.from_numpy(yva), torch.from_numpy(ytr)

    @torch.no_grad()
    def val_eval(b=500):
        tail.eval()
        logits = torch.cat([tail(zva[i : i + b]) for i in range(0, len(zva), b)])
        loss = F.cross_entropy(logits, yva_t).item()
        acc = (logits.argmax(1) == yva_t).float().mean().item()
        return loss, acc, torch.softmax(logits, 1)[:, 1].double().numpy()

    params_t = [p for p in tail.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params_t, lr=lr, weight_decay=wd)
    g = torch.Generator().manual_seed(seed32)

    v0, a0, _ = val_eval()
    best = {"epoch": 0, "val_loss": v0, "val_acc": a0}
    best_state = copy.deepcopy(tail.state_dict())
    log(f"incumbent (epoch 0): val loss {v0:.5f} acc {a0:.4f}")
    rows, since = [], 0
    t_train = time.time()
    for epoch in range(1, epochs + 1):
        te = time.time()
        tail.train()
        perm = torch.randperm(len(ytr), generator=g).numpy()
        tot, seen = 0.0, 0
        for i in range(0, len(perm) - batch + 1, batch):
            idx = np.sort(perm[i : i + batch])
            if use_aug:
                x = torch.from_numpy(xtr[idx]).permute(0, 3, 1, 2).float() * common.SCALE
                with torch.no_grad():
                    z = trunk(common._standardise(augment(x, g)))
            else:
                z = ztr[idx]
            loss = F.cross_entropy(tail(z), ytr_t[idx])
            if not torch.isfinite(loss):
                raise SystemExit(f"epoch {epoch}: loss {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
            seen += len(idx)
        vl, va, _ = val_eval()
        if not math.isfinite(vl):
            raise SystemExit(f"epoch {epoch}: val loss {vl}")
        if vl < best["val_loss"]:
            best, best_state, since = {"epoch": epoch, "val_loss": vl, "val_acc": va}, copy.deepcopy(tail.state_dict()), 0
        else:
            since += 1
        row = {"epoch": epoch, "train_loss": tot / seen, "val_loss": vl, "val_acc": va, "lr": lr,
               "best_epoch": best["epoch"], "seconds": round(time.time() - te, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if since >= patience:
            log(f"early stop after epoch {epoch}: no val-loss improvement for {since} epochs")
            break
    t_train = time.time() - t_train

    tail.load_state_dict(best_state)
    vl, va, pva = val_eval()
    threshold, cost = choose_threshold(yva, pva, prevalence)
    val_at = rates(yva, pva, threshold)

    t_export = 0.0
    if not args.no_export:
        te = time.time()
        export(bb, head, args.incumbent, out_dir, threshold, xva[:16])
        t_export = time.time() - te
    common.write_json(os.path.join(out_dir, "finetune.json"), {
        "incumbent": os.path.abspath(args.incumbent),
        "trial": trial.get("trial"), "seed": seed, "seed32": seed32,
        "params": {"lr": lr, "weight_decay": wd, "unfreeze_from": start, "epochs": epochs, "patience": patience,
                   "batch_size": batch, "augment": int(use_aug), "prevalence": prevalence},
        "data": desc,
        "incumbent_val": {"val_loss": v0, "val_acc": a0},
        "best_epoch": best["epoch"], "val_loss": vl, "val_acc": va, "epochs": rows,
        "threshold": threshold,
        "threshold_rule": f"minimises (1-p)*FPR + p*FNR on validation at prevalence p={prevalence:g} (ties: nearest 0.5)",
        "val_at_threshold": val_at,
        "seconds": {"load": t_load, "cache": t_cache, "train": t_train, "export": t_export, "total": time.time() - t0},
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__},
    })
    print(json.dumps({"best_epoch": best["epoch"], "val_loss": vl, "val_acc": va, "threshold": threshold,
                      "val_sensitivity": val_at["sensitivity"], "val_specificity": val_at["specificity"]}), flush=True)


def export(bb, head, incumbent, out_dir, threshold, probe_u8):
    model = Exported(bb.features).eval()
    onnx_path = os.path.join(out_dir, "backbone.onnx")
    dummy = torch.zeros(1, 3, common.INPUT_SIZE, common.INPUT_SIZE)
    torch.onnx.export(model, dummy, onnx_path, input_names=["image"], output_names=["features"],
                      dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
                      opset_version=OPSET, do_constant_folding=True, export_params=True)
    import onnx

    onnx.checker.check_model(onnx.load(onnx_path), full_check=True)
    # The exported graph must give this trial's features: recover it and compare.
    with torch.no_grad():
        x = common.normalise(probe_u8)
        want = model(x)
        got = recover_backbone(onnx_path)(x)
    diff = (want - got).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"{onnx_path}: re-read backbone differs from the trained one by {diff:.3g}")
    head_path = os.path.join(out_dir, "head.safetensors")
    tensors = common.head_tensors(head)
    common.write_safetensors(head_path, tensors)
    back = common.read_safetensors(head_path)
    for k, v in tensors.items():
        if not np.array_equal(back[k], v):
            raise SystemExit(f"{head_path}: {k} did not round-trip")
    with open(os.path.join(incumbent, "manifest.json")) as f:
        man = json.load(f)
    for k in ("signer", "signature", "baseline"):
        man.pop(k, None)
    man["files"] = {}
    man["threshold"] = threshold
    common.write_json(os.path.join(out_dir, "manifest.json"), man)


if __name__ == "__main__":
    main()
