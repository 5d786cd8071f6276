"""Learned text prompts for CLIP (CoOp, CoCoOp): class prompts whose context words are vectors that train.

A prompt is [SOS][ctx_1 .. ctx_n][class name tokens][.][EOS] (the class token at the end; CoOp's `middle` and
`front` move the name), built in the frozen token embedding's space and run through CLIP's frozen text tower
(`ClipText.tower`). The token ids are those of "X X .. X <name>." rearranged as the position asks; the embeddings
of the context positions are replaced by the learned vectors (a scatter: exact, differentiable in the context
only). `PromptHead` holds what CoOp's and CoCoOp's heads share: the frozen text tower and CLIP's frozen visual
projection, the prompts' token ids, CLIP's logit scale, and prompts of other names (base-to-new); `PromptMethod` what
the two methods share: CLIP only, CoOp's recipe and Dassl's decay, an init phrase of n_ctx tokens.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.errors import UserError
from petlbench.method import Method
from petlbench.recipes import COOP_SOURCE
from petlbench.textheads import ClipText, Projection

POSITIONS = ("end", "middle", "front")  # where the class name sits relative to the context (CoOp's options)
PLACEHOLDER = "X"  # one token per context position, as CoOp's prompt text


def token_ids(text: ClipText, texts: list[str]) -> torch.Tensor:
    """(N, context_length) token ids on the CPU, also inside a meta-device build (planning's counts read them)."""
    with torch.device("cpu"):
        return text.tokenizer(texts)


def length(ids: torch.Tensor) -> int:
    """Tokens of one tokenized text between its start and end tokens (the pad id is 0)."""
    return int((ids != 0).sum()) - 2


INIT_STD = 0.02  # CoOp's random context: nn.init.normal_(ctx_vectors, std=0.02)


def phrase_context(text: ClipText, phrase: str) -> torch.Tensor:
    """(n, width) embeddings of a phrase's tokens ("a photo of a" -> 4), CoOp's context initialisation."""
    ids = token_ids(text, [phrase])
    with torch.no_grad():
        return text.tower.embed(ids.to(text.projection.device))[0, 1:1 + length(ids[0])].clone()


def check_phrase(text: ClipText, phrase: str, n_ctx: int, who: str) -> None:
    """An init phrase must have exactly n_ctx tokens (the official code silently takes the phrase's count)."""
    found = length(token_ids(text, [phrase])[0]) if phrase else n_ctx
    if found != n_ctx:
        raise UserError(f"method {who}: option 'init' {phrase!r} is {found} tokens but n_ctx is {n_ctx}; "
                        "set n_ctx to the phrase's length")


def initial_context(text: ClipText, n_ctx: int, phrase: str, classes: int | None = None) -> torch.Tensor:
    """(n_ctx, width) context from the phrase's embeddings, or drawn from N(0, 0.02); (classes, n_ctx, width) for a
    class-specific context (every class starts from the phrase, or its own draw)."""
    shape = (n_ctx, text.tower.width)
    if phrase:
        ctx = phrase_context(text, phrase)
        return ctx.expand(classes, *shape).clone() if classes else ctx
    return torch.randn(classes, *shape) * INIT_STD if classes else torch.randn(shape) * INIT_STD


def layout(n_ctx: int, name_len: int, position: str) -> tuple[list[int], list[int]]:
    """Sequence positions of the context tokens and of the class name's tokens (after the start token)."""
    if position == "end":
        return list(range(1, 1 + n_ctx)), list(range(1 + n_ctx, 1 + n_ctx + name_len))
    if position == "middle":  # the first half of the context, the name, the second half
        half = n_ctx // 2
        return ([*range(1, 1 + half), *range(1 + half + name_len, 1 + n_ctx + name_len)],
                list(range(1 + half, 1 + half + name_len)))
    if position == "front":
        return list(range(1 + name_len, 1 + name_len + n_ctx)), list(range(1, 1 + name_len))
    raise ValueError(position)


def prompt_tokens(text: ClipText, names: list[str], n_ctx: int, position: str, who: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (C, L) of each class's prompt with the context at its positions, and those positions (C, n_ctx)."""
    base = token_ids(text, [" ".join([PLACEHOLDER] * n_ctx) + f" {name}." for name in names])
    rows, where = [], []
    for name, ids in zip(names, base):
        name_len = length(token_ids(text, [name])[0])
        if n_ctx + name_len + 3 > ids.shape[0]:
            raise UserError(f"method {who}: the prompt of class {name!r} needs {n_ctx + name_len + 3} tokens, above "
                            f"the text tower's context length {ids.shape[0]}; use fewer context tokens (n_ctx)")
        ctx_at, name_at = layout(n_ctx, name_len, position)
        row = ids.clone()
        row[name_at] = ids[1 + n_ctx:1 + n_ctx + name_len]
        row[ctx_at] = ids[1:1 + n_ctx]
        rows.append(row)
        where.append(ctx_at)
    return torch.stack(rows), torch.tensor(where, dtype=torch.long)


class PromptHead(nn.Module):
    """Pooled image token -> CLIP's projection (frozen) -> unit norm; class prompts -> the text tower (frozen) ->
    unit norm; logits = logit scale x cosine. Subclasses own the context and say how it enters the prompts."""

    def __init__(self, text: ClipText, n_ctx: int, position: str, who: str):
        super().__init__()
        width = text.projection.shape[0]
        self.proj = Projection(text.projection)
        self.tower = text.tower  # shared with model.clip; frozen, counted as backbone (frozen_parts)
        tokens, where = prompt_tokens(text, text.classnames, n_ctx, position, who)
        self.register_buffer("tokens", tokens)  # (C, L): the prompts' ids, the end token located by them
        self.register_buffer("ctx_at", where)  # (C, n_ctx): where each class's prompt holds the context
        self.register_buffer("logit_scale", torch.tensor(float(text.logit_scale)))
        self.n_ctx, self.in_features = n_ctx, width
        self.text, self.position = text, position  # plain data: `for_classnames` builds prompts of other names

    @property
    def num_classes(self) -> int:
        return self.tokens.shape[0]

    def for_classnames(self, names: list[str]) -> "PromptHead":
        """What was learned (context, meta-net) before other names (base-to-new's new classes): new prompts only."""
        return self.with_text(dataclasses.replace(self.text, classnames=list(names))).to(self.ctx.device)

    def with_text(self, text: ClipText) -> "PromptHead":
        """A head of the same class on `text`'s class names sharing this one's learned tensors (subclasses)."""
        raise NotImplementedError

    def frozen_parts(self) -> tuple[nn.Module, ...]:
        return (self.proj, self.tower)

    def method_parts(self) -> tuple[nn.Module, ...]:
        """What trains here is the method's (context, meta-net), as the papers count it: no classifier weights."""
        return (self,)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(x), dim=-1)

    def prompts(self, ctx: torch.Tensor) -> torch.Tensor:
        """(..., C, L, width) prompt embeddings: the fixed tokens' embeddings with `ctx` at the context positions.
        `ctx` broadcasts to (..., C, n_ctx, width): (n_ctx, width) unified, (C, n_ctx, width) class-specific,
        (B, 1, n_ctx, width) one context per image."""
        fixed = self.tower.embed(self.tokens)  # (C, L, width), frozen
        lead = ctx.shape[:-3] if ctx.dim() > 3 else ()
        shape = (*lead, *self.ctx_at.shape, fixed.shape[-1])
        where = self.ctx_at[..., None].expand(shape)
        return fixed.expand(*lead, *fixed.shape).scatter(-2, where, ctx.to(fixed.dtype).expand(shape))

    def text_features(self, ctx: torch.Tensor) -> torch.Tensor:
        """(..., C, embed_dim) unit text features of the prompts with context `ctx` (see `prompts`)."""
        prompts = self.prompts(ctx)
        lead, (length_, width) = prompts.shape[:-2], prompts.shape[-2:]
        flat = prompts.reshape(-1, length_, width)
        tokens = self.tokens.repeat(flat.shape[0] // self.num_classes, 1)
        return F.normalize(self.tower(flat, tokens), dim=-1).reshape(*lead, -1)


class PromptMethod(Method):
    """CoOp and CoCoOp: learned context in CLIP's text prompts (its `Config` has `n_ctx` and an `init` phrase)."""
    families = ("vit", "resnet")  # CLIP's ViT or ResNet image tower (petlbench.clip, petlbench.clip_resnet)
    needs_text = True
    recipe = "coop"
    decay_rule = "all"  # Dassl's SGD: one group, every trained tensor (the recipe's rule too)
    defaults_source = COOP_SOURCE

    def phrase(self) -> str:
        return self.config.init.replace("_", " ")  # CoOp's configs write "a_photo_of_a"

    def check_fit(self, model: nn.Module) -> None:
        check_phrase(model.clip, self.phrase(), self.config.n_ctx, self.name)
