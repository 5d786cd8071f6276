"""E^2VPT (Han et al., ICCV 2023): key-value prompts inside every attention plus VPT-deep visual prompts.

As in ChengHan111/E2VPT (src/models/vit_backbones/vit_changeVK.py `Attention`, vit_prompt/vit_prompt_VK.py):
- key-value prompts: each layer's attention gets `kv_tokens` learned vectors per head, (heads, kv_tokens,
  head_dim), put in front of the projected keys and of the projected values (they never pass through the
  frozen q/k/v projections, and the patch and class tokens keep their own queries). The released commands set
  SHARE_PARAM_KV True (24 of 24 supervised runs): one tensor is both the key and the value prompt (`share_kv`);
- visual prompts: VPT-deep's `tokens` prompts inserted after the class token before every block and stripped
  after it (petlbench.prompts, as vpt_deep), with prompt dropout.
Trainable outside the head: depth x dim x (tokens + kv_tokens) with shared keys and values, depth x dim x
(tokens + 2 kv_tokens) without (12 x 768 x (10 + 5) = 138,240 on ViT-B/16 at the defaults).

The attention is replaced by `KVPromptAttention`, which holds the frozen timm attention and runs its own
layers (qkv, q/k norms, attention dropout, output norm, proj) with the prompts joined to keys and values;
prompt keys join after timm's k_norm (an identity in ViT-B; E2VPT's ViT has no q/k norm).

Pruning and rewinding (`prune_tokens`, `prune_pieces`: percentages; E2VPT's tune_vtab_PruningRewind_CVK.py, the
"Pruning and Rewind" commands): the visual prompts pass through one learned mask for all layers (`PromptMask`): a gate
per prompt (token-wise) and per piece of its width (segment-wise, 16 pieces; piece j holds channels j, j + 16, ...,
as the official `repeat`), both trained with the prompts. The engine (petlbench.engine.rewind) trains once, asks
`prune` for the masks (each gate's loss gradient averaged over the training batches, eval mode; the lowest-scoring
`int(n x percent / 100)` gates are cut, at least 1 prompt and 4 pieces kept, as Trainer.calculate_importance and
what_tokens_to_mask), rebuilds the model from the same seed (the same initial prompts: the rewind), fixes the mask
(`rewind`) and trains again. The official searches 81 (tokens, pieces) pairs on val200; here a pair is an option.

Weight decay: VPT's rule (E2VPT's src/solver/optimizer.py is VPT's: SGD decays every trained tensor but the
head's bias). Faithfulness: on a random timm ViT the logits equal the released attention's (copied into a
scratch script, same prompt tensors) to float32 rounding, see the README.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones import anatomy, replace_module
from petlbench.errors import UserError
from petlbench.method import Method
from petlbench.options import Range
from petlbench.prompts import MAX_TOKENS, InsertPrompts, PromptConfig, StripPrompts, make_prompts

# The released settings: ChengHan111/E2VPT @7a66e75 command.txt, "Documented Version (Origin 5runs ...)",
# 19 VTAB-1k and 5 FGVC commands (shared/reference/paper_settings/e2vpt_commands.csv).
SOURCE = ("visual prompts 10 per layer (NUM_TOKENS_P: 14 of 19 VTAB-1k commands; 5 on the 5 FGVC ones), key-value "
          "prompts 5 per layer (NUM_TOKENS: 17 of 19 VTAB-1k, 5 of 5 FGVC), shared keys and values (SHARE_PARAM_KV "
          "24 of 24), Kaiming-uniform key-value init (ORIGIN_INIT 2, 24 of 24), prompt dropout 0.1 (DROPOUT_P 24 of "
          "24), key-value dropout 0 (MODEL.P_VK.DROPOUT, the config default; no command sets it): ChengHan111/E2VPT "
          "command.txt; SGD, batch 64 (19 of 19 VTAB-1k commands), base lr 0.04 (x batch / 256: the optimizer's 0.01 "
          "at batch 64) and wd 1e-3: SOLVER.BASE_LR 0.01 and WEIGHT_DECAY 1e-3 in 18 of 19 VTAB-1k configs the "
          "commands name (configs/prompt/prompt_test/VTAB-1k; cifar100: 2.5, 1e-2), values the commands' "
          "tune_vtab_CVK.py replaces by its val200 search over the vpt recipe's grid")


@dataclass
class E2VPTConfig(PromptConfig):
    tokens: Annotated[int, Range(min=0, max=MAX_TOKENS)] = 10  # visual prompts per layer (NUM_TOKENS_P)
    kv_tokens: Annotated[int, Range(min=0, max=MAX_TOKENS)] = 5  # key-value prompts per layer (NUM_TOKENS)
    share_kv: bool = True  # one tensor as both key and value prompt (SHARE_PARAM_KV)
    kv_init: Literal["kaiming", "xavier", "normal"] = "kaiming"  # ORIGIN_INIT 2, 0, 1
    kv_dropout: Annotated[float, Range(min=0, lt=1)] = 0.0  # on the key-value prompts (MODEL.P_VK.DROPOUT)
    prune_tokens: Annotated[int, Range(min=0, max=90)] = 0  # % of visual prompts cut (CLS_TOKEN_MASK_PERCENT)
    prune_pieces: Annotated[int, Range(min=0, max=90)] = 0  # % of each prompt's pieces cut (..._PIECE_MASK_PERCENT)
    pieces: Annotated[int, Range(min=1)] = 16  # pieces per prompt (CLS_TOKEN_P_PIECES_NUM)


MIN_TOKENS, MIN_PIECES = 1, 4  # kept at least (MIN_NUMBER_CLS_TOKEN, MIN_NUMBER_CLS_TOKEN_PIECE)


class PromptMask(nn.Module):
    """E2VPT's gates on the visual prompts, one set for all layers: per prompt and per piece of its width (piece j
    gates channels j, j + pieces, ...: the official `mask.repeat(1, dim / pieces)`). Trained, then fixed by `keep`."""

    def __init__(self, tokens: int, pieces: int):
        super().__init__()
        self.tokens = nn.Parameter(torch.ones(tokens))
        self.pieces = nn.Parameter(torch.ones(tokens, pieces))

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        gate = self.pieces.repeat(1, prompts.shape[-1] // self.pieces.shape[1]) * self.tokens[:, None]
        return prompts * gate.to(prompts.dtype)

    def keep(self, tokens_cut: list[int], pieces_cut: list[list[int]]) -> None:
        """The rewind's mask: ones, zeros where cut, no longer trained."""
        with torch.no_grad():
            self.tokens.fill_(1)
            self.pieces.fill_(1)
            self.tokens[tokens_cut] = 0
            for token, cut in enumerate(pieces_cut):
                self.pieces[token, cut] = 0
        self.tokens.requires_grad_(False)
        self.pieces.requires_grad_(False)


