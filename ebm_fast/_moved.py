"""Old import paths of modules that moved, kept importable.

The paper's reproduction (scenes data, judges, tables, demo, shipped concepts) moved into
:mod:`ebm_fast.paper` so that the library core never imports it; training became the package
:mod:`ebm_fast.training` and the chain helpers of the old ``sample_cli`` the module :mod:`ebm_fast.chains`. ``import ebm_fast.judges`` and the
other old paths still work: they resolve to the module at its new place (the same module object) and
warn once with a :class:`DeprecationWarning` that names the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old dotted name -> new dotted name
MOVED: dict[str, str] = {
    "ebm_fast.data": "ebm_fast.paper.scenes",  # the old package re-exported the scenes module's names
    "ebm_fast.data.scenes": "ebm_fast.paper.scenes",
    "ebm_fast.data.numpy_render": "ebm_fast.paper.numpy_render",
    **{f"ebm_fast.{name}": f"ebm_fast.paper.{name}" for name in (
        "judges", "concepts", "expr_parser", "evaluate", "eval_models", "eval_inference", "eval_two_objects",
        "demo", "demo_concepts")},
    "ebm_fast.train": "ebm_fast.training",  # config, data, trainer and options, now in parts
    "ebm_fast.sample_cli": "ebm_fast.chains",  # the chain settings and sampling; the command is ebm_fast.cli.sample
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers imports of an old name with the module at its new place."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=fullname == "ebm_fast.data")

    def create_module(self, spec):
        return None  # a placeholder module; exec_module swaps in the real one

    def exec_module(self, module) -> None:
        new = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} moved to {new}; import it from there", DeprecationWarning,
                      stacklevel=2)
        target = importlib.import_module(new)
        if module.__name__ == "ebm_fast.data":  # a package: keep it, filled with the scenes names
            module.__dict__.update({k: v for k, v in vars(target).items() if not k.startswith("_")})
            module.scenes = target
            return
        # the import system returns whatever sys.modules holds under the name after exec_module
        sys.modules[module.__name__] = target


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
