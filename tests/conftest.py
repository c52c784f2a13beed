"""Test configuration: Triton runs through its interpreter on machines without a GPU.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at collection.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see ebm_fast/__init__.py: spinning threads starve

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
