"""networks/norm.py: conversion keeps BatchNormAct2d's LeakyReLU; two gloo processes = one batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from networks import build_model
from networks.norm import BatchNormAct2d, SyncBatchNormAct2d, convert_sync_batchnorm

REPO_ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def test_sync_batchnorm_conversion_keeps_the_activation_and_the_outputs():
    torch.manual_seed(0)
    model = build_model("segformer_mit_b0", 9).eval()
    x = torch.randn(2, 3, 64, 48)
    expected = model(x)
    acts = {n: m.activation for n, m in model.named_modules() if isinstance(m, BatchNormAct2d)}
    keys = list(model.state_dict())
    converted = convert_sync_batchnorm(model)
    synced = {n: m for n, m in converted.named_modules() if isinstance(m, SyncBatchNormAct2d)}
    assert set(acts) <= set(synced) and "fusion.1" in acts and acts["fusion.1"] == "leaky_relu"
    assert all(synced[n].activation == a for n, a in acts.items())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())
    assert list(converted.state_dict()) == keys
    for got, want in zip(converted(x), expected, strict=True):
        assert torch.equal(got, want)


SYNC_SCRIPT = """
import copy, json, sys
import torch, torch.distributed as dist
from networks.norm import BatchNormAct2d
from networks.norm import convert_sync_batchnorm
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
ref = BatchNormAct2d(4)
with torch.no_grad():
    ref.weight.uniform_(0.5, 1.5)
    ref.bias.uniform_(-0.5, 0.5)
sync = convert_sync_batchnorm(copy.deepcopy(ref))
x, w = torch.randn(6, 4, 5, 3) * 3 + 1, torch.randn(6, 4, 5, 3)
full = x.clone().requires_grad_()
ref_out = ref(full)
(ref_out * w).sum().backward()
part = slice(3 * rank, 3 * rank + 3)
mine = x[part].clone().requires_grad_()
out = sync(mine)
(out * w[part]).sum().backward()
grads = [p.grad.clone() for p in sync.parameters()]
for g in grads:
    dist.all_reduce(g)
diff = {
    "out": (out - ref_out[part]).abs().max().item(),
    "input_grad": (mine.grad - full.grad[part]).abs().max().item(),
    "param_grad": max((g - p.grad).abs().max().item() for g, p in zip(grads, ref.parameters())),
    "running_mean": (sync.running_mean - ref.running_mean).abs().max().item(),
    "running_var": (sync.running_var - ref.running_var).abs().max().item(),
}
if rank == 0:
    open(sys.argv[1], "w").write(json.dumps(diff))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_sync_batchnorm_over_two_gloo_processes_equals_batchnorm_on_the_whole_batch(tmp_path):
    script, out = tmp_path / "sync_bn_check.py", tmp_path / "diff.json"
    script.write_text(SYNC_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*cmd, str(script), str(out)], cwd=REPO_ROOT, env=_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    diff = json.loads(out.read_text())
    assert max(diff.values()) < TOLERANCE, diff
