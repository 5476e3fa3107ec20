"""The training loader: the augmented LIP-layout training set, sharded over processes.

Batches hold uint8 images and labels without edges (4x/8x fewer bytes from the workers);
`prepare_batch` normalises them and makes the edge targets on the device.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from datasets.images import init_decode_worker
from datasets.label_set import LabelSet
from datasets.lip import LIPDataset, collate_samples
from datasets.transforms import (
    FLIP_PROB,
    ROTATION_FACTOR,
    SCALE_FACTOR,
    generate_edge,
    normalize_batch,
)
from networks.contracts import InputSpec


def augmented_train_set(
    data_dir: str | os.PathLike,
    input_size: tuple[int, int],
    input_spec: InputSpec,
    label_set: LabelSet,
    label_lut: np.ndarray | None,
    *,
    mirror: bool = True,
    scale: bool = True,
    num_samples: int = -1,
    seed: int = 0,
) -> LIPDataset:
    """The `train` split with SCHP's augmentation (random flips; random scale and rotation).

    Raises:
        FileNotFoundError, ValueError: the data folder's layout or contents are wrong.
    """
    return LIPDataset(
        data_dir,
        split="train",
        input_size=input_size,
        input_spec=input_spec,
        label_set=label_set,
        label_lut=label_lut,
        augment=mirror or scale,
        num_samples=num_samples,
        seed=seed,
        flip_prob=FLIP_PROB if mirror else 0.0,
        scale_factor=SCALE_FACTOR if scale else 0.0,
        rotation_factor=ROTATION_FACTOR if scale else 0.0,
        with_edge=False,
        target_dtype=torch.uint8,
        image_dtype=torch.uint8,
    )


def train_loader(
    dataset: LIPDataset,
    batch_size: int,
    workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """Shuffled full batches of this process's shard (set the epoch on `.sampler` and
    `.dataset` before each epoch: the order and the augmentation depend on it).

    Raises:
        ValueError: fewer images than one batch on every process.
    """
    if len(dataset) < batch_size * world_size:
        raise ValueError(
            f"{dataset.root}: {len(dataset)} training images, fewer than one batch "
            f"({batch_size} x {world_size} processes); lower --batch-size"
        )
    sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed, drop_last=True)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=init_decode_worker,
        collate_fn=collate_samples,
    )


def prepare_batch(batch: dict, input_spec: InputSpec, device: torch.device) -> tuple[Tensor, ...]:
    """Loader batch -> (normalised float images, int64 labels, int64 edge targets) on `device`."""
    images = normalize_batch(batch["image"].to(device), input_spec)
    labels = batch["label"].to(device)
    return images, labels.long(), generate_edge(labels).long()
