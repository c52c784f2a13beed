"""Scene concepts as one energy-parameterized diffusion model (Du et al. 2023; Liu et al. 2022).

One :class:`ebm_fast.diffusion.EnergyUNet` is conditioned on every attribute of the MuJoCo Scenes
at once -- position ``(x, y)``, colour (7 classes), shape (3 classes) and size -- and each attribute
is dropped independently with probability 0.5 during training (a learned null embedding stands
in). Why one network rather than one per concept: on a 2-core CPU the training budget is the
scarce thing, and a single run then yields ``p(x | position)``, ``p(x | colour)``, ``p(x | shape)``,
``p(x | size)``, their joint conditionals and the unconditional ``p(x)`` that the composition rules
need (conjunction: ``E_u + sum_i w_i (E_i - E_u)``, all differences taken against the same
network's unconditional energy); the floor and the lighting, which every concept draws, are
learned once. Each concept is the network with one attribute set
(:func:`ebm_fast.diffusion.concept`). Why 0.5: every one of the 16 subsets of the four attributes is
then trained on 1/16 of the samples; the concepts use the four single-attribute subsets and the
empty one. With the usual 0.1-0.2 per attribute, a given single attribute would be seen alone on
``0.85 * 0.15^3 = 0.3%`` of the samples and the unconditional on 0.05%.

Attributes in the packed condition: ``pos`` in ``[-1, 1]^2`` (the dataset's normalised position),
``color`` and ``shape`` as class indices, ``size`` mapped from the half-extent ``s`` in metres to
``(s - 0.25) / 0.07`` (the default range 0.18..0.32 becomes -1..1). The position also enters as an
image (``EnergyUNet(spatial=...)``): a bump where the dataset's camera sees an object centre at that
position (:func:`position_homography`), which a convolution reads directly; without it the
network must learn the camera's map from the embedding, which it had barely done after 2600
iterations (the true position's energy below the mirrored position's on 53-62% of renders).

Train (resumable with the same command)::

    ebm-fast train --objective dsm --out runs/diffusion/scenes32

Sample a grid per attribute from the newest EMA export::

    ebm-fast eval diffusion --model runs/diffusion/scenes32/ema.pt --out runs/diffusion/grid
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..diffusion import CondSpec, DSMTrainer, EnergyUNet, VPSchedule

SCENE_ATTRIBUTES = CondSpec((("pos", "vector", 2), ("color", "class", 7), ("shape", "class", 3),
                             ("size", "vector", 1)))
SIZE_CENTER, SIZE_HALF_RANGE = 0.25, 0.07


def position_homography(height: float = SIZE_CENTER) -> list[list[float]]:
    """The 3x3 homography from a normalised position ``(x, y, 1)`` to image coordinates (``x`` right,
    ``y`` down, ``[-1, 1]`` across the image) of the point ``height`` metres above the plane there,
    seen by the dataset's camera (:func:`ebm_fast.paper.scenes.world_to_pixel`); the default height is
    a mid-size object's centre."""
    from . import scenes

    cam = scenes.camera_frame()
    e = scenes.POSITION_EXTENT
    offset = np.array([0.0, 0.0, height]) - cam.pos  # world point = (e x, e y, height)
    rows = []
    for axis, sign in ((cam.right, 1.0), (cam.up, -1.0)):
        rows.append([sign * e * axis[0] / cam.tan_half_fovy, sign * e * axis[1] / cam.tan_half_fovy,
                     sign * float(offset @ axis) / cam.tan_half_fovy])
    rows.append([e * cam.forward[0], e * cam.forward[1], float(offset @ cam.forward)])
    return [[float(v) for v in r] for r in rows]


def build_scene_model(args) -> EnergyUNet:
    """The scenes network the training options describe."""
    spatial = {"pos": position_homography()} if args.position_map == "on" else None
    return EnergyUNet(VPSchedule(args.T, args.schedule), SCENE_ATTRIBUTES, base=args.base, sigma_data=args.sigma_data,
                      spatial=spatial)


def size_to_model(size_m):
    """Half-extent in metres -> the model's size value (0.18..0.32 m -> -1..1)."""
    return (np.asarray(size_m, dtype=np.float32) - SIZE_CENTER) / SIZE_HALF_RANGE


