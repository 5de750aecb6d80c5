"""The CUDA path: same attention as on the CPU; half precision comes back as float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnviz.extraction import extract
from attnviz.models.loading import load_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_cuda_equals_cpu(tiny_model_path, arch):
    path = str(tiny_model_path(arch))
    cpu = extract("the cat sat on the mat", load_model(path, device="cpu"))
    gpu = extract("the cat sat on the mat", load_model(path, device="cuda"))
    assert gpu.attn.dtype == np.float32
    np.testing.assert_allclose(gpu.attn, cpu.attn, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_returns_float32(tiny_model_path, dtype):
    path = str(tiny_model_path("llama"))
    cpu = extract("the cat sat on the mat", load_model(path, device="cpu"))
    half = extract("the cat sat on the mat", load_model(path, device="cuda", dtype=dtype))
    assert half.attn.dtype == np.float32
    np.testing.assert_allclose(half.attn, cpu.attn, atol=2e-2)
    np.testing.assert_allclose(half.attn.sum(-1), 1.0, atol=1e-2)
