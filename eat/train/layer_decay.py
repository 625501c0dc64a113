"""Layer-wise learning-rate decay as per-parameter LR scales for :func:`eat.train.optim.param_groups`.

Two conventions, for an encoder of ``depth`` blocks and decay ``d``:

* ``"eat"`` (official EAT fine-tuning): block ``i`` (0-based) gets ``d ** (depth - i)``, so the last block
  is already scaled by ``d``; **everything else** - patch embedding, positional tables, extra tokens,
  the pre-block LayerNorm, final norm and the head - keeps scale 1.0.
* ``"beit"`` (BEiT / MAE fine-tuning): the embedding layer sits at the bottom of the ladder with
  ``d ** (depth + 1)``; block ``i`` gets ``d ** (depth - i)``; final norm and head 1.0. "Embedding" means
  the parameters that act before the first block: ``patch_embed``, ``pos_embed``, ``time_pos``,
  ``freq_pos``, ``token_pos``, ``extra_tokens`` and ``pre_norm`` (the last has no BEiT counterpart;
  it normalises the embedded sequence, so it is grouped with the embeddings).

The scale multiplies the scheduled peak LR; whether it also scales the floor is ``OptimConfig.min_lr_mode``
(``absolute``, the official fairseq behaviour, keeps the unscaled ``min_lr`` for every group).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from torch import nn

from eat.train.optim import param_groups

DecayForm = Literal["eat", "beit"]

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_HEAD = re.compile(r"(?:^|\.)(head|fc_norm)\.")
_EMBEDDING = re.compile(r"(?:^|\.)(patch_embed|pos_embed|time_pos|freq_pos|token_pos|extra_tokens|pre_norm)(?:\.|$)")


def layer_decay_scale(decay: float, depth: int, form: DecayForm = "eat") -> Callable[[str], float]:
    """``name -> LR scale`` for parameters named like ``[prefix.]blocks.{i}.*`` / ``[prefix.]patch_embed.*``."""
    if form not in ("eat", "beit"):
        raise ValueError(f"unknown layer-decay form {form!r}; choose 'eat' or 'beit'")

    def scale(name: str) -> float:
        block = _BLOCK.search(name)
        if block is not None:
            i = int(block.group(1))
            if not 0 <= i < depth:
                raise ValueError(f"{name}: block index {i} outside 0..{depth - 1}")
            return decay ** (depth - i)
        if form == "beit" and _EMBEDDING.search(name):
            return decay ** (depth + 1)
        return 1.0

    return scale


def finetune_param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float,
    depth: int,
    form: DecayForm = "eat",
    decay_all: bool = True,
    no_decay: tuple[str, ...] = ("extra_tokens", "token_pos", "pos_embed", "time_pos", "freq_pos"),
    head_scale: float = 1.0,
) -> list[dict]:
    """AdamW groups with layer-decayed LR scales (``layer_decay=1`` switches the decay off).

    ``decay_all=True`` puts weight decay on every parameter (what the official fairseq run does);
    otherwise biases, norm gains and the ``no_decay`` names (tokens, positional tables) get none.
    ``head_scale`` multiplies the LR of the classifier head (``head.*``, ``fc_norm.*``) instead of its
    layer-decay scale of 1.0: a freshly fitted or random head can move faster than the pretrained blocks.
    """
    ladder = layer_decay_scale(layer_decay, depth, form) if layer_decay != 1.0 else None
    scale = ladder
    if head_scale != 1.0:
        def scale(name: str) -> float:
            if _HEAD.search(name):
                return head_scale
            return ladder(name) if ladder is not None else 1.0
    return param_groups(model, weight_decay, decay_all=decay_all, no_decay=no_decay, lr_scale=scale)