def scene_conditions(labels: dict) -> torch.Tensor:
    """Packed conditions ``(N, width)`` of the scenes' labels (every attribute present)."""
    n = len(labels["color"])
    return SCENE_ATTRIBUTES.pack({"pos": torch.as_tensor(labels["pos"], dtype=torch.float32),
                                  "color": torch.as_tensor(labels["color"]),
                                  "shape": torch.as_tensor(labels["shape"]),
                                  "size": torch.as_tensor(size_to_model(labels["size"])).view(n, 1)}, batch=n)


def load_training_data(n_images: int, resolution: int, data_seed: int, renderer: str = "auto"):
    """Scenes images ``(N, 3, R, R)`` uint8 and their packed conditions (rendered once, cached)."""
    from . import scenes

    config = scenes.SceneConfig(n=n_images, resolution=resolution, seed=data_seed)
    images, labels = scenes.load_scenes(config, renderer=renderer, progress=False)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return x, scene_conditions(labels), {"source": "scenes", "scene_config": config.to_dict(),
                                         "size_center": SIZE_CENTER, "size_half_range": SIZE_HALF_RANGE,
                                         "shapes": list(scenes.SHAPES), "colors": list(scenes.COLOR_NAMES),
                                         "image_range": [-1.0, 1.0]}


def cmd_train(args) -> int:
    torch.set_num_threads(args.threads)
    images, conds, meta = load_training_data(args.n_images, args.resolution, args.data_seed, args.renderer)
    model = build_scene_model(args)
    trainer = DSMTrainer(model, images, conds, args.out, batch_size=args.batch_size, lr=args.lr, ema=args.ema,
                         drop=args.drop, seed=args.seed, checkpoint_seconds=args.checkpoint_seconds,
                         log_every=args.log_every, meta=meta)
    resumed = trainer.resume()
    how = "resumed at step " + str(trainer.step) if resumed else "started"
    if args.init_from and not resumed:
        from ..diffusion import load_model

        source, source_meta = load_model(args.init_from)
        widened = trainer.start_from(source.state_dict())
        trainer.meta["init_from"] = {"path": str(args.init_from), "step": source_meta.get("step")}
        how = f"started from {args.init_from} (its step {source_meta.get('step')}; widened: {widened or 'none'})"
    elif args.init_from:
        how += f" (--init-from {args.init_from} applies to a fresh run only: ignored)"
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{how}; {n_params} parameters, {len(images)} images, threads {torch.get_num_threads()}", flush=True)
    stop = {"now": False}

    def on_term(signum, frame):  # finish the iteration, checkpoint, exit
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_term)
    trainer.train(args.iterations, should_stop=lambda: stop["now"])
    print(f"stopped at step {trainer.step} (checkpoint written)", flush=True)
    return 0


# The judged settings: a conjunction of concepts ("a&b"; "~a" avoids a), or a mixture (DISJUNCTIONS).
# The shape&... rows are the paper's Fig. 4 (one concept added per row); position&color,
# position&~color and ~position&color are Table 1's conjunction and negation rows.
ATTRIBUTE_OF = {"position": "pos", "color": "color", "shape": "shape", "size": "size"}
SETTINGS = ("position", "color", "shape", "size", "position&color", "position&~color", "~position&color",
            "shape&position", "shape&position&size", "shape&position&size&color")


