"""Key names of HF transformers' Segformer (4.x hub files and 5.x modules) <-> ours.

One table lists each module path in the three namings; `convert_hf_state_dict` reads either HF
naming (joining key/value rows into our `attn.kv`), `convert_to_hf_state_dict` writes one.
"""

import re
from collections.abc import Mapping

import torch
from torch import Tensor

HF_NAMINGS = {"v4": 1, "v5": 2}  # column in the table below; column 0 is ours

# Module paths: ours | transformers 4.x (hub files) | transformers 5.x. {i} = stage 1..4,
# {s} = i - 1, {j} = block; encoder paths carry a `segformer.` prefix in full HF models.
# attn.k / attn.v are the two row halves of our attn.kv (keys first).
_BLOCK = ("backbone.block{i}.{j}.", "encoder.block.{s}.{j}.", "stages.{s}.blocks.{j}.")
_HF_TABLE = """
backbone.patch_embed{i}.proj  encoder.patch_embeddings.{s}.proj  stages.{s}.patch_embeddings.proj
backbone.patch_embed{i}.norm  encoder.patch_embeddings.{s}.layer_norm
                                                           stages.{s}.patch_embeddings.layer_norm
backbone.norm{i}        encoder.layer_norm.{s}         stages.{s}.layer_norm
head.linear_c{i}.proj   decode_head.linear_c.{s}.proj  decode_head.linear_projections.{s}.proj
head.linear_fuse.conv   decode_head.linear_fuse        decode_head.linear_fuse
head.linear_fuse.bn     decode_head.batch_norm         decode_head.batch_norm
head.linear_pred        decode_head.classifier         decode_head.classifier
*norm1                  layer_norm_1                   layernorm_before
*attn.q                 attention.self.query           attention.q_proj
*attn.k                 attention.self.key             attention.k_proj
*attn.v                 attention.self.value           attention.v_proj
*attn.sr                attention.self.sr
                                                       attention.sequence_reduction.sequence_reduction
*attn.norm              attention.self.layer_norm      attention.sequence_reduction.layer_norm
*attn.proj              attention.output.dense         attention.o_proj
*norm2                  layer_norm_2                   layernorm_after
*mlp.fc1                mlp.dense1                     mlp.fc1
*mlp.dwconv.dwconv      mlp.dwconv.dwconv              mlp.dwconv.dwconv
*mlp.fc2                mlp.dense2                     mlp.fc2
"""  # a leading * puts the name inside a block (_BLOCK); a row may wrap onto the next line


def _hf_rows() -> list[tuple[str, str, str]]:
    words = _HF_TABLE.split()
    rows = [tuple(words[k : k + 3]) for k in range(0, len(words), 3)]
    return [
        tuple(b + p.lstrip("*") for b, p in zip(_BLOCK, row, strict=True))
        if row[0][0] == "*"
        else row
        for row in rows
    ]


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for field in "isj":
        pattern = pattern.replace(rf"\{{{field}\}}", rf"(?P<{field}>\d+)")
    return re.compile(pattern + r"\.(?P<param>\w+)")


_HF_ROWS = _hf_rows()
_HF_PATTERNS = [[(_compile(row[col]), row) for row in _HF_ROWS] for col in range(3)]
_KV = re.compile(r"(?P<block>backbone\.block\d+\.\d+\.attn\.)(?P<half>k|v|kv)\.(?P<param>\w+)")


def _rename(key: str, src: int, dst: int) -> str | None:
    """Rename one key between columns of the HF table (None when no row matches)."""
    for pattern, row in _HF_PATTERNS[src]:
        if m := pattern.fullmatch(key):
            fields = m.groupdict()
            stage = int(fields["i"]) - 1 if fields.get("i") else int(fields.get("s") or 0)
            return row[dst].format(i=stage + 1, s=stage, j=fields.get("j")) + "." + m["param"]
    return None


def convert_hf_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """HF Segformer names (transformers 4.x or 5.x) -> ours; key and value rows join into kv.

    Other keys (e.g. an ImageNet `classifier.*`) are returned unchanged, so a strict load
    reports them.
    """
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        bare = key.removeprefix("segformer.")
        out[_rename(bare, HF_NAMINGS["v4"], 0) or _rename(bare, HF_NAMINGS["v5"], 0) or key] = value
    for key in [k for k in out if (m := _KV.fullmatch(k)) and m["half"] == "k"]:
        value_key = key.replace(".attn.k.", ".attn.v.")
        if value_key in out:
            kv = torch.cat([out.pop(key), out.pop(value_key)])  # (2C, ...): key rows first
            out[key.replace(".attn.k.", ".attn.kv.")] = kv
    return out


def convert_to_hf_state_dict(sd: Mapping[str, Tensor], naming: str = "v5") -> dict[str, Tensor]:
    """Our `backbone`/`head` tensors -> HF Segformer names ("v5": transformers 5.x, "v4": 4.x
    and hub files). `edge` and `fusion` have no HF counterpart and are left out."""
    if naming not in HF_NAMINGS:
        raise ValueError(f"networks/hf_names.py: naming {naming!r} is not in {sorted(HF_NAMINGS)}")
    split: dict[str, Tensor] = {}
    for key, value in sd.items():
        m = _KV.fullmatch(key)
        if m and m["half"] == "kv":
            key_rows, value_rows = value.chunk(2)
            split[f"{m['block']}k.{m['param']}"] = key_rows
            split[f"{m['block']}v.{m['param']}"] = value_rows
        else:
            split[key] = value
    out = {}
    for key, value in split.items():
        if new := _rename(key, 0, HF_NAMINGS[naming]):
            out[new if new.startswith("decode_head.") else f"segformer.{new}"] = value
    return out