class MaskedInsertPrompts(InsertPrompts):
    """InsertPrompts whose prompts pass the shared PromptMask (registered in the first block only, so state dicts
    and counts hold it once)."""

    def __init__(self, prompts: nn.Parameter, position: int, dropout: float, mask: PromptMask, owner: bool):
        super().__init__(prompts, position, dropout)
        if owner:
            self.mask = mask
        self.shared = (mask,)  # a tuple: not registered again

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.shared[0](self.dropout(self.prompts)).expand(x.shape[0], -1, -1).to(x.dtype)
        return torch.cat([x[:, : self.position], p, x[:, self.position:]], dim=1)


def cut_count(total: int, percent: int, least: int) -> int:
    """How many gates a percentage cuts (Trainer.determine_mask_sequence): int(total x percent / 100), `least` kept."""
    return min(int(total * percent / 100), max(total - least, 0))


def lowest(scores: list[float], count: int) -> list[int]:
    """The `count` lowest-scoring indices, ties by index (what_tokens_to_mask's stable ascending sort)."""
    return sorted(sorted(range(len(scores)), key=lambda i: scores[i])[:count])


def make_kv_prompts(heads: int, count: int, head_dim: int, init: str, patch_size: tuple[int, int]) -> nn.Parameter:
    prompts = torch.empty(heads, count, head_dim)
    if init == "kaiming":  # E2VPT's ORIGIN_INIT 2 on the (heads, count, head_dim) tensor: fan-in count x head_dim
        nn.init.kaiming_uniform_(prompts, a=0, mode="fan_in", nonlinearity="leaky_relu")
    elif init == "xavier":  # ORIGIN_INIT 0: VPT's bound with the code's fixed 16 in place of a width
        bound = math.sqrt(6.0 / float(3 * patch_size[0] * patch_size[1] + 16))
        nn.init.uniform_(prompts, -bound, bound)
    elif init == "normal":  # ORIGIN_INIT 1
        nn.init.trunc_normal_(prompts, std=0.02)
    else:
        raise ValueError(f"unknown key-value prompt init {init!r}")
    return nn.Parameter(prompts)


class KVPromptAttention(nn.Module):
    """A timm attention whose keys and values are preceded by learned per-head prompts.

    `attn` (frozen) lends its layers; the forward is timm's Attention.forward with the prompts joined
    along the key axis: softmax(q [P_k; k]^T / sqrt(d)) [P_v; v]."""

    def __init__(self, attn: nn.Module, keys: nn.Parameter, values: nn.Parameter | None, dropout: float = 0.0):
        super().__init__()
        self.attn = attn
        self.keys = keys
        self.values = values  # None: the keys serve as values too (E2VPT's SHARE_PARAM_KV)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("e2vpt: key-value prompts take no attention mask (a classifying ViT passes none)")
        a = self.attn
        b, n, _ = x.shape
        gate = a.gate(x).sigmoid() if getattr(a, "gate", None) is not None else None
        q, k, v = a.qkv(x).reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        keys = self.dropout(self.keys).to(k.dtype).expand(b, -1, -1, -1)
        values = keys if self.values is None else self.dropout(self.values).to(v.dtype).expand(b, -1, -1, -1)
        k, v = torch.cat([keys, k], dim=2), torch.cat([values, v], dim=2)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=a.attn_drop.p if self.training else 0.0, scale=a.scale)
        x = a.norm(x.transpose(1, 2).reshape(b, n, a.num_heads * a.head_dim))
        if gate is not None:
            x = x * gate
        return a.proj_drop(a.proj(x))

    def extra_repr(self) -> str:
        return f"kv_tokens={self.keys.shape[1]}, shared={self.values is None}"