def parse_setting(setting: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(wanted, avoided)`` attributes of a conjunction setting (``"position&~color"`` ->
    ``(("pos",), ("color",))``)."""
    want, avoid = [], []
    for word in setting.split("&"):
        neg = word.startswith("~")
        name = word[1:] if neg else word
        if name not in ATTRIBUTE_OF:
            raise ValueError(f"setting {setting!r}: unknown concept {name!r}; expected {sorted(ATTRIBUTE_OF)}")
        (avoid if neg else want).append(ATTRIBUTE_OF[name])
    if not want:
        raise ValueError(f"setting {setting!r}: a conjunction needs at least one concept that is not negated")
    return tuple(want), tuple(avoid)


FIG4_ROWS = ("shape", "shape&position", "shape&position&size", "shape&position&size&color")
FIG4_COLUMNS = 8
SHIPPED_MODEL = Path(__file__).resolve().parent / "assets" / "diffusion_scenes32.pt"


def default_model_path() -> str:
    """The shipped scenes diffusion model (EMA weights) if present, else the default training run's export."""
    return str(SHIPPED_MODEL) if SHIPPED_MODEL.is_file() else "runs/diffusion/scenes32/ema.pt"


def eval_targets(n: int, seed: int) -> dict:
    """Targets for ``n`` samples: positions uniform in ``[-1, 1]^2`` and sizes uniform in the data's
    range (drawn from ``seed``), colours and shapes cycling through their classes."""
    from . import scenes

    g = torch.Generator().manual_seed(seed)
    lo, hi = scenes.SIZE_RANGE
    return {"pos": torch.rand(n, 2, generator=g) * 2 - 1, "color": torch.arange(n) % len(scenes.COLOR_NAMES),
            "shape": torch.arange(n) % len(scenes.SHAPES), "size": lo + (hi - lo) * torch.rand(n, generator=g)}


def parse_concept_guidance(items) -> dict[str, float]:
    """``["position=9", "color=3"]`` -> ``{"pos": 9.0, "color": 3.0}`` (attribute names as packed)."""
    out = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        if not sep or name not in ATTRIBUTE_OF:
            raise ValueError(f"--concept-guidance: expected CONCEPT=W with CONCEPT in {sorted(ATTRIBUTE_OF)}, "
                             f"got {item!r}")
        try:
            out[ATTRIBUTE_OF[name]] = float(value)
        except ValueError:
            raise ValueError(f"--concept-guidance: {item!r}: the weight is not a number") from None
    return out


def judged_samples(model, setting: str, targets: dict, *, guidance: float, levels: int, correctors: int,
                   step_scale: float, seed: int, judges, resolution: int = 32,
                   t_min: int = 1, negation_weight: float = 1.0,
                   concept_guidance: dict | None = None) -> tuple[torch.Tensor, dict]:
    """Images ``(n, 3, R, R)`` in [0, 1] drawn for the conjunction ``setting`` (:func:`parse_setting`),
    and the judged accuracy per wanted attribute, the fraction that shows each avoided one
    (``not_<attr>``, lower is better) and ``all`` (every wanted attribute right, no avoided one shown)."""
    from ..diffusion import conjunction, sample_annealed

    want, avoid = parse_setting(setting)
    n = len(targets["color"])
    values = {"pos": targets["pos"], "color": targets["color"], "shape": targets["shape"],
              "size": torch.as_tensor(size_to_model(targets["size"].numpy())).view(n, 1)}
    conds = [SCENE_ATTRIBUTES.pack({a: values[a]}, batch=n) for a in want]
    negated = [SCENE_ATTRIBUTES.pack({a: values[a]}, batch=n) for a in avoid]
    weights = [float((concept_guidance or {}).get(a, guidance)) for a in want]  # a weight per concept, if given
    expr = conjunction(model, conds, weights=weights, negated=negated, negated_weights=negation_weight,
                       per_sample=True)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, model.config["channels"], resolution, resolution, generator=g)
    x = sample_annealed(expr, x0, levels=model.schedule.levels(levels, t_min=t_min), corrector_steps=correctors,
                        step_scale=step_scale, seed=seed)
    images = ((x + 1) / 2).clamp(0, 1)
    ok = judges.correct(images, {a: targets[a] for a in want + avoid})
    acc = {a: float(ok[a].float().mean()) for a in want}
    acc.update({f"not_{a}": float(ok[a].float().mean()) for a in avoid})
    every = torch.stack([ok[a] for a in want] + [~ok[a] for a in avoid]).all(0)
    acc["all"] = float(every.float().mean())
    return images, acc


DISJUNCTIONS = ("red|blue", "red|blue:raw", "position|position")
# the two positions of "position|position" (normalised; left-front and right-back of the floor)
DISJUNCTION_POSITIONS = ((-0.5, -0.5), (0.5, 0.5))


