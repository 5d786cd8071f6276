"""CAVPT, class-aware visual prompt tuning: DPT (Xing et al., "Dual Modality Prompt Tuning for Vision-Language
Pre-Trained Model", IEEE TMM 2023, arXiv 2208.08340; first titled "Class-Aware Visual Prompt Tuning for
Vision-Language Pre-Trained Model"), as its official code does it (fanrena/DPT @11fef90, trainers/DPT.py).

Three parts train, on a frozen CLIP:
- text prompts: CoOp's learned context (methods.coop's prompt learner: 16 vectors N(0, 0.02), shared, the name at
  the end), the classifier being CLIP's logit scale x cos(image feature, text feature of each class's prompt);
- VPT-deep prompts (`vpt_tokens` per block, N(0, 0.02)) in every block before the last `layers`;
- class-aware prompts in each of the last `layers` blocks, made per image from the text features of its top
  `classes` classes (ranked by zero-shot CLIP on the unprompted image; all classes when C <= `classes`):
      q = meta(t_k)                                   (embed -> width, with bias; one per layer)
      a = softmax(W_q q . W_k [x; e]^T / sqrt(32))    (W_q, W_k: width -> 32; x: the block's input tokens,
      o = W_v (a [x; e])                               detached; e: 10 learned key tokens; W_v: width -> width)
      prompt_k = LN2(o + q),  aux logits_k = W_c LN1(o)  (W_c: width -> C, no bias)
  the prompts join the block's input tokens and are dropped after it (as VPT-deep's).
Loss: CE(logits) + alpha x CE(aux logits of the prompts made from the true class's text feature, over the
class-aware layers), as CAVPT's `training_loss`. Defaults: the released run (train_single.sh: CPN 10, VPT N_CTX 10,
BOTTOMLIMIT 12 = class-aware prompts in the last block only, ALPHA 0.3, COOP N_CTX 16, CSC False, end).

`text=fixed` replaces the learned text side by the zero-shot class embeddings (the task's templates), fixed: an
ablation, not the paper's. Checked against the official generator and block loop (copied into a scratch script,
same weights and random tensors, tiny CLIP): selected classes equal, logits within 1.5e-6, auxiliary logits 5e-7.

The queries are the text features and the keys and values the image's tokens, as the code and the paper's abstract
("cross attention between text prompts features and image patch token embeddings") have it, not learned queries
over text keys. Departures from the official code, and why:
- its first C = 30 epochs add CE(zero-shot image feature vs learned text) + CE(prompted image vs zero-shot text)
  and weight the main CE by 0.1 ("general knowledge guidance", PRETRAIN.C); petlbench's loop has no epoch-dependent
  losses, so the main CE and the class-aware term are used throughout;
- one optimizer and learning rate for everything (official: SGD lr 0.01 for the visual prompts and the generator,
  0.002 for the text context, separate warm-ups); fp32 (official fp16); prompts are inserted after the class
  token rather than appended at the end (attention is order-free without position embeddings: the same outputs);
  the zero-shot ranking uses the task's templates (official: one hand-written template per dataset).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones import anatomy
from petlbench.method import Method, refuse_above
from petlbench.methods.coop import CoOpHead
from petlbench.options import Range
from petlbench.prompts import MAX_TOKENS
from petlbench.recipes import COOP_SOURCE
from petlbench.textprompts import initial_context, prompt_tokens

ATTN_DIM = 32  # the generator's query/key width (fixed in the official Attention: nn.Linear(width, 32))
KEY_TOKENS = 10  # learned tokens appended to the generator's keys and values (fixed in the official CAVPT: 10)
INIT_STD = 0.02  # the official init of both the VPT-deep prompts and the key tokens
SOURCE = ("fanrena/DPT @11fef90 train_single.sh (CPN 10, VPT N_CTX 10, BOTTOMLIMIT 12, ALPHA 0.3, COOP N_CTX 16 "
          "CSC False end, OPTIM.LR 0.01, OPTIM.MAX_EPOCH 60) over configs/trainers/VPT/*.yaml (SGD, 10 warm-up "
          "epochs, batch 32)")


@dataclass
class CAVPTConfig:
    vpt_tokens: Annotated[int, Range(min=0, max=MAX_TOKENS)] = 10  # VPT-deep prompts per block before the last `layers`
    layers: Annotated[int, Range(min=1)] = 1  # the last blocks that get class-aware prompts (13 - BOTTOMLIMIT)
    classes: Annotated[int, Range(min=1, max=MAX_TOKENS)] = 10  # top classes whose prompts enter (CPN)
    alpha: Annotated[float, Range(min=0)] = 0.3  # weight of the class-aware prompt loss
    n_ctx: Annotated[int, Range(min=1)] = 16  # CoOp's context vectors of the text prompts (COOP.N_CTX)
    text: Literal["coop", "fixed"] = "coop"  # learned text prompts, or the zero-shot class embeddings fixed


class Relay:
    """The class text features of the forward under way: the blocks compute them, the head reads them (plain
    data, not a module: it holds no weights)."""
    features: torch.Tensor | None = None


class FixedText(nn.Module):
    """Each class's text feature, fixed: the zero-shot class embeddings (CLIP's prompt ensemble)."""

    def __init__(self, embeddings: torch.Tensor):
        super().__init__()
        self.register_buffer("embeddings", embeddings.detach().clone())

    def forward(self) -> torch.Tensor:
        return self.embeddings


class LearnedText(nn.Module):
    """CoOp's prompt learner (methods.coop.CoOpHead: its context, prompts and the frozen text tower): each class's
    text feature, unnormalised, as DPT hands them to the generator (the classifier normalises them)."""

    def __init__(self, coop: CoOpHead):
        super().__init__()
        self.coop = coop

    def forward(self) -> torch.Tensor:
        return self.coop.tower(self.coop.prompts(self.coop.ctx), self.coop.tokens)


class PromptGenerator(nn.Module):
    """One block's class-aware prompts: each selected class's text feature, mapped to the width, attends over the
    block's input tokens and the learned key tokens (DPT's CAVPT.forward and Attention)."""

    def __init__(self, embed_dim: int, width: int, num_classes: int):
        super().__init__()
        self.meta = nn.Linear(embed_dim, width)
        self.q = nn.Linear(width, ATTN_DIM, bias=False)
        self.k = nn.Linear(width, ATTN_DIM, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.keys = nn.Parameter(torch.randn(KEY_TOKENS, width) * INIT_STD)
        self.norm = nn.LayerNorm(width)  # before the auxiliary classifier
        self.classifier = nn.Linear(width, num_classes, bias=False)
        self.out_norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, width) prompts and (B, K, C) auxiliary logits from (B, N, width) tokens and (B, K, embed) text."""
        query = self.meta(text.to(tokens.dtype))
        kv = torch.cat([tokens.detach(), self.keys.to(tokens.dtype).expand(tokens.shape[0], -1, -1)], dim=1)
        attn = torch.softmax(self.q(query) @ self.k(kv).transpose(1, 2) / math.sqrt(ATTN_DIM), dim=-1)
        out = self.v(attn @ kv)
        return self.out_norm(out + query), self.classifier(self.norm(out))


