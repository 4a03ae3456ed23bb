"""Evaluates a trained checkpoint at the bundle's threshold, with slide-bootstrap CIs.

  /usr/bin/python3 evaluate.py --work WORK --split test --out test_metrics.json [--manifest M]
  /usr/bin/python3 evaluate.py --work WORK --data DIR --out fresh_metrics.json [--manifest M]

--manifest takes the decision threshold from the bundle's manifest.json (the
operating point chosen on field cells) instead of the checkpoint's
crop-validation threshold.

--split evaluates one of the slide-disjoint splits recorded in the checkpoint;
--data evaluates a folder written by `scopewatch synth cells` (for example a
fresh seed >= 100000 that no training run may use). The figures are those of
the torch model; `scopewatch classify` reports the same figures for the
exported bundle through ONNX Runtime.
"""

import argparse
import json
import os

import numpy as np

import common


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", choices=["train", "val", "test"])
    src.add_argument("--data")
    ap.add_argument("--seed", type=int, default=None, help="generator seed of --data, recorded in the output")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--manifest", default=None, help="manifest.json whose threshold is used")
    return ap.parse_args()


def main():
    args = parse_args()
    common.limit_threads(2)
    model, ckpt = common.load_checkpoint(os.path.join(args.work, "checkpoint.pt"))
    threshold = float(ckpt["threshold"])
    if args.manifest:
        with open(args.manifest) as f:
            threshold = float(json.load(f)["threshold"])
    if args.split:
        sp = ckpt["split"]
        sel = [i for i, s in enumerate(sp["split"]) if s == args.split]
        paths = [sp["paths"][i] for i in sel]
        slides = [sp["slides"][i] for i in sel]
        images = np.stack([common.load_image(p) for p in paths])
        labels = np.array([sp["labels"][i] for i in sel], dtype=np.int64)
        source = {"split": args.split}
    else:
        images, labels, slides, _ = common.load_crops(args.data)
        source = {"data": os.path.abspath(args.data), "seed": args.seed}
    p, _ = common.predict(model, images)
    m = common.metrics(labels, p, threshold)
    ci = common.bootstrap_by_slide(labels, p, slides, threshold, reps=args.reps)
    out = {"source": source, "threshold": threshold, "n_slides": len(set(slides)), "metrics": m,
           "bootstrap": ci}
    common.write_json(args.out, out)
    line = ", ".join(f"{k} {m[k]:.4f} [{ci['ci95'][k][0]:.4f}, {ci['ci95'][k][1]:.4f}]"
                     for k in common.METRIC_KEYS)
    print(f"{source}: n={m['n']} slides={out['n_slides']}: {line}")


if __name__ == "__main__":
    main()