def judged_disjunction(model, setting: str, n: int, *, data: torch.Tensor, guidance: float, levels: int,
                       correctors: int, step_scale: float, seed: int, judges, resolution: int = 32,
                       t_min: int = 1, calibration_levels: int = 20) -> tuple[torch.Tensor, dict]:
    """Samples of an equal mixture of two concepts and the judged fraction of samples that show each.

    ``"red|blue"``: red or blue, :func:`ebm_fast.diffusion.disjunction` (its terms' constants calibrated
    on the training images ``data``, model coordinates, at ``calibration_levels`` levels);
    ``"red|blue:raw"``: a plain ``ef.Or`` of the two guided terms (the log-sum-exp of uncalibrated
    energies); ``"position|position"``: calibrated, at the two :data:`DISJUNCTION_POSITIONS` (a sample
    counts at a position within the judges' position threshold).
    """
    import ebm_fast as ef

    from ..diffusion import conjunction, disjunction, sample_annealed
    from . import scenes

    if setting == "position|position":
        conds = [{"pos": torch.tensor(p)} for p in DISJUNCTION_POSITIONS]
    else:
        conds = [{"color": scenes.COLOR_NAMES.index("red")}, {"color": scenes.COLOR_NAMES.index("blue")}]
    lv = model.schedule.levels(levels, t_min=t_min)
    g = torch.Generator().manual_seed(seed)
    if setting.endswith(":raw"):
        expr = ef.Or(*[conjunction(model, [c], weights=[guidance]) for c in conds])
    else:
        expr = disjunction(model, conds, x0=data, levels=model.schedule.levels(calibration_levels, t_min=t_min),
                           weights=guidance, generator=g)
    x0 = torch.randn(n, model.config["channels"], resolution, resolution, generator=g)
    x = sample_annealed(expr, x0, levels=lv, corrector_steps=correctors, step_scale=step_scale, seed=seed)
    images = ((x + 1) / 2).clamp(0, 1)
    if setting == "position|position":
        at = [float(judges.correct(images, {"pos": torch.tensor(p)})["pos"].float().mean())
              for p in DISJUNCTION_POSITIONS]
        return images, {"position_1": at[0], "position_2": at[1], "either": at[0] + at[1]}
    judged = judges.predict(images)["color"]
    red, blue = (float((judged == judges.colors.index(c)).float().mean()) for c in ("red", "blue"))
    return images, {"red": red, "blue": blue, "red_or_blue": red + blue}


def cmd_grid(args) -> int:
    from ..diffusion import load_model
    from ..image_grid import save_image_grid
    from .judges import Judges

    torch.set_num_threads(args.threads)
    model, meta = load_model(args.model, weights=args.weights)
    if args.guidance is None:
        args.guidance = float(meta.get("recommended", {}).get("guidance", 3.0))
    concept_guidance = parse_concept_guidance(args.concept_guidance)
    judges = Judges.load(args.judges)
    targets = eval_targets(args.n, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"model": str(args.model), "weights": meta.get("weights", "ema"), "step": meta.get("step"),
               "n": args.n, "seed": args.seed,
               "guidance": args.guidance, "levels": args.levels, "correctors": args.correctors,
               "step_scale": args.step_scale, "t_min": args.t_min, "negation_weight": args.negation_weight,
               "concept_guidance": concept_guidance,
               "accuracy": {}}
    resolution = meta.get("scene_config", {}).get("resolution", 32)
    renders = None
    if args.realism:
        from .realism import render_references

        renders, reference, results["realism_renders"] = render_references(args.realism, args.n, resolution)
        results["realism"] = {}
    results["seconds_per_image"] = {}
    first: dict[str, np.ndarray] = {}  # the first samples of each setting, for the Fig. 4 figure
    data = None
    for setting in args.settings:  # one seed for all: a grid cell is the same start in every setting
        common = dict(guidance=args.guidance, levels=args.levels, correctors=args.correctors,
                      step_scale=args.step_scale, seed=args.seed, judges=judges, resolution=resolution,
                      t_min=args.t_min)
        start = time.perf_counter()
        if setting in DISJUNCTIONS:
            if data is None:  # calibration samples of p(x), which the unconditional energy models: training images
                sc = meta["scene_config"]
                images_u8, _, _ = load_training_data(sc["n"], sc["resolution"], sc["seed"])
                data = images_u8[-args.calibration_images:].float() / 127.5 - 1
            images, acc = judged_disjunction(model, setting, args.n, data=data, **common)
        else:
            images, acc = judged_samples(model, setting, targets, negation_weight=args.negation_weight,
                                         concept_guidance=concept_guidance, **common)
        results["seconds_per_image"][setting] = (time.perf_counter() - start) / args.n
        results["accuracy"][setting] = acc
        line = " ".join(f"{a} {v:.3f}" for a, v in acc.items())
        if renders is not None:
            from .realism import realism

            results["realism"][setting] = realism(judges, images, renders, reference, seed=args.seed)
            line += f" realism {results['realism'][setting]['scaled']:.3f}"
        u8 = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        first[setting] = u8[:FIG4_COLUMNS]
        fname = setting.replace("&", "_and_").replace("|", "_or_").replace(":", "_").replace("~", "not_")
        save_image_grid(out / f"{fname}.png", u8[:args.grid], ncols=8, scale=3)
        print(f"{setting}: {line} ({results['seconds_per_image'][setting]:.2f} s/image)", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))  # after each setting: a long run shows progress
    (out / "results.json").write_text(json.dumps(results, indent=1))
    save_fig4(out / "fig4.png", first)
    return 0


