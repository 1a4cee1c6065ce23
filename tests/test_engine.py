"""The runtime's speed settings: which are on by default, and on which device."""

from __future__ import annotations

import subprocess
import sys

import torch

from mmt_lib.config import RuntimeConfig
from mmt_lib.method import engine

CPU = torch.device("cpu")


def test_channels_last_is_on_by_default_and_an_explicit_setting_wins():
    assert engine.uses_channels_last(RuntimeConfig(), CPU)
    assert not engine.uses_channels_last(RuntimeConfig(channels_last=False), CPU)


def test_cpu_bf16_follows_the_cpus_capability_unless_set(monkeypatch):
    monkeypatch.setattr(engine, "native_cpu_bf16", lambda: False)
    assert not engine.uses_bf16(RuntimeConfig(), CPU)
    assert engine.uses_bf16(RuntimeConfig(bf16=True), CPU)
    monkeypatch.setattr(engine, "native_cpu_bf16", lambda: True)
    assert engine.uses_bf16(RuntimeConfig(), CPU)
    assert not engine.uses_bf16(RuntimeConfig(bf16=False), CPU)


def test_reproducible_mode_keeps_cpu_bf16_off_on_any_cpu():
    code = "from mmt_lib.method.engine import native_cpu_bf16; print(native_cpu_bf16())"
    env = {"ATEN_CPU_CAPABILITY": "avx2", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
