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

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.label_set import LabelSet
from datasets.lip import LIPDataset, check_samples, data_error_line
from datasets.loaders import augmented_train_set, prepare_batch, train_loader
from evaluate import build_eval_dataset, evaluate
from inference.predict import AMP_DTYPES, autocast
from networks import build_model
from networks.contracts import InputSpec
from networks.norm import convert_sync_batchnorm
from networks.weights import WeightsError
from utils import checkpoint as ckpt
from utils.cli import (
    add_train_flags,
    apply_gpu_flag,
    check_output_dir,
    check_train_args,
    common_parser,
    resolve_labels,
)
from utils.criterion import build_criterion
from utils.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup,
    distribute,
    init_distributed,
    seed_epoch,
)
from utils.fileio import remove_stale_temp_files
from utils.logger import JsonlWriter, setup_logging, write_epoch_logs
from utils.optim import build_optimizer, format_param_groups, set_train_mode
from utils.schedule import apply_lr, sgdr_lr
from utils.schp import bn_re_estimate, is_cycle_end, moving_average

logger = logging.getLogger("train")
LOSS_PARTS = ("total", "seg", "edge", "cons")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a SCHP human parser.",
        parents=[common_parser(arch_default="segformer_mit_b4", batch_size_default=16)],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        add_help=add_help,
    )
    add_train_flags(parser)
    return parser


def build_train_loader(args, label_set, lut, input_spec, info: DistInfo) -> DataLoader:
    """The augmented training loader of this process (ValueError, FileNotFoundError: bad data)."""
    augment = {"mirror": args.random_mirror, "scale": args.random_scale}
    spec = (args.data_dir, args.input_size, input_spec, label_set, lut)
    train_set = augmented_train_set(*spec, **augment, num_samples=args.num_samples, seed=args.seed)
    shard = (info.rank, info.world_size, info.device.type == "cuda")
    return train_loader(train_set, args.batch_size, args.workers, args.seed, *shard)


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
    check_train_args(args, info.device)
    label_set, lut = resolve_labels(args)
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    try:
        model = build_model(args.arch, label_set.num_classes, heads=args.heads).to(info.device)
    except ValueError as err:
        raise SystemExit(f"--heads {args.heads}: {err}") from None
    teacher = copy.deepcopy(model)
    weights = (args.imagenet_pretrain, args.model_restore, args.schp_restore)
    try:
        cycle_n = 0 if args.resume else ckpt.restore_weights(model, teacher, *weights)
    except WeightsError as err:
        raise SystemExit(str(err)) from None
    cycle_n = 0 if args.reset_schp_cycle else cycle_n
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
            progress = ckpt.resume(args.resume, model, teacher, optimizer, scaler, vars(args))
        except ValueError as err:
            raise SystemExit(str(err)) from None

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
        model, teacher = distribute(model, info), convert_sync_batchnorm(teacher)
    parts = (args, info, label_set, model, teacher, optimizer, scaler, loader, val_set, log)
    return Run(*parts, **progress)


def _batches(loader: DataLoader) -> Iterator[dict]:
    """The loader's batches; a bad sample (label id outside the set, missing or unreadable file)
    ends the run with its one-line message instead of a worker traceback."""
    try:
        yield from loader
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(data_error_line(err)) from None


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
                soft = run.teacher(images).float32()
        with autocast(info.device, args.amp):
            output = run.model(images).float32()
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
    write_epoch_logs(run.log_dir, run.history, LOSS_PARTS)
    ckpt.save_checkpoint(state, run.log_dir / ckpt.LATEST_NAME)


def rewrite_missing_epoch_files(run: Run) -> None:
    """Resume, rank 0: write again what the resumed epoch's save left out (a run killed inside
    an older `save_epoch`, or removed files): loss_per_epoch.txt and curves.png, and
    checkpoint_{N} and best.pth.tar where that epoch wrote them."""
    if not run.history:
        return
    log_dir, done = run.log_dir, run.start_epoch
    if not all((log_dir / name).is_file() for name in ("loss_per_epoch.txt", "curves.png")):
        write_epoch_logs(log_dir, run.history, LOSS_PARTS)
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
