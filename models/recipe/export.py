"""Exports a trained checkpoint as a scopewatch bundle (DESIGN.md §3).

  /usr/bin/python3 export.py --work WORK --bundle DIR [--version V] [--parity FILE]

Writes into DIR:
  backbone.onnx      image [N,3,128,128] -> features [N,576], dynamic batch
  head.safetensors   fc1.weight [100,576], fc1.bias [100], fc2.weight [2,100], fc2.bias [2]
  manifest.json      unsigned, without file hashes: `scopewatch bundle seal` adds them
and, with --parity, a JSON file of test-image features and the torch head's
probabilities for the Go head's parity test.
"""

import argparse
import csv
import datetime
import hashlib
import os
import shutil

import numpy as np
import torch

import common

OPSET = 17


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="folder written by train.py")
    ap.add_argument("--bundle", required=True, help="bundle folder to write")
    ap.add_argument("--name", default="scopewatch-default")
    ap.add_argument("--version", default="", help="default: YYYY.MM.DD-1 (UTC date)")
    ap.add_argument("--parity", default="", help="write head parity cases here")
    ap.add_argument("--parity-n", type=int, default=32)
    ap.add_argument("--testset", default="",
                    help="copy the test split here as a synth-style folder (labels.csv), for `scopewatch baseline`")
    return ap.parse_args()


def export_onnx(model, path):
    backbone = model.backbone.eval()
    dummy = torch.zeros(1, 3, common.INPUT_SIZE, common.INPUT_SIZE)
    torch.onnx.export(
        backbone, dummy, path,
        input_names=["image"], output_names=["features"],
        dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
        opset_version=OPSET, do_constant_folding=True, export_params=True,
    )
    # torch.onnx.export already ran the ONNX checker on the serialised proto
    # (the onnx Python package is not needed for that). The numerics of the
    # exported graph are checked from Go against ONNX Runtime.
    try:
        import onnx

        onnx.checker.check_model(onnx.load(path), full_check=True)
        print("onnx.checker: ok")
    except ImportError:
        print("onnx package not installed: relying on torch.onnx.export's built-in proto check")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_parity(model, ckpt, head_path, out, n, seed):
    """Features of real test-split crops, and the torch head's probabilities on them."""
    sp = ckpt["split"]
    test_paths = [p for p, s in zip(sp["paths"], sp["split"]) if s == "test"]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(test_paths), size=min(n, len(test_paths)), replace=False).tolist())
    imgs = np.stack([common.load_image(test_paths[i]) for i in pick])
    model.eval()
    with torch.no_grad():
        feats = model.backbone(common.normalise(imgs))
        probs = torch.softmax(model.head(feats), dim=1)
    # Cross-check the head against the weights as written to disk, in float64,
    # so a layout mistake in head.safetensors cannot hide behind the module.
    w = common.read_safetensors(head_path)
    f64 = feats.double().numpy()
    h = np.maximum(f64 @ w["fc1.weight"].astype(np.float64).T + w["fc1.bias"], 0)
    z = h @ w["fc2.weight"].astype(np.float64).T + w["fc2.bias"]
    z = np.exp(z - z.max(1, keepdims=True))
    ref = z / z.sum(1, keepdims=True)
    diff = np.abs(ref - probs.double().numpy()).max()
    if diff > 1e-6:
        raise SystemExit(f"head.safetensors disagrees with the torch head: max |dp| {diff:.3g}")
    cases = []
    for f, p in zip(feats.numpy(), probs.numpy()):
        cases.append({
            # float32 values in their shortest round-trip decimal form.
            "features": [float(np.format_float_positional(v, unique=True, trim="-")) for v in f],
            "probabilities": [float(x) for x in p.astype(np.float64)],
        })
    common.write_json(out, {
        "note": ("Features are the float32 outputs of the torch backbone (eval mode) on "
                 f"{len(cases)} crops of the slide-disjoint test split; probabilities are the "
                 "torch head's softmax on them (eval mode, float32, printed as float64), class "
                 "order as 'classes'. Written by models/recipe/export.py together with the head "
                 "whose sha256 is head_sha256; regenerate both together."),
        "classes": common.CLASSES,
        "features_dim": common.FEATURES_DIM,
        "head_sha256": sha256(head_path),
        "max_abs_diff_vs_float64_head": float(diff),
        "cases": cases,
    })


def write_testset(ckpt, out):
    """Copies the slide-disjoint test split into out/<slide>/<file> with labels.csv."""
    sp = ckpt["split"]
    if os.path.isdir(out):
        shutil.rmtree(out)
    rows = []
    for path, slide, split, label in zip(sp["paths"], sp["slides"], sp["split"], sp["labels"]):
        if split != "test":
            continue
        sdir = slide.replace("/", "_")  # slide ids are prefixed by their data folder
        os.makedirs(os.path.join(out, sdir), exist_ok=True)
        rel = f"{sdir}/{os.path.basename(path)}"
        shutil.copyfile(path, os.path.join(out, rel))
        rows.append((rel, common.CLASSES[label], sdir))
    with open(os.path.join(out, "labels.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "slide"])
        w.writerows(rows)
    print(f"test split: {len(rows)} crops in {out}")


def main():
    args = parse_args()
    common.limit_threads(2)
    model, ckpt = common.load_checkpoint(os.path.join(args.work, "checkpoint.pt"))
    os.makedirs(args.bundle, exist_ok=True)

    onnx_path = os.path.join(args.bundle, "backbone.onnx")
    export_onnx(model, onnx_path)
    head_path = os.path.join(args.bundle, "head.safetensors")
    tensors = common.head_tensors(model.head)
    common.write_safetensors(head_path, tensors)
    back = common.read_safetensors(head_path)
    for k, v in tensors.items():
        if not np.array_equal(back[k], v):
            raise SystemExit(f"{head_path}: {k} did not round-trip")

    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    version = args.version or now.strftime("%Y.%m.%d") + "-1"
    manifest = {
        "name": args.name,
        "version": version,
        "created": now.isoformat().replace("+00:00", "Z"),
        "architecture": "mobilenetv3-small",
        "classes": common.CLASSES,
        "input": {
            "name": "image",
            "width": common.INPUT_SIZE,
            "height": common.INPUT_SIZE,
            "layout": "NCHW",
            "color": "RGB",
            "scale": common.SCALE,
            "mean": common.MEAN,
            "std": common.STD,
        },
        "outputs": {"features": "features", "features_dim": common.FEATURES_DIM, "probabilities": None},
        "head": "head.safetensors",
        "threshold": float(ckpt["threshold"]),
        "files": {},
    }
    common.write_json(os.path.join(args.bundle, "manifest.json"), manifest)
    print(f"bundle {args.bundle}: version {version}, threshold {manifest['threshold']:.6g}, "
          f"backbone {os.path.getsize(onnx_path) / 1e6:.2f} MB")

    if args.testset:
        write_testset(ckpt, args.testset)
    if args.parity:
        write_parity(model, ckpt, head_path, args.parity, args.parity_n, ckpt["seed"])
        print(f"parity cases: {args.parity}")


if __name__ == "__main__":
    main()
