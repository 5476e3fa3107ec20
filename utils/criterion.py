"""CE2P training loss with SCHP soft labels: segmentation + edge + parsing/edge consistency.

Every prediction is upsampled bilinearly (align_corners=True, as SCHP) to the label size, then

    total = sum over P in (parsing, fusion) of  λs·(½·Lovász(softmax(P), Y) + ½·CE(P, Y))
          + λe·WCE(E, B)
          + sum over P in (parsing, fusion) of  λc·Cons(P, E)

with Y the label (255 = ignore), B the 0/1 edge target, E the edge logits. Ignore pixels (Y = 255)
are left out of every term; the label tensor is never modified.

During SCHP cycles (a teacher output `soft` is given, cycle_n = n) the CE terms become KL
divergences against soft targets T = (1-α)·softmax(teacher) + α·onehot(hard), α = 1/(n+1): a convex
mix of teacher probabilities and the one-hot label (upstream mixed logits before a softmax, seed
bug 9). Parsing targets use the teacher's fusion logits, edge targets its edge logits. Lovász keeps
the hard label, as upstream.

Decisions (against the original SCHP's `utils/criterion.py` and `utils/kl_loss.py`):
- KL normalisation: summed over classes, averaged over valid pixels (the seed's 'batchmean';
  upstream's 'mean' also divided by C). With this choice the KL against a one-hot target (α = 1)
  equals the CE exactly, so the loss scale does not jump when the cycles start.
- Edge weights: class-balanced, w(non-edge) = #pos/#valid, w(edge) = #neg/#valid over the batch's
  valid pixels, normalised by the summed weights (PyTorch's weighted mean). They are kept during
  cycles (upstream drops them): each pixel's KL is weighted by the class of its hard edge target, so
  that at α = 1 the edge KL equals the weighted CE and the thin edge class keeps its weight.
- Consistency: upstream's term is identically 0 with no gradient (seed bug 7). Here the parsing
  prediction's own edge map is derived differentiably from its probabilities: for the four neighbour
  pairs used by `generate_edge` (same pixel marked), the total-variation distance ½·Σ_c|p_a - p_b|
  (0 when both pixels agree, 1 for different one-hot labels; a pair touching an ignore pixel is 0),
  then the same EDGE_WIDTH×EDGE_WIDTH dilation, as a max-pool, 0 at ignore pixels. On one-hot
  probabilities it equals `generate_edge` of the argmax. The penalty is smooth-L1 between that map
  and the edge branch's edge probability, averaged over valid pixels, so it is ~0 when the branches
  agree, defined on any batch (never NaN), and its gradient reaches both the parsing and the edge
  branches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from datasets.label_set import IGNORE_INDEX
from datasets.transforms import EDGE_WIDTH
from networks.contracts import ParsingOutput
from networks.ops import resize_corners
from utils.lovasz import lovasz_softmax

SEG_HALF = 0.5  # Lovász and CE/KL share the segmentation weight equally (CE2P)
SMOOTH_L1_BETA = 1.0
WEIGHT_EPS = 1e-12  # avoids 0/0 when a batch has no valid (or no weighted) pixel

CONSISTENCY_MODES = ("soft", "hard")


def _upsample(logits: Tensor, size: torch.Size) -> Tensor:
    """(N, C, h, w) -> (N, C, H, W) float32, bilinear with align_corners=True (SCHP).

    The small map is made contiguous first: a channels-last one (the heads' output) would give a
    channels-last full-size map, and its gradient (contiguous, from the loss terms) would be
    copied back to channels-last in the upsample's backward, a full-size pass per prediction.
    """
    logits = logits.float()
    return logits if logits.shape[-2:] == size else resize_corners(logits.contiguous(), size)


def _weighted_mean(values: Tensor, weight: Tensor) -> Tensor:
    """Sum of values·weight over pixels divided by the summed weights (0 when all weights are 0)."""
    return (values * weight).sum() / weight.sum().clamp(min=WEIGHT_EPS)


def _hard_nll(log_probs: Tensor, target: Tensor, weight: Tensor, ignore_index: int) -> Tensor:
    """Cross-entropy per pixel (from log-probabilities) against hard ids, weighted mean; ignore
    pixels must have weight 0."""
    safe_target = torch.where(target == ignore_index, 0, target)
    return _weighted_mean(F.nll_loss(log_probs, safe_target, reduction="none"), weight)


def _hard_ce(logits: Tensor, target: Tensor, weight: Tensor, ignore_index: int) -> Tensor:
    """`_hard_nll` of the logits' log-softmax."""
    return _hard_nll(F.log_softmax(logits, dim=1), target, weight, ignore_index)


def _soft_kl(log_q: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """KL(target ‖ q) summed over classes, weighted mean over pixels; `log_q` are the predicted
    log-probabilities (log-softmax of the logits)."""
    kl = (torch.xlogy(target, target) - target * log_q).sum(dim=1)  # (N, H, W)
    return _weighted_mean(kl, weight)


def soft_target(
    teacher_logits: Tensor, label: Tensor, cycle_n: int, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """SCHP label refinement: (1-α)·softmax(teacher) + α·onehot(label), α = 1/(cycle_n+1).

    Args:
        teacher_logits: (N, C, H, W) teacher logits at the label size.
        label: (N, H, W) hard ids; at `ignore_index` pixels the target is the teacher's
            distribution alone (those pixels are excluded from the loss anyway).
        cycle_n: number of aggregations so far (0 gives the one-hot label).

    Returns:
        (N, C, H, W) probabilities (each pixel sums to 1), without gradient.
    """
    alpha = 1.0 / (cycle_n + 1)
    num_classes = teacher_logits.shape[1]
    teacher = F.softmax(teacher_logits.detach().float(), dim=1)
    valid = label != ignore_index
    one_hot = F.one_hot(torch.where(valid, label, 0), num_classes).movedim(-1, 1).float()
    mixed = (1.0 - alpha) * teacher + alpha * one_hot
    return torch.where(valid.unsqueeze(1), mixed, teacher)


def edge_class_weights(edge: Tensor, valid: Tensor) -> Tensor:
    """Per-pixel class-balanced weights over the batch's valid pixels (0 at invalid pixels).

    Edge pixels get #neg/(#pos+#neg), non-edge pixels #pos/(#pos+#neg) (CE2P/SCHP). A batch
    without any edge pixel gets all-zero weights, so its edge term is 0 (upstream: NaN).
    """
    positive = (edge == 1) & valid
    num_pos = positive.sum().float()
    num_valid = valid.sum().float().clamp(min=1.0)
    w_edge = (num_valid - num_pos) / num_valid
    w_non_edge = num_pos / num_valid
    return torch.where(positive, w_edge, w_non_edge) * valid


# The four neighbour pairs of `generate_edge`: (slice of pixel a, slice of pixel b), a is marked.
_FULL, _HEAD, _TAIL = slice(None), slice(None, -1), slice(1, None)
_PAIRS = (
    ((_TAIL, _FULL), (_HEAD, _FULL)),  # vertical: lower pixel
    ((_FULL, _HEAD), (_FULL, _TAIL)),  # horizontal: left pixel
    ((_HEAD, _HEAD), (_TAIL, _TAIL)),  # diagonal: top-left pixel
    ((_HEAD, _TAIL), (_TAIL, _HEAD)),  # anti-diagonal: top-right pixel
)


def _pair_masks(valid: Tensor) -> list[Tensor]:
    """Per neighbour pair, (N, H', W') bool: both pixels valid (computed once per batch)."""
    return [valid[(..., *a)] & valid[(..., *b)] for a, b in _PAIRS]


class _PairDistance(torch.autograd.Function):
    """(N, C, H, W) probs -> (4, N, H, W): Σ_c|p_a - p_b| of each neighbour pair at its marked
    pixel, 0 where a pixel is invalid or unmarked. The backward accumulates into one gradient
    tensor instead of autograd's zero-filled full-size gradient per slice."""

    @staticmethod
    def forward(ctx: FunctionCtx, probs: Tensor, *pair_masks: Tensor) -> Tensor:
        n, _, h, w = probs.shape
        raw = probs.new_zeros(4, n, h, w)
        buffer = torch.empty_like(probs)  # one scratch map for the four differences
        for k, ((a, b), both) in enumerate(zip(_PAIRS, pair_masks, strict=True)):
            difference = torch.sub(probs[(..., *a)], probs[(..., *b)], out=buffer[(..., *a)])
            distance = difference.abs_().sum(dim=1)
            raw[(k, ..., *a)] = distance.masked_fill_(~both, 0.0)
        ctx.save_for_backward(probs, *pair_masks)
        return raw

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_raw: Tensor) -> tuple[Tensor | None, ...]:
        probs, *pair_masks = ctx.saved_tensors
        grad = torch.zeros_like(probs)
        buffer = torch.empty_like(probs)
        for k, ((a, b), both) in enumerate(zip(_PAIRS, pair_masks, strict=True)):
            upstream = grad_raw[(k, ..., *a)].masked_fill(~both, 0.0).unsqueeze(1)
            part = torch.sub(probs[(..., *a)], probs[(..., *b)], out=buffer[(..., *a)])
            part.sgn_().mul_(upstream)
            grad[(..., *a)] += part
            grad[(..., *b)] -= part
        return (grad, *(None for _ in pair_masks))


def parsing_edge_map(
    probs: Tensor,
    valid: Tensor,
    width: int = EDGE_WIDTH,
    pair_masks: list[Tensor] | None = None,
) -> Tensor:
    """Differentiable edge map of a parsing prediction, in [0, 1].

    Args:
        probs: (N, C, H, W) class probabilities.
        valid: (N, H, W) bool, False at ignore pixels (pairs touching them are not edges).
        width: dilation window, as `datasets.transforms.generate_edge`.
        pair_masks: `_pair_masks(valid)`, to share between predictions of one batch.

    Returns:
        (N, H, W); on one-hot probabilities it equals `generate_edge` of the argmax labels.
    """
    if pair_masks is None:
        pair_masks = _pair_masks(valid)
    # Σ_c|p_a - p_b| of each pair at its marked pixel; the ½ of the total-variation distance is
    # applied after the max (exact: a power-of-two scale commutes with max).
    raw = _PairDistance.apply(probs, *pair_masks)
    dilated = F.max_pool2d(raw.amax(dim=0).unsqueeze(1), width, stride=1, padding=width // 2)
    return dilated.squeeze(1).mul(0.5).masked_fill(~valid, 0.0)  # ignore pixels: never edges


class CE2PLoss(nn.Module):
    """CE2P/SCHP loss (module docstring for the terms and decisions).

    Args:
        lambda_s: weight of the segmentation terms (λs).
        lambda_e: weight of the edge term (λe).
        lambda_c: weight of the consistency terms (λc).
        ignore_index: label value excluded from every term.
        consistency: "soft" derives the parsing edges from the softmax probabilities (gradient
            reaches both branches); "hard" from the argmax (the seed's `--cons_loss_type hard`:
            only the edge branch is pulled towards the parsing edges).
    """

    def __init__(
        self,
        lambda_s: float = 1.0,
        lambda_e: float = 1.0,
        lambda_c: float = 0.1,
        ignore_index: int = IGNORE_INDEX,
        consistency: str = "soft",
    ) -> None:
        super().__init__()
        if consistency not in CONSISTENCY_MODES:
            raise ValueError(f"consistency must be one of {CONSISTENCY_MODES}, got {consistency!r}")
        self.consistency = consistency
        self.lambda_s = lambda_s
        self.lambda_e = lambda_e
        self.lambda_c = lambda_c
        self.ignore_index = ignore_index

    def forward(
        self,
        output: ParsingOutput,
        label: Tensor,
        edge: Tensor,
        soft: ParsingOutput | None = None,
        cycle_n: int = 0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its detached parts.

        Args:
            output: student logits at stride 4 (parsing, fusion: N×C×h×w; edge: N×2×h×w).
            label: (N, H, W) int64 class ids, `ignore_index` = ignore.
            edge: (N, H, W) int64 edge target in {0, 1} (`ignore_index` also ignored).
            soft: the teacher's output on the same batch during SCHP cycles, else None.
            cycle_n: number of aggregations so far; the one-hot weight is 1/(cycle_n+1).

        Returns:
            (total, {"seg", "edge", "cons"}) with total = seg + edge + cons (each weighted by
            its λ); the parts are detached, for logging.
        """
        if cycle_n < 0:
            raise ValueError(f"CE2PLoss: cycle_n must be >= 0, got {cycle_n}")
        size = label.shape[-2:]
        valid = label != self.ignore_index
        pixel_weight = valid.float()
        edge_valid = valid & (edge != self.ignore_index)
        edge_weight = edge_class_weights(edge, edge_valid)
        edge_log_probs = F.log_softmax(_upsample(output.edge, size), dim=1)
        edge_prob = edge_log_probs[:, 1].exp()  # (N, H, W)

        if soft is None:
            parsing_target = None
            edge_term = _hard_nll(edge_log_probs, edge, edge_weight, self.ignore_index)
        else:
            parsing_target = soft_target(
                _upsample(soft.fusion, size), label, cycle_n, self.ignore_index
            )
            edge_hard = torch.where(edge_valid, edge, self.ignore_index)
            edge_target = soft_target(
                _upsample(soft.edge, size), edge_hard, cycle_n, self.ignore_index
            )
            edge_term = _soft_kl(edge_log_probs, edge_target, edge_weight)

        seg = edge_term.new_zeros(())
        cons = edge_term.new_zeros(())
        pair_masks = _pair_masks(valid)
        for logits in (output.parsing, output.fusion):
            logits = _upsample(logits, size)
            # one log-softmax serves the CE/KL term and (through exp) Lovász and consistency
            log_probs = F.log_softmax(logits, dim=1)
            probs = log_probs.exp()
            if parsing_target is None:
                pixel_term = _hard_nll(log_probs, label, pixel_weight, self.ignore_index)
            else:
                pixel_term = _soft_kl(log_probs, parsing_target, pixel_weight)
            lovasz = lovasz_softmax(probs, label, self.ignore_index)
            seg = seg + SEG_HALF * self.lambda_s * (lovasz + pixel_term)
            if self.consistency == "hard":
                hard = F.one_hot(logits.detach().argmax(1), logits.shape[1])
                probs = hard.permute(0, 3, 1, 2).to(logits.dtype)  # (N, C, H, W) one-hot
            mismatch = F.smooth_l1_loss(
                parsing_edge_map(probs, valid, pair_masks=pair_masks),
                edge_prob,
                reduction="none",
                beta=SMOOTH_L1_BETA,
            )
            cons = cons + self.lambda_c * _weighted_mean(mismatch, pixel_weight)

        edge_loss = self.lambda_e * edge_term
        total = seg + edge_loss + cons
        return total, {"seg": seg.detach(), "edge": edge_loss.detach(), "cons": cons.detach()}


class CELoss(nn.Module):
    """Plain cross-entropy on the parsing logits (the "plain SegFormer" ablation, `--loss ce`).

    Reads only `output.parsing`, so it also trains models built with `heads="plain"` (no edge).
    During SCHP cycles (`soft` given) the CE becomes the KL against the same soft targets as
    `CE2PLoss` (teacher fusion, one-hot weight 1/(cycle_n+1)). Averaged over valid pixels.

    Args:
        ignore_index: label value excluded from the loss.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(
        self,
        output: ParsingOutput,
        label: Tensor,
        edge: Tensor | None = None,
        soft: ParsingOutput | None = None,
        cycle_n: int = 0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and the parts of `CE2PLoss` ({"seg", "edge", "cons"}; edge and cons are 0).

        `edge` is accepted for a common call signature and not used.
        """
        if cycle_n < 0:
            raise ValueError(f"CELoss: cycle_n must be >= 0, got {cycle_n}")
        size = label.shape[-2:]
        pixel_weight = (label != self.ignore_index).float()
        logits = _upsample(output.parsing, size)
        if soft is None:
            seg = _hard_ce(logits, label, pixel_weight, self.ignore_index)
        else:
            target = soft_target(_upsample(soft.fusion, size), label, cycle_n, self.ignore_index)
            seg = _soft_kl(F.log_softmax(logits, dim=1), target, pixel_weight)
        zero = seg.new_zeros(())
        return seg, {"seg": seg.detach(), "edge": zero, "cons": zero}


LOSSES = ("ce2p", "ce")


def build_criterion(
    name: str,
    lambda_s: float = 1.0,
    lambda_e: float = 1.0,
    lambda_c: float = 0.1,
    consistency: str = "soft",
) -> nn.Module:
    """`--loss` name -> loss module: "ce2p" (`CE2PLoss`) or "ce" (`CELoss`; λs/λe/λc unused)."""
    if name == "ce2p":
        return CE2PLoss(lambda_s, lambda_e, lambda_c, consistency=consistency)
    if name == "ce":
        return CELoss()
    raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")
