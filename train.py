"""Train a human parser with SCHP self-correction (SegFormer MiT or ResNet-101 + CE2P heads).

The seed's three-stage recipe (LIP with the 20 -> 9 map, then DeepFashion fine-tuning):

    python train.py --arch segformer_mit_b4 --batch-size 4 --input-size 512,384 \
        --learning-rate 6e-5 --weight-decay 1e-2 --imagenet-pretrain ./pretrain_model/mit_b4.pth \
        --log-dir ./log/segformer_big/lip_train --num_samples 2500 --optimizer adamw_custom \
        --do_mapping --lip_map_cfg mappings/lip_map.yaml --num-classes 9

    python train.py --arch segformer_mit_b4 ... --optimizer segce2p_phase_1 \
        --model-restore ./log/segformer_big/lip_train/schp_4_checkpoint.pth.tar \
        --schp-restore ./log/segformer_big/lip_train/schp_4_checkpoint.pth.tar --reset_schp_cycle \
        --data-dir ./data/DeepFashion_Multi/DeepFashion_merged/ --num-classes 9

    python train.py ... --optimizer segce2p_phase_2 --model-restore .../schp_3_checkpoint.pth.tar

Several processes (one per GPU, or gloo workers on CPU), and continuing a killed run exactly:

    torchrun --nproc_per_node=2 train.py --device cuda ...
    python train.py <same flags> --resume ./log/segformer_big/lip_train/checkpoint.pth.tar

The plain SegFormer ablation (issue 8, `recipes/ccp.sh`): no edge/fusion heads, plain CE, no SCHP:

    python train.py --arch segformer_mit_b0 ... --heads plain --loss ce --no-schp

Writes to --log-dir: args.json, train.log, log.jsonl (every step), loss_per_epoch.txt, curves.png,
checkpoint.pth.tar (latest), checkpoint_{epoch}, schp_{cycle}_checkpoint.pth.tar, best.pth.tar;
nothing before every flag and every sample has been checked. Files are written atomically, and
checkpoint.pth.tar, the resume point, last at the end of an epoch.
Dropout is seeded from (seed, epoch, rank) each epoch and augmentation from (seed, epoch, index),
so --resume needs no RNG state. Top-level modules left without trainable parameters (phase 1's
backbone, --only_train_module) run in eval mode, so their BatchNorm statistics stay frozen too.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from datasets.images import init_decode_worker
from datasets.labels import LabelSet
from datasets.lip import LIPDataset, check_samples, collate_samples, data_error_line
from datasets.transforms import (
    FLIP_PROB,
    ROTATION_FACTOR,
    SCALE_FACTOR,
    generate_edge,
    normalize_batch,
)
from evaluate import build_eval_dataset, evaluate
from inference.predict import AMP_DTYPES, autocast
from networks import HEADS, ParsingOutput, build_model
from networks.contracts import InputSpec
from networks.norm import convert_sync_batchnorm
from networks.weights import WeightsError, load_pretrained_backbone, load_weights
from utils import checkpoint as ckpt
from utils.cli import (
    apply_gpu_flag,
    check_output_dir,
    common_parser,
    optional_path,
    positive_float,
    resolve_labels,
)
from utils.criterion import CONSISTENCY_MODES, LOSSES, build_criterion
from utils.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from utils.fileio import atomic_write, remove_stale_temp_files
from utils.logger import JsonlWriter, plot_curves, setup_logging
from utils.optim import OPTIMIZERS, build_optimizer, format_param_groups
from utils.schedule import apply_lr, default_schp_start, sgdr_lr
from utils.schp import bn_re_estimate, is_cycle_end, moving_average

logger = logging.getLogger("train")
LOSS_PARTS = ("total", "seg", "edge", "cons")
RESUME_MUST_MATCH = ("epochs", "learning_rate", "warmup_epochs", "schp_start", "cycle_epochs")


def _flag(group, name: str, **kwargs) -> None:
    """Add `--name` (the seed's spelling first) with its kebab/snake twin and one snake dest."""
    twins = dict.fromkeys((name, name.replace("_", "-"), name.replace("-", "_")))
    group.add_argument(*(f"--{n}" for n in twins), dest=name.replace("-", "_"), **kwargs)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a SCHP human parser.",
        parents=[common_parser(arch_default="segformer_mit_b4", batch_size_default=16)],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        add_help=add_help,
    )
    opt = parser.add_argument_group("optimisation")
    _flag(opt, "optimizer", default="sgd", choices=OPTIMIZERS, help="Param groups (seed rules).")
    _flag(opt, "learning-rate", type=positive_float, default=7e-3, help="Base learning rate L.")
    _flag(opt, "momentum", type=float, default=0.9, help="SGD momentum.")
    _flag(opt, "weight-decay", type=float, default=5e-4, help="Weight decay of decayed groups.")
    _flag(opt, "epochs", type=int, default=150, help="Total number of epochs.")
    _flag(opt, "start-epoch", type=int, default=0, help="First epoch (LR schedule position).")
    _flag(opt, "warmup-epochs", type=int, default=10, help="Linear LR warmup epochs.")
    _flag(opt, "only_train_module", help="Train only these top-level modules, e.g. head,edge.")
    loss = parser.add_argument_group("loss")
    losses = "ce2p: Lovasz + CE, edge and consistency (CE2P); ce: plain CE on the parsing logits."
    _flag(loss, "loss", default="ce2p", choices=LOSSES, help=losses)
    _flag(loss, "lambda-s", type=float, default=1.0, help="Weight of the parsing losses.")
    _flag(loss, "lambda-e", type=float, default=1.0, help="Weight of the edge loss.")
    _flag(loss, "lambda-c", type=float, default=0.1, help="Weight of the consistency loss.")
    consistency = "Consistency of soft (differentiable) or hard (argmax) parsing edges."
    _flag(loss, "cons_loss_type", default="soft", choices=CONSISTENCY_MODES, help=consistency)
    schp = parser.add_argument_group("self-correction (SCHP)")
    schp_start = (
        "Epoch where SCHP cycles start; None: the last 5 cycles (--epochs - 5 x --cycle-epochs, "
        "the seed's 100 of 150), fewer when 5 do not fit after the warmup."
    )
    _flag(schp, "schp-start", type=int, default=None, help=schp_start)
    _flag(schp, "cycle-epochs", type=int, default=10, help="Epochs per SCHP cycle.")
    _flag(schp, "schp-restore", type=optional_path, help="Teacher weights (and its cycle_n).")
    _flag(schp, "reset_schp_cycle", action="store_true", help="Cycle 0 after --schp-restore.")
    no_schp = "No self-correction at all: cosine LR to the last epoch, no aggregation."
    _flag(schp, "no-schp", action="store_true", help=no_schp)
    data = parser.add_argument_group("training data")
    _flag(data, "num_samples", type=int, default=-1, help="Seeded random subset size (-1: all).")
    on_off = argparse.BooleanOptionalAction
    _flag(data, "random-mirror", action=on_off, default=True, help="Random horizontal flips.")
    _flag(data, "random-scale", action=on_off, default=True, help="Random scale and rotation.")
    run = parser.add_argument_group("run")
    heads = "full: CE2P edge + fusion heads; plain: SegFormer decoder only (needs --loss ce)."
    _flag(run, "heads", default="full", choices=HEADS, help=heads)
    pretrain = (
        "ImageNet backbone weights (NVlabs mit_b*.pth, HF mit-b*, SCHP resnet101); None: off."
    )
    _flag(run, "imagenet-pretrain", type=optional_path, help=pretrain)
    _flag(run, "resume", help="checkpoint.pth.tar of a run to continue exactly.")
    _flag(run, "eval-epochs", type=int, default=10, help="Save checkpoint_{N} every N epochs.")
    _flag(run, "val-every", type=int, default=0, help="Validate every N epochs (0: never).")
    _flag(run, "print-freq", type=int, default=10, help="Progress-bar update every N steps.")
    _flag(run, "seed", type=int, default=0, help="Seed of sampling, augmentation and init.")
    return parser


