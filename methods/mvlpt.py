"""MVLPT (Shen et al., WACV 2024, "Multitask Vision-Language Prompt Tuning"): prompts learned jointly on a set of
source tasks, then the initialisation of prompt tuning on each target task.

`--methods mvlpt:sources=a+b` runs in two phases of one sweep (petlbench.sweep.transfer): the source run trains one
set of prompts on the union of the source tasks' training images, classified among the union of their class names
(one softmax over every source class: the official multitask scripts, which leave `--multi-task-label-pertask`
off), once; then each target task's run starts from the source run's saved prompts (`init`, checked by sha256)
and trains them on its own data. Without `sources` it is plain single-task prompt tuning from a random start.

MVPT (`variant=mvpt`, the default here): VPT-deep prompts in the CLIP image tower (sIncerass/MVLPT
trainers/mvlpt.py, ImageEncoder: prompts after ln_pre and the class token, layer 0's replaced by its own at every
later layer; uniform init bound sqrt(6 / (3 * patch^2 + width)); VPT.DROPOUT 0.0; VPT.PROJECT -1: no projection).
The text side is frozen: "a photo of a {name}." through the text tower (MVLPT builds its text prompts from that
prefix when no text context is learned), so only the prompts train. MCoOp (`variant=mcoop`): CoOp's learned text
context instead (petlbench.methods.coop's head: `tokens` vectors from N(0, 0.02), shared by all classes, the class
name in the middle as the MVLPT scripts set CLASS_TOKEN_POSITION), the image tower untouched. MUPT
(`variant=mupt`): both, coupled (petlbench.unifiedprompts): the text context and the deep visual prompts pass
together through MVLPT's one-layer transformer (PROJECT_METHOD transformer, PROJECT_DIM 128: `proj_dim`) and are
split again; `tokens` is M for both sides (4, MVLPT.md's MUPT runs; 16 for MVPT and MCoOp). The released layer
attends each token to itself only (see petlbench.unifiedprompts); `mixing=joint` lets the tokens attend to each
other as UPT describes. What a source run hands on is everything that trains (the context, the prompts, and for
MUPT the shared layer, as the official load_model restores the whole prompt learner), never a class's row.

Departures: the official source run samples ImageNet and ten CoOp datasets few-shot; here the sources are tasks of
the same suite (with `--shots K` each drawn as its targets are). The source run picks no checkpoint (the official
one keeps the best on val; petlbench reports the last epoch everywhere).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional

import torch
from torch import nn

from petlbench.backbones import anatomy
from petlbench.errors import UserError
from petlbench.method import Method
from petlbench.methods.coop import CoOpHead
from petlbench.methods.zeroshot import FixedZeroShotHead
from petlbench.options import Range
from petlbench.prompts import MAX_TOKENS, InsertPrompts, StripPrompts, make_prompts
from petlbench.textprompts import initial_context
from petlbench.unifiedprompts import InsertUnified, UnifiedHead, UnifiedPrompts

TEXT_TEMPLATE = "a photo of a {}."  # MVLPT's prompt prefix "a photo of a " + name + "."


@dataclass
class MVLPTConfig:
    sources: list[str] = field(default_factory=list)  # the suite's source tasks (a+b); []: no source phase
    variant: Literal["mvpt", "mcoop", "mupt"] = "mvpt"
    # visual tokens per layer (mvpt), text context vectors (mcoop), both (mupt); MVLPT's scripts take it as an
    # argument (NCTX); none: MVLPT.md's runs, 16 for mvpt and mcoop (CoOp's N_CTX), 4 for mupt
    tokens: Annotated[Optional[int], Range(min=1, max=MAX_TOKENS)] = None
    dropout: Annotated[float, Range(min=0, lt=1)] = 0.0  # TRAINER.MVLPT.VPT.DROPOUT
    proj_dim: Annotated[int, Range(min=1)] = 128  # mupt: TRAINER.MVLPT.PROJECT_DIM, the shared layer's width
    mixing: Literal["released", "joint"] = "released"  # mupt: each token alone (the released code), or all together


DEFAULT_TOKENS = {"mvpt": 16, "mcoop": 16, "mupt": 4}
MUPT_ONLY = ("proj_dim", "mixing")  # options of the unified variant, left out of the others' identity


@dataclass(frozen=True)
class SourcePrompts:
    """The source run's saved prompts a target run starts from: the file and its sha256 (part of the target's
    identity, so a source that trained again re-trains its targets)."""
    path: str
    sha256: str


class MVLPT(Method):
    name = "mvlpt"
    description = "prompts learned jointly on source tasks, then tuned on each target (CLIP)"
    Config = MVLPTConfig
    paper = "MVLPT (Shen et al., WACV 2024)"
    families = ("vit",)
    needs_text = True
    recipe = "coop"  # MVLPT's configs/trainers/MVLPT/vit_b16.yaml is CoOp's: SGD lr 0.002, batch 32, 200 epochs
    decay_rule = "all"  # dassl's build_optimizer decays every trained tensor
    defaults_source = ("sIncerass/MVLPT configs/trainers/MVLPT/vit_b16.yaml (SGD lr 0.002, batch 32, cosine, 200 "
                       "epochs, 1 warm-up epoch: CoOp's recipe) and dassl's OPTIM.WEIGHT_DECAY 5e-4; train.py's "
                       "TRAINER.MVLPT defaults (VPT deep, dropout 0, no projection; COOP random init); the scripts' "
                       "CLASS_TOKEN_POSITION middle; tokens 16: CoOp's N_CTX (MVLPT's scripts take NCTX as an argument); "
                       "MUPT: MVLPT.md's M=4, PROJECT_METHOD transformer, PROJECT_DIM 128")

    def __init__(self, config=None, role: str = "target", init: SourcePrompts | None = None):
        super().__init__(config)
        self.role = role  # "source": the joint run on the sources; "target": one task's run
        self.init = init

    @property
    def tokens(self) -> int:
        return self.config.tokens or DEFAULT_TOKENS[self.config.variant]

    def identity(self) -> dict:
        """The options with `tokens` resolved; the unified variant's own options only for it (runs of the others
        keep the configuration ids they had before MUPT)."""
        found = asdict(self.config)
        found["tokens"] = self.tokens
        if self.config.variant != "mupt":
            for key in MUPT_ONLY:
                del found[key]
        if self.role == "source":
            found["role"] = "source"
        if self.init is not None:
            found["init_sha256"] = self.init.sha256
        return found

    def apply(self, model: nn.Module) -> nn.Module:
        cfg, text, n = self.config, model.clip, self.tokens
        if cfg.variant == "mcoop":
            model.head = CoOpHead(text, initial_context(text, n, ""), "middle")
        elif cfg.variant == "mupt":
            vit = anatomy(model, self.name)
            where = vit.num_prefix_tokens
            visual = torch.cat([make_prompts(n, vit.embed_dim, "xavier", vit.patch_size).data for _ in vit.blocks])
            unified = UnifiedPrompts(initial_context(text, n, ""), visual, cfg.proj_dim, cfg.mixing == "joint")
            for i, block in enumerate(vit.blocks):
                block.replace(nn.Sequential(InsertUnified(unified, i, where, cfg.dropout), block.module,
                                            StripPrompts(n, where)))
            model.head = UnifiedHead(text, unified, "middle")
        else:
            vit = anatomy(model, self.name)
            where = vit.num_prefix_tokens
            for block in vit.blocks:
                prompts = make_prompts(n, vit.embed_dim, "xavier", vit.patch_size)
                block.replace(nn.Sequential(
                    InsertPrompts(prompts, where, cfg.dropout), block.module, StripPrompts(n, where)))
            model.head = FixedZeroShotHead(text.projection, text.class_embeddings(text.classnames, [TEXT_TEMPLATE]),
                                           text.logit_scale)
        if self.init is not None:
            load_prompts(model, self.init)
        return model


def prompt_names(model: nn.Module) -> list[str]:
    """What a source run hands on (every tensor the method trains): the visual prompts, the text context, or the
    unified prompts with their shared layer (under the first path that holds them)."""
    names = []
    for name, m in model.named_modules():  # a module held in several places is listed once
        if isinstance(m, InsertPrompts):
            names.append(f"{name}.prompts")
        elif isinstance(m, UnifiedPrompts):
            names += [f"{name}.{key}" for key, _ in m.named_parameters()]
    return names + (["head.ctx"] if isinstance(model.get_classifier(), CoOpHead) else [])


def load_prompts(model: nn.Module, init: SourcePrompts) -> None:
    """Copy the source run's prompts into the freshly built target model (names and shapes must match)."""
    from safetensors.torch import load_file
    from petlbench.backbone import file_sha256
    path = Path(init.path)
    if not path.is_file() or file_sha256(path) != init.sha256:
        raise UserError(f"{path}: the source run's prompts are missing or changed since the sweep was planned; "
                        "run the same command again")
    own = dict(model.named_parameters())
    tensors = load_file(str(path))
    if set(tensors) != set(prompt_names(model)):
        raise UserError(f"{path}: the source run's prompts do not fit this model (other tokens or depth)")
    with torch.no_grad():
        for name, value in tensors.items():
            if own[name].is_meta:
                continue
            if own[name].shape != value.shape:
                raise UserError(f"{path}: prompt {name} has shape {tuple(value.shape)}, the model "
                                f"{tuple(own[name].shape)}")
            own[name].copy_(value)
