# Builds the golden resize outputs used by preprocess_test.go: each image is
# read and resized by the training recipe's own code (models/recipe/common.py,
# load_image = decode + resize_like_opencv) and the resulting 128x128 RGB
# uint8 pixels are written raw next to it (pre_NAME.rgb). Re-run when the
# recipe's input contract changes. Needs Debian's python3-torch.
import os, sys
import numpy as np
from PIL import Image
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "models", "recipe"))
import common  # noqa: E402

rng = np.random.default_rng(7)
def smooth(w, h, c=3):
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)[..., :c]
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255)

cases = {
    "down": Image.fromarray(smooth(151, 139).astype(np.uint8), "RGB"),   # shrink both axes
    "up": Image.fromarray(smooth(101, 117).astype(np.uint8), "RGB"),     # enlarge both axes
    "mixed": Image.fromarray(smooth(160, 128).astype(np.uint8), "RGB"),  # one axis untouched
    "rgba": Image.fromarray(np.concatenate([smooth(113, 131), rng.integers(0, 256, (131, 113, 1))], -1).astype(np.uint8), "RGBA"),
    "grey16": Image.fromarray((smooth(127, 141, 1)[..., 0] * 257).astype(np.uint16)),
}
for name, im in cases.items():
    path = os.path.join(here, f"pre_{name}.png")
    im.save(path)
    rgb = common.load_image(path)
    assert rgb.shape == (common.INPUT_SIZE, common.INPUT_SIZE, 3), rgb.shape
    rgb.astype(np.uint8).tofile(os.path.join(here, f"pre_{name}.rgb"))
    print(name, Image.open(path).mode, Image.open(path).size)