def save_fig4(path, first: dict) -> Path | None:
    """The paper's Fig. 4 from ``{setting: uint8 (k, H, W, 3) first samples}``: one row per
    :data:`FIG4_ROWS` setting present (at least two), one start per column, the first tile of each row
    captioned with the concept it adds. None when fewer than two rows are present."""
    from ..image_grid import save_image_grid

    rows = [r for r in FIG4_ROWS if r in first]
    if len(rows) < 2:
        return None
    n_col = min(len(first[r]) for r in rows)
    captions = [r if i == 0 else "+ " + r.split("&")[-1] for i, r in enumerate(rows)]
    return save_image_grid(path, np.concatenate([first[r][:n_col] for r in rows]), ncols=n_col, scale=3,
                           labels=[cap if c == 0 else "" for cap in captions for c in range(n_col)])


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``train`` (also ``ebm-fast train --objective dsm``)."""
    parser.add_argument("--out", default="runs/diffusion/scenes32")
    parser.add_argument("--n-images", type=int, default=20000)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--renderer", default="auto")
    parser.add_argument("--T", type=int, default=1000)
    parser.add_argument("--schedule", default="cosine")
    parser.add_argument("--base", type=int, default=32)
    parser.add_argument("--sigma-data", type=float, default=0.0, help="0: no skip term (default); > 0: EDM skip")
    parser.add_argument("--position-map", default="on", choices=["on", "off"],
                        help="give the network the position as a bump image as well (default on)")
    parser.add_argument("--init-from", default=None,
                        help="a fresh run starts from this model's weights (an ema.pt export or a checkpoint); "
                             "input widths that grew start at zero")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--drop", type=float, default=0.5, help="probability of dropping each attribute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=1_000_000)
    parser.add_argument("--checkpoint-seconds", type=float, default=300.0)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``grid`` (also ``ebm-fast eval diffusion``)."""
    parser.add_argument("--model", default=default_model_path(),
                        help="an EMA export (ema.pt) or a trainer checkpoint (ckpt/last.pt, see --weights); "
                             "default: the shipped scenes model")
    parser.add_argument("--weights", default="ema", choices=["ema", "model"],
                        help="which weights of a trainer checkpoint: the EMA or the raw model")
    parser.add_argument("--out", default="runs/diffusion/grid")
    parser.add_argument("--judges", default=None, help="judges file (default: the shipped 64x64 judges)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS[:5]), choices=list(SETTINGS) + list(DISJUNCTIONS),
                        help="what to sample and judge (default: each concept alone and position&color)")
    parser.add_argument("--calibration-images", type=int, default=256,
                        help="training images that calibrate a disjunction's terms")
    parser.add_argument("--n", type=int, default=32, help="samples per setting")
    parser.add_argument("--grid", type=int, default=64, help="samples shown in each setting's PNG grid")
    parser.add_argument("--realism", type=int, default=0,
                        help="fresh renders for the realism distance of each setting (0: skip; e.g. 512)")
    parser.add_argument("--seed", type=int, default=9001, help="evaluation seed (targets, starting noise, chains)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="guidance weight of each concept (default: the model's recommended one, else 3)")
    parser.add_argument("--negation-weight", type=float, default=1.0, help="weight of a negated concept (~a)")
    parser.add_argument("--concept-guidance", nargs="+", default=[], metavar="CONCEPT=W",
                        help="a guidance weight for some concepts of a conjunction (e.g. position=9 color=3); "
                             "the others take --guidance")
    parser.add_argument("--levels", type=int, default=50)
    parser.add_argument("--correctors", type=int, default=0)
    parser.add_argument("--step-scale", type=float, default=0.1)
    parser.add_argument("--t-min", type=int, default=1,
                        help="last level of the reverse process (Tweedie's estimate from there)")
    parser.add_argument("--threads", type=int, default=1)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ebm_fast.paper.diffusion_concepts", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    add_train_arguments(sub.add_parser("train", help="train (or resume) the scenes diffusion model"))
    add_grid_arguments(sub.add_parser("grid", help="sample and judge each attribute (and a conjunction) from an "
                                                   "EMA export"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "train":
        return cmd_train(args)
    return cmd_grid(args)


if __name__ == "__main__":
    sys.exit(main())
