"""Trains MobileNetV3-Small + the seed article's head on synthetic cell crops.

  /usr/bin/python3 train.py --data DIR [--data DIR2 ...] --work WORK

Each DIR is the output of `scopewatch synth cells` (DIR/labels.csv). Crops are
split by slide into train / validation / test (no slide in two splits), the
network is trained from scratch with Adam, reduce-on-plateau and early stopping
on the validation loss, the best epoch's weights are kept, and the decision
threshold is chosen on the validation set. Writes into WORK:
  checkpoint.pt       best weights + split + threshold
  splits.json         which slides went where, with counts
  curves.csv/.png     per-epoch loss and accuracy, train and validation
  train_summary.json  configuration, versions, timings, validation metrics
"""

import argparse
import copy
import csv
import os
import platform
import re
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import common
from augment import augment


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True, help="synth cells output folder (repeatable)")
    ap.add_argument("--work", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=20261128, help="seed for init, shuffling, augmentation, split")
    ap.add_argument("--epochs", type=int, default=4, help="maximum epochs")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (seed article: 0.003)")
    ap.add_argument("--weight-decay", type=float, default=1e-5)
    ap.add_argument("--plateau-factor", type=float, default=0.3)
    ap.add_argument("--plateau-patience", type=int, default=2)
    ap.add_argument("--early-stop-patience", type=int, default=4, help="epochs without val-loss improvement")
    ap.add_argument("--val-frac", type=float, default=0.15)
    ap.add_argument("--test-frac", type=float, default=0.15)
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args()


def data_seed(d):
    """The generator seed of a folder named seed-<S> (as the Makefile names them), or None."""
    m = re.fullmatch(r"seed-(\d+)", os.path.basename(os.path.normpath(d)))
    return int(m.group(1)) if m else None


def load_pool(dirs):
    """Loads every folder; slide ids are prefixed by the folder so seeds never collide."""
    imgs, labels, slides, paths = [], [], [], []
    for d in dirs:
        seed = data_seed(d)
        if seed is not None and seed >= common.EVAL_SEED_FLOOR:
            sys.exit(f"{d}: seed {seed} is reserved for evaluation (>= {common.EVAL_SEED_FLOOR}); "
                     "train only on seeds below it")
        tag = os.path.basename(os.path.normpath(d))
        im, y, s, p = common.load_crops(d)
        imgs.append(im)
        labels.append(y)
        slides += [f"{tag}/{x}" for x in s]
        paths += [os.path.join(d, x) for x in p]
    return np.concatenate(imgs), np.concatenate(labels), np.array(slides), paths


