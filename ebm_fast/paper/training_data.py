"""The MuJoCo Scenes dataset as a training data source: ``TrainConfig(data="scenes")``.

Importing this module registers the source with :func:`ebm_fast.training.data.register_data_source`
(``ebm-fast train`` does), so the library's trainer loads the scenes without importing the paper.
"""

from __future__ import annotations

from ..training.config import TrainConfig
from ..training.data import ConditionalData, conditional_data, register_data_source

__all__ = ["scenes_data"]


def scenes_data(config: TrainConfig) -> ConditionalData:
    """Render (or read from the cache) the scenes ``config`` describes: ``n_images`` at ``resolution``,
    ``data_seed``, ``distractors``, optional ``shapes``/``colors`` subsets, with ``renderer``. The class
    counts are those of all scenes (also for a subset such as purple boxes), so a concept trained on a
    subset reads the same class indices as one trained on all."""
    from . import scenes

    kw = {}
    if config.shapes:
        kw["shapes"] = tuple(config.shapes)
    if config.colors:
        kw["colors"] = tuple(config.colors)
    sc = scenes.SceneConfig(n=config.n_images, resolution=config.resolution, seed=config.data_seed,
                            distractors=config.distractors, **kw)
    images, labels = scenes.load_scenes(sc, renderer=config.renderer, progress=config.progress)
    meta = {"source": "scenes", "scene_config": sc.to_dict(), "shapes": list(scenes.SHAPES),
            "colors": list(scenes.COLOR_NAMES)}
    return conditional_data(images, labels, meta, {"shape": len(scenes.SHAPES), "color": len(scenes.COLOR_NAMES)})


register_data_source("scenes", scenes_data)
