"""Signed position errors on the Size set (and Test) for EBMs and a regressor, by y band."""
import sys, torch, numpy as np
from ebm_fast import eval_inference as ei
from ebm_fast.models import load_model
torch.set_num_threads(1)
lo, hi = float(sys.argv[1]), float(sys.argv[2])
reg, _ = ei.load_regressor(sys.argv[3])
splits = ei.table3_splits(10000, 200, 32, 0, size_range=(lo, hi))
for name in ("Test", "Size"):
    imgs, lab = ei.render_split(splits[name], progress=False)
    x, pos = ei._as_float_images(imgs), torch.from_numpy(lab["pos"])
    preds = {"regressor": ei.regressor_positions(reg, x)}
    for m in sys.argv[4:]:
        preds[m.split("/")[-1]] = ei.ebm_positions(load_model(m)[0], x, grid=24, refine_steps=30)
    for k, p in preds.items():
        d = (p - pos)
        bands = [(-1, -0.5), (-0.5, 0), (0, 0.5), (0.5, 1)]
        by = " ".join(f"{d[(pos[:,1]>=a)&(pos[:,1]<b),1].mean():+.3f}" for a, b in bands)
        print(f"{name:5s} {k:24s} |err| {d.abs().mean():.4f}  signed x {d[:,0].mean():+.3f} y {d[:,1].mean():+.3f}  y by band (near->far) {by}")
