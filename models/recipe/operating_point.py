"""Chooses the bundle's decision threshold on segmented field cells.

  /usr/bin/python3 operating_point.py --cells CELLS.csv --bundle DIR --work WORK [--seed S]

CELLS.csv is `scopewatch fields` output for validation fields (never trained
on, never used for testing): one row per segmented cell with p_parasitized
and the truth label of the matching red cell.

Why not the crop validation split: the daemon counts cells it cut out of whole
fields itself, most of them uninfected. Those crops differ from the training
crops (mask edges, neighbours, look-alikes over cells), the uninfected cells'
scores have a longer upper tail, and at the low parasitemias of real slides a
threshold chosen for balanced crops turns that tail into a parasitemia
overestimate of several percentage points. So the threshold minimises the
number of misclassified cells (FP + FN) on field cells at the fields' own
prevalence; among equally good thresholds the one nearest 0.5 is kept.

Compares with the crop-validation threshold of training
(WORK/train_summary.json). Rewrites manifest.json's threshold (the bundle must be sealed afterwards) and
records the choice in WORK/operating_point.json for the model card.
"""

import argparse
import csv
import json
import os

import numpy as np

import common


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--seed", type=int, default=None, help="generator seed of the fields, recorded")
    return ap.parse_args()


def read_cells(path):
    p, y, slide = [], [], []
    unmatched = 0
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            # Cells the plausibility gate refused get no class in the
            # daemon either; they have no score.
            if row.get("rejected"):
                continue
            if row["truth"] not in ("parasitized", "uninfected"):
                unmatched += 1
                continue
            p.append(float(row["p_parasitized"]))
            y.append(1 if row["truth"] == "parasitized" else 0)
            slide.append(row["slide"])
    if not p:
        raise SystemExit(f"{path}: no cell matched a truth cell; was it written by `scopewatch fields` on synth fields?")
    return np.array(p), np.array(y, dtype=np.int64), np.array(slide), unmatched


def errors_at(p, y, t):
    pred = p >= t
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    return fp, fn


def choose(p, y):
    # Every distinct score is a cut point; a threshold between two adjacent
    # scores behaves like the upper one, so midpoints cover all outcomes.
    s = np.unique(p)
    cands = np.concatenate(([0.0], (s[:-1] + s[1:]) / 2, [1.0]))
    order = np.argsort(p)
    ps, ys = p[order], y[order]
    # FN(t) = positives below t; FP(t) = negatives at or above t.
    below = np.searchsorted(ps, cands, side="left")
    pos_cum = np.concatenate(([0], np.cumsum(ys)))
    neg_cum = np.concatenate(([0], np.cumsum(1 - ys)))
    fn = pos_cum[below]
    fp = neg_cum[-1] - neg_cum[below]
    err = fp + fn
    best = err.min()
    ok = np.flatnonzero(err == best)
    i = ok[np.argmin(np.abs(cands[ok] - 0.5))]
    return float(cands[i])


def slide_mae(p, y, slide, t):
    errs = []
    for s in np.unique(slide):
        m = slide == s
        errs.append(abs(np.mean(p[m] >= t) - np.mean(y[m])) * 100)
    return float(np.mean(errs)), len(errs)


def summary(p, y, slide, t):
    fp, fn = errors_at(p, y, t)
    mae, n = slide_mae(p, y, slide, t)
    neg, pos = int(np.sum(y == 0)), int(np.sum(y == 1))
    return {"threshold": t, "fp": fp, "fn": fn, "fp_rate": fp / max(neg, 1), "fn_rate": fn / max(pos, 1),
            "parasitemia_mae_pp": mae, "slides": n}


def main():
    args = parse_args()
    p, y, slide, unmatched = read_cells(args.cells)
    man_path = os.path.join(args.bundle, "manifest.json")
    with open(man_path) as f:
        man = json.load(f)
    # The crop-validation threshold from training, not the manifest's: on a
    # rerun the manifest already holds the previous field-chosen value.
    with open(os.path.join(args.work, "train_summary.json")) as f:
        before = float(json.load(f)["threshold"])
    t = choose(p, y)
    man["threshold"] = t
    # The hashes and signature no longer match; `scopewatch bundle seal` redoes them.
    man.pop("signature", None)
    common.write_json(man_path, man)
    out = {
        "rule": "minimises FP + FN on segmented field cells at the fields' prevalence (ties: nearest 0.5)",
        "source": {"cells": os.path.abspath(args.cells), "seed": args.seed},
        "cells": int(len(p)), "parasitized": int(y.sum()), "unmatched": unmatched,
        "slides": int(len(np.unique(slide))),
        "chosen": summary(p, y, slide, t),
        "crop_validation_threshold": summary(p, y, slide, before),
    }
    common.write_json(os.path.join(args.work, "operating_point.json"), out)
    c, b = out["chosen"], out["crop_validation_threshold"]
    print(f"threshold {t:.6g} (was {before:.6g}) on {len(p)} field cells from {out['slides']} slides: "
          f"FP {c['fp']} FN {c['fn']}, parasitemia MAE {c['parasitemia_mae_pp']:.3f} pp "
          f"(at {before:.6g}: FP {b['fp']} FN {b['fn']}, MAE {b['parasitemia_mae_pp']:.3f} pp)")


if __name__ == "__main__":
    main()