def split_slides(slides, labels, val_frac, test_frac, seed):
    """Assigns whole slides to splits, walking a seeded shuffle until each split has its share of cells."""
    uniq, counts = np.unique(slides, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    n = len(slides)
    want = {"test": test_frac * n, "val": val_frac * n}
    got = {"test": 0, "val": 0}
    assign = {}
    for j in order:
        s = uniq[j]
        for name in ("test", "val"):
            if got[name] < want[name]:
                assign[s] = name
                got[name] += counts[j]
                break
        else:
            assign[s] = "train"
    split = np.array([assign[s] for s in slides])
    for name in ("train", "val", "test"):
        ys = labels[split == name]
        if len(ys) == 0 or ys.min() == ys.max():
            sys.exit(f"split {name!r} has {len(ys)} crops and not both classes: generate more slides")
    return split


def describe(split, slides, labels):
    out = {}
    for name in ("train", "val", "test"):
        m = split == name
        out[name] = {
            "slides": sorted(set(slides[m].tolist())),
            "n_slides": int(len(set(slides[m].tolist()))),
            "n_crops": int(m.sum()),
            "parasitized": int((labels[m] == 1).sum()),
            "uninfected": int((labels[m] == 0).sum()),
        }
    return out


@torch.no_grad()
def evaluate_loss(model, images, labels, batch=256):
    model.eval()
    tot_loss, correct = 0.0, 0
    for i in range(0, len(images), batch):
        x = common.normalise(images[i : i + batch])
        y = torch.from_numpy(labels[i : i + batch])
        logits = model(x)
        tot_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return tot_loss / len(images), correct / len(images)


def plot_curves(rows, best_epoch, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    a1.plot(ep, [r["val_loss"] for r in rows], "o-", label="validation")
    a1.set_xlabel("epoch")
    a1.set_ylabel("cross-entropy loss")
    a1.set_yscale("log")
    a2.plot(ep, [r["train_acc"] for r in rows], "o-", label="train (augmented)")
    a2.plot(ep, [r["val_acc"] for r in rows], "o-", label="validation")
    a2.set_xlabel("epoch")
    a2.set_ylabel("accuracy (argmax)")
    for a in (a1, a2):
        a.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"kept: epoch {best_epoch}")
        a.grid(alpha=0.3)
        a.legend()
    # Mark learning-rate reductions, which explain kinks in the curves.
    for prev, cur in zip(rows, rows[1:]):
        if cur["lr"] < prev["lr"]:
            for a in (a1, a2):
                a.axvline(cur["epoch"], color="red", ls=":", lw=1)
    fig.suptitle("MobileNetV3-Small from scratch, synthetic crops (red dotted: LR x0.3)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    args = parse_args()
    common.limit_threads(args.threads)
    common.seed_everything(args.seed)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.work, exist_ok=True)

    t0 = time.time()
    images, labels, slides, paths = load_pool(args.data)
    split = split_slides(slides, labels, args.val_frac, args.test_frac, args.seed)
    splits = describe(split, slides, labels)
    common.write_json(os.path.join(args.work, "splits.json"), splits)
    for name in ("train", "val", "test"):
        s = splits[name]
        print(f"{name}: {s['n_slides']} slides, {s['n_crops']} crops "
              f"({s['parasitized']} parasitized)", flush=True)
    print(f"loaded in {time.time() - t0:.0f}s", flush=True)

    tr, va = split == "train", split == "val"
    xtr, ytr = images[tr], labels[tr]
    xva, yva = images[va], labels[va]

    model = common.Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=args.plateau_factor, patience=args.plateau_patience)
    g = torch.Generator().manual_seed(args.seed)

    rows, best, best_state, since_best = [], None, None, 0
    t_train = time.time()
    for epoch in range(1, args.epochs + 1):
        te = time.time()
        model.train()
        perm = torch.randperm(len(xtr), generator=g).numpy()
        tot_loss, correct, seen = 0.0, 0, 0
        for i in range(0, len(perm) - args.batch + 1, args.batch):  # drop ragged tail (BatchNorm)
            idx = np.sort(perm[i : i + args.batch])
            x = torch.from_numpy(xtr[idx]).permute(0, 3, 1, 2).float() * common.SCALE
            x = common._standardise(augment(x, g))
            y = torch.from_numpy(ytr[idx])
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            tot_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        val_loss, val_acc = evaluate_loss(model, xva, yva)
        lr = opt.param_groups[0]["lr"]
        row = {"epoch": epoch, "lr": lr, "train_loss": tot_loss / seen, "train_acc": correct / seen,
               "val_loss": val_loss, "val_acc": val_acc, "seconds": time.time() - te}
        rows.append(row)
        print("epoch {epoch:2d} lr {lr:.2e} train loss {train_loss:.4f} acc {train_acc:.4f} | "
              "val loss {val_loss:.4f} acc {val_acc:.4f} | {seconds:.0f}s".format(**row), flush=True)
        sched.step(val_loss)
        if best is None or val_loss < best["val_loss"]:
            best, best_state, since_best = row, copy.deepcopy(model.state_dict()), 0
        else:
            since_best += 1
            if since_best >= args.early_stop_patience:
                print(f"early stop: no val-loss improvement for {since_best} epochs", flush=True)
                break
    train_seconds = time.time() - t_train

    with open(os.path.join(args.work, "curves.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    plot_curves(rows, best["epoch"], os.path.join(args.work, "curves.png"))

    model.load_state_dict(best_state)
    p_val, _ = common.predict(model, xva)
    threshold, val_bal = common.choose_threshold(yva, p_val)
    val_metrics = common.metrics(yva, p_val, threshold)
    print(f"kept epoch {best['epoch']}; threshold {threshold:.6g} (val balanced accuracy {val_bal:.4f}, "
          f"AUC {val_metrics['auc']:.4f})", flush=True)

    torch.save({"model": best_state, "threshold": threshold, "seed": args.seed,
                "split": {"slides": slides.tolist(), "split": split.tolist(), "paths": paths,
                          "labels": labels.tolist()}},
               os.path.join(args.work, "checkpoint.pt"))
    common.write_json(os.path.join(args.work, "train_summary.json"), {
        "data": [{"dir": os.path.abspath(d), "seed": data_seed(d)} for d in args.data],
        "args": vars(args),
        "best_epoch": best["epoch"],
        "epochs_run": len(rows),
        "train_seconds": train_seconds,
        "threshold": threshold,
        "threshold_rule": "maximises balanced accuracy on the validation split (ties: nearest 0.5)",
        "val_metrics": val_metrics,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": __import__("torchvision").__version__, "numpy": np.__version__},
    })


if __name__ == "__main__":
    main()