def check_args(args: argparse.Namespace, device: torch.device) -> None:
    """Refuse inconsistent flags before anything is built or written, one line each; fill in
    the default --schp-start."""
    for name in ("epochs", "cycle_epochs", "eval_epochs", "print_freq"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    for name in ("val_every", "warmup_epochs", "seed"):
        if getattr(args, name) < 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 0; got {getattr(args, name)}")
    if args.schp_start is None:
        args.schp_start = default_schp_start(args.epochs, args.cycle_epochs, args.warmup_epochs)
    if args.heads == "plain" and args.loss != "ce":
        raise SystemExit(
            "--heads plain has no edge/fusion outputs for the CE2P loss; add --loss ce"
        )
    if args.schp_start > args.epochs and not args.no_schp:
        raise SystemExit(
            f"--schp-start {args.schp_start} is beyond --epochs {args.epochs}; no self-correction "
            "cycle would ever end: lower --schp-start or raise --epochs"
        )
    if not 0 <= args.start_epoch < args.epochs:
        raise SystemExit(f"--start-epoch {args.start_epoch} is outside 0..{args.epochs - 1}")
    if args.amp == "fp16" and device.type == "cpu":
        raise SystemExit(
            "--amp fp16 on CPU: float16 kernels are emulated there (about 40x slower than "
            "fp32); use --amp bf16 or --amp off on CPU, fp16 on CUDA"
        )


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch (dropout, DropPath) from (seed, epoch, rank): resume and DDP stay exact."""
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]))


def build_train_loader(args, label_set, lut, input_spec, info: DistInfo) -> DataLoader:
    """Loader of the augmented training set with a DistributedSampler (set both epochs).

    Batches hold uint8 images and labels without edges (4x/8x fewer bytes from the workers):
    `prepare_batch` normalises them and makes the edge targets on the device.

    Raises:
        FileNotFoundError, ValueError: the data folder's layout or contents are wrong.
    """
    train_set = LIPDataset(
        args.data_dir,
        split="train",
        input_size=args.input_size,
        input_spec=input_spec,
        label_set=label_set,
        label_lut=lut,
        augment=args.random_mirror or args.random_scale,
        num_samples=args.num_samples,
        seed=args.seed,
        flip_prob=FLIP_PROB if args.random_mirror else 0.0,
        scale_factor=SCALE_FACTOR if args.random_scale else 0.0,
        rotation_factor=ROTATION_FACTOR if args.random_scale else 0.0,
        with_edge=False,
        target_dtype=torch.uint8,
        image_dtype=torch.uint8,
    )
    if len(train_set) < args.batch_size * info.world_size:
        raise SystemExit(
            f"{args.data_dir}: {len(train_set)} training images, fewer than one batch "
            f"({args.batch_size} x {info.world_size} processes); lower --batch-size"
        )
    sampler = DistributedSampler(
        train_set, info.world_size, info.rank, shuffle=True, seed=args.seed, drop_last=True
    )
    return DataLoader(
        train_set,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        pin_memory=info.device.type == "cuda",
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
        worker_init_fn=init_decode_worker,
        collate_fn=collate_samples,
    )


def prepare_batch(batch: dict, input_spec: InputSpec, device: torch.device) -> tuple[Tensor, ...]:
    """Loader batch -> (normalised float images, int64 labels, int64 edge targets) on `device`."""
    images = normalize_batch(batch["image"].to(device), input_spec)
    labels = batch["label"].to(device)
    return images, labels.long(), generate_edge(labels).long()


def restore_weights(args, model: nn.Module, teacher: nn.Module) -> int:
    """Seed flags --imagenet-pretrain, --model-restore, --schp-restore; returns cycle_n."""
    try:
        if args.imagenet_pretrain:
            load_pretrained_backbone(model, args.imagenet_pretrain)
        if args.model_restore:
            load_weights(model, args.model_restore)
        teacher.load_state_dict(model.state_dict())
        if not args.schp_restore:
            return 0
        load_weights(teacher, args.schp_restore)
    except WeightsError as err:
        raise SystemExit(str(err)) from None
    stored = ckpt.read_checkpoint(args.schp_restore).get("cycle_n", 0)
    return 0 if args.reset_schp_cycle else int(stored)


def set_train_mode(model: nn.Module) -> None:
    """Train mode, except top-level modules without trainable parameters (kept frozen)."""
    model.train()
    for child in ckpt.unwrap_model(model).children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()


@dataclass
class Run:
    """What a training run holds: built and checked by `setup`, advanced by `main`'s loop."""

    args: argparse.Namespace
    info: DistInfo
    label_set: LabelSet
    model: nn.Module  # DistributedDataParallel-wrapped when distributed
    teacher: nn.Module  # SCHP aggregate, eval mode
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: DataLoader  # .sampler and .dataset get set_epoch
    val_set: LIPDataset | None
    log: JsonlWriter
    start_epoch: int = 0
    cycle_n: int = 0
    best_miou: float = -math.inf
    history: list[dict] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        return Path(self.args.log_dir)

    @property
    def input_spec(self) -> InputSpec:
        """Normalisation of the model's input (the loader yields uint8 images)."""
        return ckpt.unwrap_model(self.model).input_spec


def setup(args: argparse.Namespace) -> Run:
    """Check every input (every sample read once), build model/teacher/optimizer/data, restore;
    only then write files."""
    check_output_dir(args.log_dir)
    apply_gpu_flag(args.gpu)
    info = init_distributed(args.device)
    setup_logging(info.is_main)
    check_args(args, info.device)
    label_set, lut = resolve_labels(args)
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    try:
        model = build_model(args.arch, label_set.num_classes, heads=args.heads).to(info.device)
    except ValueError as err:
        raise SystemExit(f"--heads {args.heads}: {err}") from None
    teacher = copy.deepcopy(model)
    for flag in ("imagenet_pretrain", "model_restore", "schp_restore", "resume"):
        path = getattr(args, flag)
        if path is not None and not Path(path).is_file():
            raise SystemExit(f"{path}: file not found (--{flag.replace('_', '-')}); check the path")
    cycle_n = 0 if args.resume else restore_weights(args, model, teacher)
    optim_flags = (args.learning_rate, args.weight_decay, args.momentum, args.only_train_module)
    try:
        optimizer, groups = build_optimizer(model, args.optimizer, *optim_flags)
        loader = build_train_loader(args, label_set, lut, model.input_spec, info)
        spec = (args.input_size, model.input_spec, label_set, lut)
        val_set = build_eval_dataset(args.data_dir, "val", *spec) if args.val_every else None
        for dataset in (loader.dataset, val_set):  # a bad file ends the run before it writes
            if dataset is not None:
                check_samples(dataset, args.workers, (info.rank, info.world_size))
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(data_error_line(err)) from None
    if args.val_every and val_set is None:
        logger.warning("%s has no val_id.txt: --val-every is ignored", args.data_dir)
    scaler = torch.amp.GradScaler(info.device.type, enabled=args.amp == "fp16")
    progress = {"start_epoch": args.start_epoch, "cycle_n": cycle_n}
    if args.resume:
        try:
            state = ckpt.load_train_state(args.resume, model, teacher, optimizer, scaler)
        except ValueError as err:
            raise SystemExit(str(err)) from None
        changed = [k for k in RESUME_MUST_MATCH if state["args"].get(k) != getattr(args, k)]
        if changed:
            logger.warning("--resume with other %s: the LR schedule differs", ", ".join(changed))
        progress = {k: state[k] for k in ("cycle_n", "best_miou", "history")}
        progress["start_epoch"] = state["epoch"]

    barrier(info)  # every rank's samples passed: from here on files are written
    log_dir = Path(args.log_dir)
    if info.is_main:
        remove_stale_temp_files(log_dir)  # of writes killed in an earlier run
    setup_logging(info.is_main, log_dir / "train.log")
    log = JsonlWriter(log_dir / "log.jsonl", enabled=info.is_main)
    log.keep_epochs_before(progress["start_epoch"])  # drops the steps of a killed epoch
    if info.is_main:
        (log_dir / "args.json").write_text(json.dumps(vars(args), indent=2, default=str))
        logger.info("label set '%s': %s", label_set.name, ", ".join(label_set.names))
        logger.info("optimizer %s\n%s", args.optimizer, format_param_groups(groups))
    teacher.eval()
    if info.distributed:
        model, teacher = convert_sync_batchnorm(model), convert_sync_batchnorm(teacher)
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    parts = (args, info, label_set, model, teacher, optimizer, scaler, loader, val_set, log)
    return Run(*parts, **progress)


def as_float(output: ParsingOutput) -> ParsingOutput:
    """Every logits tensor of a model output in float32 (a plain model's edge stays None)."""
    return ParsingOutput(*(None if t is None else t.float() for t in output))


def _batches(loader: DataLoader) -> Iterator[dict]:
    """The loader's batches; a bad sample (label id outside the set, missing or unreadable file)
    ends the run with its one-line message instead of a worker traceback."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(data_error_line(err)) from None
        yield batch


def train_one_epoch(run: Run, epoch: int, lr: float) -> dict[str, float]:
    """One pass over the loader; every step goes to log.jsonl; returns mean losses (all ranks)."""
    args, info, cycle_n = run.args, run.info, run.cycle_n
    lambdas = (args.lambda_s, args.lambda_e, args.lambda_c)
    criterion = build_criterion(args.loss, *lambdas, consistency=args.cons_loss_type)
    set_train_mode(run.model)
    sums = torch.zeros(len(LOSS_PARTS) + 1, dtype=torch.float64)  # loss parts, steps
    bar = tqdm(
        _batches(run.loader),
        total=len(run.loader),
        desc=f"epoch {epoch}",
        disable=not info.is_main,
        dynamic_ncols=True,
    )
    for step, batch in enumerate(bar):
        images, labels, edges = prepare_batch(batch, run.input_spec, info.device)
        soft = None
        if cycle_n >= 1:
            with torch.no_grad(), autocast(info.device, args.amp):
                soft = as_float(run.teacher(images))
        with autocast(info.device, args.amp):
            output = as_float(run.model(images))
        loss, parts = criterion(output, labels, edges, soft=soft, cycle_n=cycle_n)
        if not torch.isfinite(loss):  # the one check; the loss terms pass NaN through
            terms = ", ".join(f"{k} {v.item():.4g}" for k, v in parts.items())
            raise SystemExit(
                f"epoch {epoch} step {step}: the loss is {loss.item()} ({terms}); lower "
                "--learning-rate, try --amp off, or check the --model-restore/--resume weights"
            )
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        record = {"total": loss.item(), **{k: v.item() for k, v in parts.items()}}
        sums += torch.tensor([record[k] for k in LOSS_PARTS] + [1.0], dtype=torch.float64)
        run.log.write({"type": "step", "epoch": epoch, "step": step, "lr": lr, **record})
        if step % args.print_freq == 0:
            bar.set_postfix(loss=f"{record['total']:.4f}", lr=f"{lr:.2e}", cycle=cycle_n)
    sums = all_reduce_sum(sums.to(info.device), info).cpu()
    return {k: (sums[i] / sums[-1].clamp(min=1)).item() for i, k in enumerate(LOSS_PARTS)}


def self_correct(run: Run, epoch: int) -> None:
    """End of an SCHP cycle: aggregate the student into the teacher, re-estimate its BN stats."""
    moving_average(run.teacher, ckpt.unwrap_model(run.model), 1.0 / (run.cycle_n + 1))
    run.cycle_n += 1
    amp_dtype = AMP_DTYPES.get(run.args.amp)
    bn_re_estimate(
        run.teacher, run.loader, run.info.device, amp_dtype=amp_dtype, input_spec=run.input_spec
    )
    if run.info.is_main:
        state = ckpt.model_record(run.teacher, run.label_set, run.args.input_size)
        state.update(cycle_n=run.cycle_n, epoch=epoch + 1)
        ckpt.save_checkpoint(state, run.log_dir / ckpt.schp_name(run.cycle_n))
        logger.info("self-correction cycle %d done (teacher saved)", run.cycle_n)


def write_epoch_logs(log_dir: Path, history: list[dict]) -> None:
    """loss_per_epoch.txt (the seed's columns) and curves.png of the epoch records, atomically."""
    rows = [[str(r["epoch"])] + [f"{r[k]:.6f}" for k in LOSS_PARTS] for r in history]
    text = "".join(", ".join(row) + "\n" for row in rows)
    atomic_write(log_dir / "loss_per_epoch.txt", lambda tmp: Path(tmp).write_text(text))
    plot_curves(history, log_dir / "curves.png")


def _train_state(run: Run, epoch: int) -> dict:
    """checkpoint.pth.tar's content after `epoch` (0-based) was trained."""
    args = run.args
    progress = {"epoch": epoch + 1, "cycle_n": run.cycle_n, "best_miou": run.best_miou}
    progress.update(history=run.history, args=json.loads(json.dumps(vars(args), default=str)))
    parts = (run.teacher, run.optimizer, run.scaler, run.label_set, args.input_size)
    return ckpt.train_state(ckpt.unwrap_model(run.model), *parts, **progress)


def save_epoch(run: Run, epoch: int, record: dict) -> None:
    """Rank 0: checkpoint_{N}, best.pth.tar, loss_per_epoch.txt, curves.png, checkpoint.pth.tar.

    Each file is written atomically and checkpoint.pth.tar, the resume point, last: a run killed
    before that resumes at the previous epoch and writes this epoch's files again.
    """
    improved = record.get("val_miou", -math.inf) > run.best_miou
    run.best_miou = max(run.best_miou, record.get("val_miou", -math.inf))
    state = _train_state(run, epoch)
    periodic = (epoch + 1) % run.args.eval_epochs == 0
    ckpt.save_weight_checkpoints(run.log_dir, state, periodic, improved)
    write_epoch_logs(run.log_dir, run.history)
    ckpt.save_checkpoint(state, run.log_dir / ckpt.LATEST_NAME)


def rewrite_missing_epoch_files(run: Run) -> None:
    """Resume, rank 0: write again what the resumed epoch's save left out (a run killed inside
    an older `save_epoch`, or removed files): loss_per_epoch.txt and curves.png, and
    checkpoint_{N} and best.pth.tar where that epoch wrote them."""
    if not run.history:
        return
    log_dir, done = run.log_dir, run.start_epoch
    if not all((log_dir / name).is_file() for name in ("loss_per_epoch.txt", "curves.png")):
        write_epoch_logs(log_dir, run.history)
    periodic = done % run.args.eval_epochs == 0
    periodic = periodic and not (log_dir / ckpt.periodic_name(done)).is_file()
    best = run.history[-1].get("val_miou") == run.best_miou  # the resumed epoch was the best
    best = best and not (log_dir / ckpt.BEST_NAME).is_file()
    if periodic or best:
        ckpt.save_weight_checkpoints(log_dir, _train_state(run, done - 1), periodic, best)


def main(args: argparse.Namespace) -> None:
    run = setup(args)
    if args.resume and run.info.is_main:
        rewrite_missing_epoch_files(run)
    schp_start = args.epochs if args.no_schp else args.schp_start  # no cycle: cosine to the end
    schedule = (args.epochs, args.warmup_epochs, schp_start, args.cycle_epochs)
    for epoch in range(run.start_epoch, args.epochs):
        started = time.time()
        seed_epoch(args.seed, epoch, run.info.rank)
        lr = sgdr_lr(epoch, args.learning_rate, *schedule)
        apply_lr(run.optimizer, lr)
        run.loader.sampler.set_epoch(epoch)
        run.loader.dataset.set_epoch(epoch)
        record = {"type": "epoch", "epoch": epoch, **train_one_epoch(run, epoch, lr)}
        record.update(cycle_n=run.cycle_n, lr=lr)
        if not args.no_schp and is_cycle_end(epoch, args.schp_start, args.cycle_epochs):
            self_correct(run, epoch)
        last = epoch + 1 == args.epochs
        if run.val_set is not None and ((epoch + 1) % args.val_every == 0 or last):
            bare = ckpt.unwrap_model(run.model)
            loader_kw = {"batch_size": args.batch_size, "workers": args.workers, "amp": args.amp}
            metrics, _ = evaluate(bare, run.val_set, run.label_set, run.info, **loader_kw)
            record["val_miou"] = metrics.miou
        record["seconds"] = round(time.time() - started, 1)
        run.history.append(record)
        if run.info.is_main:
            run.log.write(record)
            save_epoch(run, epoch, record)
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
            logger.info("epoch %d: %s", epoch, json.dumps(shown))
        barrier(run.info)
    cleanup(run.info)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