class ClassAwareBlocks(nn.Module):
    """The ViT's blocks with VPT-deep prompts before `first` and class-aware prompts from `first` on; ranks the
    classes by zero-shot CLIP (the unprompted blocks) when there are more than `classes`."""

    def __init__(self, blocks: nn.Sequential, norm: nn.Module, proj: nn.Linear, zero_shot: torch.Tensor,
                 text: nn.Module, relay: Relay, cfg: CAVPTConfig, prefix: int):
        super().__init__()
        width, embed = proj.in_features, proj.out_features
        self.blocks, self.norm, self.proj, self.text, self.relay = blocks, norm, proj, text, relay
        self.register_buffer("zero_shot", zero_shot.detach().clone())  # (C, embed) unit rows: the ranking
        self.first, self.classes, self.alpha, self.prefix = len(blocks) - cfg.layers, cfg.classes, cfg.alpha, prefix
        self.prompts = nn.ParameterList(nn.Parameter(torch.randn(cfg.vpt_tokens, width) * INIT_STD)
                                        for _ in range(self.first if cfg.vpt_tokens else 0))
        self.generators = nn.ModuleList(PromptGenerator(embed, width, zero_shot.shape[0]) for _ in range(cfg.layers))
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # (selected classes, aux logits) of training

    @torch.no_grad()
    def select(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K) the classes whose prompts enter: zero-shot CLIP's top K on the unprompted image (all if C <= K)."""
        count = self.zero_shot.shape[0]
        if self.classes >= count:  # every class: the order does not matter (prompts carry no position)
            return torch.arange(count, device=x.device).expand(x.shape[0], count)
        image = F.normalize(self.proj(self.norm(self.blocks(x))[:, 0]), dim=-1)
        return (image @ self.zero_shot.to(image.dtype).T).topk(self.classes, dim=-1).indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.text()  # (C, embed)
        self.relay.features = features
        selected = self.select(x)  # (B, K)
        chosen = features[selected]  # (B, K, embed)
        aux = []
        for i, block in enumerate(self.blocks):
            if i >= self.first:
                prompts, logits = self.generators[i - self.first](x, chosen)
                aux.append(logits)
            elif self.prompts:
                prompts = self.prompts[i].to(x.dtype).expand(x.shape[0], -1, -1)
            else:
                x = block(x)
                continue
            p, n = self.prefix, prompts.shape[1]
            x = block(torch.cat([x[:, :p], prompts, x[:, p:]], dim=1))
            x = torch.cat([x[:, :p], x[:, p + n:]], dim=1)
        self.last = (selected, torch.stack(aux, dim=1)) if self.training else None  # aux: (B, layers, K, C)
        return x

    def auxiliary_loss(self, labels: torch.Tensor) -> torch.Tensor | None:
        """alpha x CE of the auxiliary logits of the prompts made from each image's true class (every class-aware
        layer); None when no image's true class was among its selected ones (as the official skips the term)."""
        if self.last is None or not self.alpha:
            return None
        selected, logits = self.last
        self.last = None
        hit = selected == labels[:, None]  # (B, K)
        if not hit.any():
            return None
        rows = logits.permute(0, 2, 1, 3)[hit]  # (hits, layers, C)
        target = labels[:, None].expand_as(selected)[hit][:, None].expand(-1, rows.shape[1])
        return self.alpha * F.cross_entropy(rows.reshape(-1, rows.shape[-1]).float(), target.reshape(-1))


