"""CLIP's text side and the heads built from it: what a CLIP backbone carries beside its image tower.

`ClipText` is plain data (not a module): the frozen text tower, the tokenizer, CLIP's logit scale and its visual
projection. A head that runs the text tower in its forward (CoOp's) registers `ClipText.tower` as its own frozen
part; the zero-shot head only reads it once, to embed the class names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_TEMPLATES = ("a photo of a {}.",)  # CLIP's basic prompt, when a task names no templates


class TextTower(nn.Module):
    """open_clip's text transformer (its own modules, shared): token ids or token embeddings -> text features."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.pool_type = clip.text_pool_type
        self.eos_id = getattr(clip, "text_eos_id", None)

    @property
    def width(self) -> int:
        return self.token_embedding.embedding_dim

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(tokens)

    def forward(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Text features of (N, L, width) token embeddings; `tokens` (N, L) locate each text's end token
        (embeddings may hold learned context where the ids hold placeholders, as CoOp's prompts do)."""
        from open_clip.transformer import text_global_pool
        x = embeddings + self.positional_embedding.to(embeddings.dtype)
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))
        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection if self.text_projection is not None else x

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self(self.embed(tokens), tokens)


@dataclass
class ClipText:
    tower: TextTower
    tokenizer: Any  # open_clip's tokenizer: list[str] -> (N, context_length) token ids
    logit_scale: float  # exp of CLIP's learned temperature (100 for OpenAI's weights)
    projection: torch.Tensor  # CLIP's visual projection (width, embed_dim): pooled image token -> joint space
    model_name: str
    classnames: list[str] = field(default_factory=list)  # the task's, in label order
    templates: list[str] = field(default_factory=list)  # the task's prompt templates ({} for the name); [] CLIP's

    @classmethod
    def from_open_clip(cls, clip: nn.Module, model_name: str, projection: torch.Tensor, classnames: list[str],
                       templates: list[str]) -> "ClipText":
        import open_clip
        tower = TextTower(clip)
        for p in tower.parameters():
            p.requires_grad_(False)
        scale = clip.logit_scale.detach()
        scale = 100.0 if scale.is_meta else float(scale.exp())
        return cls(tower, open_clip.get_tokenizer(model_name), scale, projection.detach(), model_name,
                   list(classnames), list(templates))

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.projection.device)

    @torch.no_grad()
    def class_embeddings(self, names: list[str], templates: list[str] | tuple[str, ...]) -> torch.Tensor:
        """(C, embed_dim) unit vectors: each class's prompts through the text tower, unit-normalised, averaged over
        the templates and normalised again (CLIP's prompt ensemble, as open_clip's build_zero_shot_classifier)."""
        templates = list(templates or DEFAULT_TEMPLATES)
        rows = []
        for name in names:
            feats = F.normalize(self.tower.encode(self.tokenize([t.format(name) for t in templates])), dim=-1)
            rows.append(F.normalize(feats.mean(0), dim=-1))
        return torch.stack(rows)


class Projection(nn.Module):
    """CLIP's visual projection (pooled image feature -> joint space), frozen, as `weight` (dim x width) like a
    bias-free Linear. CLIP's ResNet towers already end in the joint space (their attention pool's c_proj), so
    petlbench.clip gives them the identity: held as a buffer, it adds no parameter the model does not have."""

    def __init__(self, projection: torch.Tensor):
        super().__init__()
        width, dim = projection.shape
        weight = projection.T.detach().clone()
        if width == dim and torch.equal(weight, torch.eye(width, dtype=weight.dtype, device=weight.device)):
            self.register_buffer("weight", weight)
        else:
            self.weight = nn.Parameter(weight)
        self.in_features, self.out_features = width, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class ZeroShotHead(nn.Module):
    """CLIP's classifier: pooled image token -> CLIP's projection (frozen) -> unit norm -> logit scale x a linear
    map whose rows start as the class names' text embeddings (they train; the projection does not)."""

    def __init__(self, projection: torch.Tensor, class_embeddings: torch.Tensor, logit_scale: float,
                 text: ClipText | None = None):
        super().__init__()
        self.text = text  # plain data, not a submodule: what `for_classnames` embeds new names with
        width, dim = projection.shape
        self.proj = Projection(projection)
        self.classes = nn.Linear(dim, class_embeddings.shape[0], bias=False)
        with torch.no_grad():
            self.classes.weight.copy_(class_embeddings)
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.in_features = width

    @classmethod
    def from_text(cls, text: ClipText) -> "ZeroShotHead":
        """The head of the task's class names and templates."""
        return cls(text.projection, text.class_embeddings(text.classnames, text.templates), text.logit_scale, text)

    def for_classnames(self, names: list[str]) -> nn.Module:
        """This head over `names`, classes it never trained on (base-to-new): their zero-shot text embeddings (the
        task's templates) as class rows, with everything else the head holds (`renamed`)."""
        if self.text is None:
            raise ValueError(f"{type(self).__name__} was built without its text side (ClipText); give it `text`")
        return self.renamed(self.text.class_embeddings(list(names), self.text.templates))

    def renamed(self, rows: torch.Tensor) -> nn.Module:
        """The head with other class rows: CLIP's projection and logit scale as here. A subclass holding more
        (an adapter) shares it too."""
        weight = self.proj.weight.detach()
        return ZeroShotHead(weight.T.to(rows.device), rows, float(self.logit_scale), self.text).to(weight.device)

    @property
    def num_classes(self) -> int:
        return self.classes.out_features

    def frozen_parts(self) -> tuple[nn.Module, ...]:
        """What stays frozen when the runner trains the head: CLIP's projection is backbone, not head."""
        return (self.proj,)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.classes(self.image_features(x))