def timm_attention(block, method: str) -> nn.Module:
    """The block's attention, if it has the layers KVPromptAttention runs (timm's Attention does)."""
    attn = block.attn
    needed = ("qkv", "q_norm", "k_norm", "attn_drop", "norm", "proj", "proj_drop", "num_heads", "head_dim", "scale")
    if attn is None or block.qkv is None or any(not hasattr(attn, part) for part in needed):
        raise UserError(f"{method}: a block's attention is not timm's Attention (fused qkv, heads, q/k norms, proj)")
    return attn


class E2VPT(Method):
    name = "e2vpt"
    description = "key-value prompts in every attention plus VPT-deep visual prompts"
    Config = E2VPTConfig
    paper = "E^2VPT (Han et al., ICCV 2023); ChengHan111/E2VPT"
    families = ("vit",)  # prompts are tokens of a ViT's sequence and vectors of its attention heads
    recipe = "vpt"  # E2VPT's code is VPT's: SGD, 100 epochs, 10 warm-up, the same lr x wd grid (tune_vtab_CVK.py)
    decay_rule = "vpt"  # see the module docstring
    train_defaults = {"lr": 0.04, "weight_decay": 0.001, "batch_size": 64}
    defaults_source = SOURCE

    def check_fit(self, model):
        width = anatomy(model, self.name).embed_dim
        if self.rewinds() and (not self.config.tokens or width % self.config.pieces):
            raise UserError(f"method e2vpt: pruning needs visual prompts (tokens > 0) and pieces={self.config.pieces} "
                            f"dividing the width {width}")

    def rewinds(self) -> bool:
        return bool(self.config.prune_tokens or self.config.prune_pieces)

    def apply(self, model):
        cfg = self.config
        vit = anatomy(model, self.name)
        where = vit.num_prefix_tokens
        mask = PromptMask(cfg.tokens, cfg.pieces) if self.rewinds() else None
        for i, block in enumerate(vit.blocks):
            if cfg.kv_tokens:
                attn = timm_attention(block, self.name)
                make = lambda: make_kv_prompts(attn.num_heads, cfg.kv_tokens, attn.head_dim, cfg.kv_init,  # noqa: E731
                                               vit.patch_size)
                keys, values = make(), (None if cfg.share_kv else make())
                replace_module(block.module, attn, KVPromptAttention(attn, keys, values, cfg.kv_dropout))
            if cfg.tokens:
                prompts = make_prompts(cfg.tokens, vit.embed_dim, cfg.init, vit.patch_size)
                insert = InsertPrompts(prompts, where, cfg.dropout) if mask is None else \
                    MaskedInsertPrompts(prompts, where, cfg.dropout, mask, owner=i == 0)
                block.replace(nn.Sequential(insert, block.module, StripPrompts(cfg.tokens, where)))
        return model

    def prune(self, model, batches):
        """The trained model's gate scores (loss gradient, mean over the training batches, eval mode) and the cuts."""
        mask = prompt_mask(model)
        model.eval()
        tokens, pieces, n = torch.zeros_like(mask.tokens), torch.zeros_like(mask.pieces), 0
        for images, labels in batches:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            tokens, pieces, n = tokens + mask.tokens.grad, pieces + mask.pieces.grad, n + 1
        model.zero_grad(set_to_none=True)
        tokens, pieces = (tokens / max(n, 1)).tolist(), (pieces / max(n, 1)).tolist()
        cfg = self.config
        cut_tokens = lowest(tokens, cut_count(len(tokens), cfg.prune_tokens, MIN_TOKENS))
        per_token = cut_count(cfg.pieces, cfg.prune_pieces, MIN_PIECES)
        cut_pieces = [lowest(row, per_token) for row in pieces]
        width = anatomy(model, self.name).embed_dim
        kept = (len(tokens) - len(cut_tokens)) * (cfg.pieces - per_token) * (width // cfg.pieces)
        return {"tokens_cut": cut_tokens, "pieces_cut": cut_pieces, "tokens_kept": len(tokens) - len(cut_tokens),
                "pieces_kept_per_token": cfg.pieces - per_token, "prompt_values_kept_per_layer": kept,
                "token_scores": tokens, "piece_scores": pieces}

    def rewind(self, model, pruned):
        """A freshly built model (the run's seed: the first training's initial prompts) takes the fixed mask."""
        prompt_mask(model).keep(pruned["tokens_cut"], pruned["pieces_cut"])


def prompt_mask(model: nn.Module) -> PromptMask:
    found = [m for m in model.modules() if isinstance(m, PromptMask)]
    if len(found) != 1:
        raise ValueError(f"e2vpt: expected one prompt mask, found {len(found)}")
    return found[0]