class CAVPTHead(nn.Module):
    """CLIP's classifier on the prompted image: logit scale x cos(projected pooled token, the class text features
    of this forward, from the relay)."""

    def __init__(self, proj: nn.Linear, relay: Relay, logit_scale: float, tower: nn.Module | None = None):
        super().__init__()
        self.proj, self.relay, self.tower = proj, relay, tower  # tower: only named, as frozen (the blocks run it)
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.in_features = proj.in_features

    def frozen_parts(self) -> tuple[nn.Module, ...]:
        return (self.proj,) if self.tower is None else (self.proj, self.tower)  # CLIP's own: backbone, not head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.relay.features is None:
            raise RuntimeError("CAVPTHead reads the class text features its model's blocks computed; "
                               "call the whole model")
        text = F.normalize(self.relay.features, dim=-1).to(x.dtype)
        return self.logit_scale * F.normalize(self.proj(x), dim=-1) @ text.T


class CAVPT(Method):
    name = "cavpt"
    description = ("DPT's class-aware visual prompts: text features of each image's top classes attend over the "
                   "tokens of the last blocks; VPT-deep prompts before them")
    paper = "DPT / CAVPT (Xing et al., IEEE TMM 2023, arXiv 2208.08340), fanrena/DPT"
    Config = CAVPTConfig
    families = ("vit",)  # the CLIP image tower, read as a timm ViT
    needs_text = True
    recipe = "coop"  # Dassl's SGD (momentum 0.9, wd 5e-4, batch 32, cosine), CLIP's preprocessing
    train_defaults = {"lr": 0.01, "epochs": 60, "warmup_epochs": 10}  # train_single.sh over the VPT configs
    decay_rule = "all"  # Dassl's SGD: every trained tensor in one group
    defaults_source = SOURCE + "; " + COOP_SOURCE

    def training_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, loss_fn) -> torch.Tensor:
        """DPT's loss: the classifier's CE plus the class-aware term of this forward (kept by the blocks); the model
        may be a tail on cached activations (petlbench.engine.prefix), so the blocks are found by class."""
        loss = loss_fn(model(images), labels)
        terms = [m.auxiliary_loss(labels) for m in model.modules() if isinstance(m, ClassAwareBlocks)]
        return sum((t for t in terms if t is not None), loss)

    def check_fit(self, model: nn.Module) -> None:
        depth = anatomy(model, self.name).depth
        refuse_above(self, "option 'layers'", self.config.layers, depth, f"the backbone's {depth} blocks")
        if self.config.text == "coop":  # every class's prompt fits the text tower's context (named as cavpt's)
            prompt_tokens(model.clip, model.clip.classnames, self.config.n_ctx, "end", self.name)

    def apply(self, model: nn.Module) -> nn.Module:
        cfg, vit, text = self.config, anatomy(model, self.name), model.clip
        zero_shot = text.class_embeddings(text.classnames, text.templates)
        tower = None
        if cfg.text == "coop":
            coop = CoOpHead(text, initial_context(text, cfg.n_ctx, ""), "end")  # CoOp's: N(0, 0.02), unified, end
            source, proj, tower = LearnedText(coop), coop.proj, coop.tower
        else:
            source, proj = FixedText(zero_shot), nn.Linear(*text.projection.shape, bias=False)
            with torch.no_grad():
                proj.weight.copy_(text.projection.T)
        proj.requires_grad_(False)  # CLIP's projection; the text tower came frozen
        relay = Relay()
        model.blocks = ClassAwareBlocks(model.blocks, model.norm, proj, zero_shot, source, relay, cfg,
                                        vit.num_prefix_tokens)
        model.head = CAVPTHead(proj, relay, text.logit_scale, tower)
        return model
