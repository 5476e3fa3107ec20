"""Issue 8's CCP recipe: the plain SegFormer ablation (--heads plain, --loss ce, --no-schp) as
units, and `RECIPE_FAST=1 bash recipes/ccp.sh` end to end on a few real CCP photos."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import evaluate
import train
from datasets.labels import load_label_config
from inference import HumanParser
from networks import ParsingOutput, build_model
from utils import checkpoint as ckpt
from utils.cli import check_train_args
from utils.criterion import CE2PLoss, CELoss, build_criterion
from utils.optim import build_optimizer

REPO = Path(__file__).resolve().parents[1]
CCP_MAP = REPO / "mappings" / "ccp_map.yaml"
NUM_CLASSES = 5
BATCH, HEIGHT, WIDTH = 2, 64, 48
RECIPE_TIMEOUT_S = 300
FAST_CYCLES = 2  # RECIPE_FAST: epochs 2, SCHP from epoch 1, 1-epoch cycles
EDGE_MODULES = ("edge", "fusion")


@pytest.fixture(scope="module")
def plain_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("segformer_mit_b0", NUM_CLASSES, heads="plain")


def test_plain_model_has_no_edge_or_fusion_and_returns_parsing_as_fusion(plain_model):
    names = [name for name, _ in plain_model.named_children()]
    assert names == ["backbone", "head"]
    assert not any(n.split(".")[0] in EDGE_MODULES for n, _ in plain_model.named_parameters())
    full = build_model("segformer_mit_b0", NUM_CLASSES)
    assert not hasattr(full, "heads") or full.heads == "full"
    assert sum(p.numel() for p in plain_model.parameters()) < sum(
        p.numel() for p in full.parameters()
    )
    out = plain_model(torch.randn(BATCH, 3, HEIGHT, WIDTH))
    assert out.parsing.shape == (BATCH, NUM_CLASSES, HEIGHT // 4, WIDTH // 4)
    assert out.fusion is out.parsing
    assert out.edge is None


def test_plain_model_trains_with_ce_and_every_parameter_gets_a_gradient(plain_model):
    label = torch.randint(0, NUM_CLASSES, (BATCH, HEIGHT, WIDTH))
    plain_model.train()
    loss, parts = CELoss()(plain_model(torch.randn(BATCH, 3, HEIGHT, WIDTH)), label)
    loss.backward()
    assert all(p.grad is not None for p in plain_model.parameters())
    assert parts["edge"] == 0 and parts["cons"] == 0 and parts["seg"] == loss.detach()
    plain_model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["adamw_custom", "segce2p_phase_1", "segce2p_phase_2", "sgd"])
def test_optimizers_cover_the_plain_model(plain_model, name):
    optimizer, _ = build_optimizer(plain_model, name, 1e-3, 1e-2)
    grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for p in plain_model.parameters() if p.requires_grad}
    assert grouped == trainable
    for param in plain_model.parameters():
        param.requires_grad_(True)


def test_heads_option_is_refused_where_it_does_not_exist():
    with pytest.raises(ValueError, match="segformer"):
        build_model("resnet101", NUM_CLASSES, heads="plain")
    with pytest.raises(ValueError, match="unknown heads"):
        build_model("segformer_mit_b0", NUM_CLASSES, heads="tiny")


def test_plain_checkpoint_round_trips_through_evaluate_and_human_parser(plain_model, tmp_path):
    label_set = load_label_config(CCP_MAP).target
    model = build_model("segformer_mit_b0", label_set.num_classes, heads="plain").eval()
    record = ckpt.model_record(model, label_set, (HEIGHT, WIDTH))
    assert record["heads"] == "plain"
    full_record = ckpt.model_record(build_model("segformer_mit_b0", 3), None, (HEIGHT, WIDTH))
    assert "heads" not in full_record  # default checkpoints are unchanged
    path = ckpt.save_checkpoint(record, tmp_path / "plain.pth.tar")
    args = evaluate.get_args_parser().parse_args(["--model-restore", str(path)])
    loaded, loaded_set = evaluate.load_model_for_eval(args)[:2]
    assert loaded.heads == "plain" and loaded_set.names == label_set.names
    x = torch.randn(1, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x).fusion, model(x).fusion)
    parser = HumanParser.from_checkpoint(path, device="cpu")
    assert parser.model.heads == "plain"


def test_ce_loss_is_cross_entropy_on_the_parsing_logits_and_ignores_255():
    torch.manual_seed(0)
    parsing = torch.randn(BATCH, NUM_CLASSES, HEIGHT // 4, WIDTH // 4)
    label = torch.randint(0, NUM_CLASSES, (BATCH, HEIGHT, WIDTH))
    label[:, :8] = 255
    output = ParsingOutput(parsing, torch.randn_like(parsing), None)
    up = F.interpolate(parsing, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=True)
    expected = F.cross_entropy(up, label, ignore_index=255)
    loss, _ = CELoss()(output, label)
    torch.testing.assert_close(loss, expected)
    soft = ParsingOutput(parsing, parsing, None)  # cycle 0: the soft target is the one-hot label
    torch.testing.assert_close(CELoss()(output, label, soft=soft, cycle_n=0)[0], expected)
    assert isinstance(build_criterion("ce"), CELoss)
    assert isinstance(build_criterion("ce2p"), CE2PLoss)


def test_train_flags_plain_needs_ce_and_no_schp_allows_any_schp_start():
    parser = train.get_args_parser()
    base = ["--epochs", "2", "--schp-start", "5"]
    with pytest.raises(SystemExit, match="--loss ce"):
        check_train_args(parser.parse_args([*base, "--heads", "plain", "--no-schp"]), "cpu")
    with pytest.raises(SystemExit, match="schp-start"):
        check_train_args(parser.parse_args(base), "cpu")
    args = parser.parse_args([*base, "--heads", "plain", "--loss", "ce", "--no-schp"])
    check_train_args(args, "cpu")
    assert (args.heads, args.loss, args.no_schp) == ("plain", "ce", True)
    defaults = parser.parse_args([])
    assert (defaults.heads, defaults.loss, defaults.no_schp) == ("full", "ce2p", False)


def test_recipe_fast_trains_evaluates_and_compares_both_runs(ccp_root, tmp_path):
    env = {
        **os.environ,
        "RECIPE_FAST": "1",
        "CCP_ROOT": str(ccp_root),
        "CCP_OUT": str(tmp_path),
        "PY": sys.executable,
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        ["bash", str(REPO / "recipes" / "ccp.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RECIPE_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    full = ckpt.read_checkpoint(tmp_path / "full/train" / ckpt.schp_name(FAST_CYCLES))
    assert "heads" not in full and any(k.startswith("edge.") for k in full["state_dict"])
    plain = ckpt.read_checkpoint(tmp_path / "plain/train" / ckpt.LATEST_NAME)
    assert plain["heads"] == "plain"
    assert not any(k.split(".")[0] in EDGE_MODULES for k in plain["state_dict"])
    assert plain["cycle_n"] == 0
    assert not list((tmp_path / "plain/train").glob("schp_*"))
    plain_args = json.loads((tmp_path / "plain/train/args.json").read_text())
    assert (plain_args["heads"], plain_args["loss"], plain_args["no_schp"]) == ("plain", "ce", True)
    names = load_label_config(CCP_MAP).target.names
    for run in ("full", "plain"):
        results = json.loads((tmp_path / run / "eval" / "results.json").read_text())
        assert list(results["iou"]) == list(names)
        assert 0.0 <= results["miou"] <= 100.0
    table = (tmp_path / "comparison.md").read_text()
    assert table in result.stdout
    assert "| full | plain | full - plain |" in table
    assert all(f"| {name} |" in table for name in ("mIoU", *names))
