"""Benchmark support: what machine a result came from, recorded into every benchmark's extra_info."""

from __future__ import annotations

import os

import pytest
import torch

from machine import machine_info

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def machine():
    return machine_info
