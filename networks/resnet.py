"""Original SCHP network (AugmentCE2P): deep-stem ResNet-101, PSP context, CE2P decoder/edge/fusion.

A pure-PyTorch port of GoGoDuck912/Self-Correction-Human-Parsing `networks/AugmentCE2P.py` whose
parameter names match the released checkpoints once `module.` is stripped, the stem and layers sit
under `backbone.` and `fushion` is spelt `fusion` (`networks/weights.py: load_schp_checkpoint`).
InPlace-ABN becomes `BatchNormAct2d`: plain BatchNorm in the backbone (activation-free; the
bottleneck applies its own ReLU), BatchNorm + LeakyReLU(0.01) in every head. Every resize is
bilinear with align_corners=True, as in SCHP. The model takes BGR input (`SCHP_BGR`).
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from networks.contracts import SCHP_BGR, ParsingOutput
from networks.heads import EdgeModule, build_fusion_head, fused_edge_levels, fused_fusion
from networks.norm import conv_bn_act_layers
from networks.ops import resize_corners

RESNET101_LAYERS = (3, 4, 23, 3)
EXPANSION = 4  # bottleneck output channels / planes
STEM_CHANNELS = (64, 64, 128)
STAGE_PLANES = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 1)  # layer4 keeps stride 16 and dilates instead
LAYER4_DILATION = 2
FEATURE_STRIDES = (4, 8, 16, 16)
PSP_BINS = (1, 2, 3, 6)
PSP_CHANNELS = 512
DECODER_CHANNELS = 256
SKIP_CHANNELS = 48  # the decoder's reduced stride-4 skip connection


class Bottleneck(nn.Module):
    """ResNet bottleneck with the stride in the 3x3 conv: 1x1 -> 3x3 (stride, dilation) -> 1x1.

    Input (B, Cin, H, W); output (B, 4 * planes, ceil(H/stride), ceil(W/stride)).
    """

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        out_channels = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


def _make_layer(
    in_channels: int, planes: int, blocks: int, stride: int, dilation: int
) -> nn.Sequential:
    out_channels = planes * EXPANSION
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    layers = [Bottleneck(in_channels, planes, stride, dilation, downsample)]
    layers += [Bottleneck(out_channels, planes, 1, dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class DeepStemResNet(nn.Module):
    """Deep-stem ("ResNet-C") dilated ResNet with output stride 16.

    Args:
        layers: bottleneck blocks per stage ((3, 4, 23, 3) for ResNet-101).

    Input: (B, 3, H, W). Output: 4 maps (B, C_k, H_k, W_k) with C = `out_channels`
    (256, 512, 1024, 2048) at strides `strides` (4, 8, 16, 16); H_1 = ceil(H/4).
    """

    def __init__(self, layers: Sequence[int] = RESNET101_LAYERS) -> None:
        super().__init__()
        c1, c2, c3 = STEM_CHANNELS
        self.conv1 = nn.Conv2d(3, c1, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = c3
        for k, (planes, blocks, stride) in enumerate(
            zip(STAGE_PLANES, layers, STAGE_STRIDES, strict=True), start=1
        ):
            dilation = LAYER4_DILATION if k == len(STAGE_PLANES) else 1
            self.add_module(f"layer{k}", _make_layer(in_channels, planes, blocks, stride, dilation))
            in_channels = planes * EXPANSION
        self.out_channels = tuple(planes * EXPANSION for planes in STAGE_PLANES)
        self.strides = FEATURE_STRIDES

    def stage_modules(self) -> list[list[nn.Module]]:
        """Stage 1 = stem convs/BNs + layer1, then [layer2], [layer3], [layer4]."""
        stem = [self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3]
        return [[*stem, self.layer1], [self.layer2], [self.layer3], [self.layer4]]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 64, H/2, W/2)
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))  # (B, 128, H/2, W/2)
        x = self.maxpool(x)  # (B, 128, H/4, W/4)
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


class PSPModule(nn.Module):
    """Pyramid pooling: pooled branches at `bins`, concatenated with the input, 3x3 bottleneck.

    Input (B, Cin, H, W); output (B, out_channels, H, W).
    """

    def __init__(
        self, in_channels: int, out_channels: int = PSP_CHANNELS, bins: Sequence[int] = PSP_BINS
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), *conv_bn_act_layers(in_channels, out_channels))
            for b in bins
        )
        self.bottleneck = nn.Sequential(
            *conv_bn_act_layers(in_channels + len(bins) * out_channels, out_channels, kernel=3)
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        priors = [resize_corners(stage(x), size) for stage in self.stages]
        return self.bottleneck(torch.cat([*priors, x], dim=1))  # in: (B, Cin + len(bins)*out, H, W)


class Decoder(nn.Module):
    """CE2P parsing decoder: context (stride 16) + reduced layer1 skip (stride 4).

    Output: (parsing logits (B, K, H_1, W_1), decoder features (B, 256, H_1, W_1)).
    """

    def __init__(self, num_classes: int, context_channels: int, skip_channels: int) -> None:
        super().__init__()
        width = DECODER_CHANNELS
        self.conv1 = nn.Sequential(*conv_bn_act_layers(context_channels, width))
        self.conv2 = nn.Sequential(*conv_bn_act_layers(skip_channels, SKIP_CHANNELS))
        self.conv3 = nn.Sequential(
            *conv_bn_act_layers(width + SKIP_CHANNELS, width), *conv_bn_act_layers(width, width)
        )
        self.conv4 = nn.Conv2d(width, num_classes, 1)

    def forward(self, context: Tensor, skip: Tensor) -> tuple[Tensor, Tensor]:
        context = resize_corners(self.conv1(context), skip.shape[-2:])  # (B, 256, H/4, W/4)
        x = torch.cat([context, self.conv2(skip)], dim=1)  # (B, 304, H/4, W/4)
        x = self.conv3(x)
        return self.conv4(x), x


class AugmentCE2P(nn.Module):
    """SCHP's AugmentCE2P parser.

    Args:
        num_classes: K, the parsing classes (LIP 20, ATR 18, Pascal-Person-Part 7).
        layers: bottleneck blocks per ResNet stage.

    Input: BGR image normalised with `SCHP_BGR`, (B, 3, H, W), any H and W (batch > 1 to train:
    the 1x1 PSP branch normalises a single value per channel).
    Output: `ParsingOutput` of logits at stride 4: parsing and fusion (B, K, ceil(H/4),
    ceil(W/4)), edge (B, 2, ceil(H/4), ceil(W/4)).
    """

    def __init__(self, num_classes: int, layers: Sequence[int] = RESNET101_LAYERS) -> None:
        super().__init__()
        self.arch = "resnet101"
        self.num_classes = num_classes
        self.input_spec = SCHP_BGR
        self.fused = False  # plain modules; `networks.heads.fuse_heads` switches
        self.backbone = DeepStemResNet(layers)
        c1, c2, c3, c4 = self.backbone.out_channels
        self.context_encoding = PSPModule(c4)
        self.decoder = Decoder(num_classes, PSP_CHANNELS, c1)
        self.edge = EdgeModule((c1, c2, c3))
        self.fusion = build_fusion_head(DECODER_CHANNELS + self.edge.feature_channels, num_classes)

    def forward(self, x: Tensor) -> ParsingOutput:
        x1, x2, x3, x4 = self.backbone(x)
        parsing, parsing_fea = self.decoder(self.context_encoding(x4), x1)
        if self.fused:  # the edge and fusion heads with the kernels of `networks.ops`
            edge, edge_feas = fused_edge_levels(self.edge, x1, x2, x3)
            return ParsingOutput(parsing, fused_fusion(self.fusion, parsing_fea, edge_feas), edge)
        edge, edge_fea = self.edge(x1, x2, x3)
        fusion = self.fusion(torch.cat([parsing_fea, edge_fea], dim=1))  # (B, 256 + 768, H/4, W/4)
        return ParsingOutput(parsing=parsing, fusion=fusion, edge=edge)


def resnet101(num_classes: int, **kw) -> AugmentCE2P:
    """The original SCHP model (ResNet-101 AugmentCE2P); loads the released LIP/ATR/Pascal files."""
    return AugmentCE2P(num_classes, layers=RESNET101_LAYERS, **kw)
