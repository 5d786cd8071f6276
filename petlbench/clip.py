"""CLIP backbones through open_clip: `--backbone clip:<open_clip model name>`.

open_clip builds the model and loads its weights (a pretrained tag, `--backbone-args pretrained=openai`, or a local
`--checkpoint` holding open_clip's state dict). The image tower then becomes a timm VisionTransformer with the same
weights (timm's own OpenAI-CLIP converter), so every vision method and the backbone anatomy work on it unchanged;
`tests/test_clip.py` checks its features equal open_clip's `encode_image`. The text side rides along as
`model.clip` (a `ClipText`, petlbench.textheads): not part of the image model's parameters, so vision methods never
see it; the zero-shot head and the text-prompt methods (coop, ...) use it.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from petlbench.clip_resnet import ClipResNet, is_modified_resnet, resnet_tower
from petlbench.errors import UserError
from petlbench.statefiles import read_state_dict
from petlbench.textheads import ClipText, ZeroShotHead

PREFIX = "clip:"
CONFIG_DIR = Path(__file__).parent / "clip_configs"  # petlbench's own model configs (the demo's tiny CLIP)
HEADS = ("linear", "zeroshot")  # the classifier a CLIP backbone starts from
OWN_ARGS = {"pretrained", "head"}  # --backbone-args of a CLIP backbone; the rest go to timm's ViT (drop_path_rate)


def is_clip(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def architecture(name: str) -> str:
    import open_clip
    open_clip.add_model_config(CONFIG_DIR)  # idempotent: rescans open_clip's and petlbench's config folders
    arch = name[len(PREFIX):]
    if arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
        raise UserError(f"backbone {name!r}: open_clip has no model {arch!r}"
                        + (f"; close names: {', '.join(close)}" if close else "; `open_clip.list_models()` lists them"))
    return arch


def check_args(name: str, args: dict[str, Any]) -> None:
    if args.get("head", "linear") not in HEADS:
        raise UserError(f"--backbone-args: head={args['head']!r}; expected one of {', '.join(HEADS)}")


def check(spec) -> None:
    """Planning's check of a CLIP spec: model, args, and weights named (a pretrained tag, a checkpoint, or none)."""
    import open_clip
    arch = architecture(spec.name)
    check_args(spec.name, spec.args)
    if spec.pretrained and not spec.checkpoint and not spec.args.get("pretrained"):
        tags = ", ".join(t for a, t in open_clip.list_pretrained() if a == arch) or "none"
        raise UserError(f"backbone {spec.name!r}: name its weights with --backbone-args pretrained=TAG "
                        f"(open_clip's tags for {arch}: {tags}), or pass --checkpoint PATH or --random-init")
    if spec.checkpoint:
        open_clip_model(dataclasses.replace(spec, pretrained=False))  # loading it names a misfit


def open_clip_model(spec) -> nn.Module:
    """open_clip's CLIP with the weights the spec asks for: a checkpoint, a pretrained tag, or random init."""
    import open_clip
    arch = architecture(spec.name)
    check_args(spec.name, spec.args)
    tag = spec.args.get("pretrained")
    if spec.pretrained and not spec.checkpoint:
        check(spec)
        try:
            return open_clip.create_model(arch, pretrained=tag, device="cpu")
        except (RuntimeError, OSError, ValueError) as exc:
            raise UserError(f"backbone {spec.name!r}: could not fetch open_clip weights {tag!r} "
                            f"({type(exc).__name__}); pass --checkpoint PATH for local weights or --random-init"
                            ) from None
    cfg = open_clip.get_model_config(arch)
    if "text_cfg" not in cfg or cfg["text_cfg"].get("hf_model_name"):
        raise UserError(f"backbone {spec.name!r}: petlbench reads open_clip's own text tower only "
                        "(this model's is a Hugging Face model)")
    model = open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"],
                           quick_gelu=cfg.get("quick_gelu", False))
    if spec.checkpoint and not model.logit_scale.is_meta:  # a meta build (planning's counts) reads no weights
        path = Path(spec.checkpoint).expanduser()
        missing, unexpected = model.load_state_dict(read_state_dict(path), strict=False)
        if missing or unexpected:
            what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
            raise UserError(f"--checkpoint {path}: does not fit open_clip's {arch} ({what})")
    return model


class ClipVisionTransformer(VisionTransformer):
    """timm's ViT as a CLIP image tower: `reset_classifier` keeps a zero-shot head (built from class names, no
    random draw) and replaces a linear one as timm does."""

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        if isinstance(self.head, ZeroShotHead) and self.head.num_classes == num_classes:
            return
        super().reset_classifier(num_classes, global_pool)

    # A second image tower (`model.side`, set by a method: CoMo's DINO) sees the same input image; its features join
    # the pooled token, so the head's input (and every pre-logit feature) is [pooled token, side features]. timm's
    # ViT hands the image only to forward_features and the head only the tokens: the side's features ride between.
    def forward_features(self, x, *args, **kwargs):
        tokens = super().forward_features(x, *args, **kwargs)
        side = getattr(self, "side", None)
        return tokens if side is None else (tokens, side(x))

    def forward_head(self, x, pre_logits: bool = False):
        if not isinstance(x, tuple):
            return super().forward_head(x, pre_logits)
        tokens, side = x
        joined = torch.cat([super().forward_head(tokens, pre_logits=True), side.to(tokens.dtype)], dim=-1)
        return joined if pre_logits else self.head(joined)


def image_tower(visual: nn.Module, name: str, timm_args: dict[str, Any] | None = None) -> ClipVisionTransformer:
    """open_clip's ViT image tower as a timm model with the same weights and no head (num_classes=0)."""
    from open_clip.transform import PreprocessCfg
    from open_clip.transformer import VisionTransformer as OpenClipViT
    if not isinstance(visual, OpenClipViT):
        raise UserError(f"backbone {name!r}: petlbench reads open_clip's ViT and ModifiedResNet image towers only "
                        f"(this one is {type(visual).__name__})")
    if (visual.attn_pool is not None or visual.pool_type != "tok" or isinstance(visual.ln_pre, nn.Identity)
            or not isinstance(visual.patch_dropout, nn.Identity) or visual.final_ln_after_pool):
        raise UserError(f"backbone {name!r}: its image tower pools or normalises unlike CLIP's ViT "
                        "(class-token pooling after ln_pre); timm's CLIP ViT cannot hold it")
    block = visual.transformer.resblocks[0]
    if not isinstance(getattr(block, "ls_1", nn.Identity()), nn.Identity):
        raise UserError(f"backbone {name!r}: layer scale in the image tower is not supported")
    width = visual.conv1.out_channels
    try:
        model = vit_like(visual, block, width, timm_args or {})
    except TypeError as exc:
        raise UserError(f"--backbone-args: timm's VisionTransformer cannot take {sorted(timm_args)} "
                        f"({str(exc).splitlines()[0][:120]})") from None
    state = checkpoint_filter_fn({f"visual.{k}": v for k, v in visual.state_dict().items()}, model)
    state.pop("head.weight"), state.pop("head.bias")  # CLIP's projection: the zero-shot head holds it
    model.load_state_dict(state, strict=True, assign=state["pos_embed"].is_meta)
    prep = getattr(visual, "preprocess_cfg", None) or dataclasses.asdict(PreprocessCfg())  # defaults: OpenAI's
    model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {},
                                mean=tuple(prep["mean"]), std=tuple(prep["std"]),
                                interpolation=prep.get("interpolation", "bicubic"),
                                input_size=(3, *model.patch_embed.img_size), crop_pct=1.0)
    return model


def vit_like(visual: nn.Module, block: nn.Module, width: int, timm_args: dict[str, Any]) -> ClipVisionTransformer:
    from open_clip.transformer import QuickGELU
    return ClipVisionTransformer(
        img_size=visual.image_size, patch_size=visual.patch_size, embed_dim=width,
        depth=len(visual.transformer.resblocks), num_heads=block.attn.num_heads,
        mlp_ratio=block.mlp.c_fc.out_features / width, pre_norm=True, global_pool="token", num_classes=0,
        norm_layer=functools.partial(nn.LayerNorm, eps=visual.ln_pre.eps),
        act_layer="quick_gelu" if isinstance(block.mlp.gelu, QuickGELU) else "gelu", **timm_args)


def create(spec, num_classes: int, classnames: list[str] | None = None,
           templates: list[str] | None = None) -> ClipVisionTransformer | ClipResNet:
    """The CLIP image tower as a timm ViT (a ResNet tower as a timm ResNet, petlbench.clip_resnet), its text side
    in `model.clip`, and the head the spec's `head` names: `linear` (timm's fresh linear layer on the pooled token,
    as timm fine-tunes CLIP) or `zeroshot` (CLIP's projection and the class names' text embeddings, which train)."""
    if classnames and len(classnames) != num_classes:
        raise UserError(f"backbone {spec.name}: the task has {num_classes} classes but {len(classnames)} class names")
    clip = open_clip_model(spec)
    timm_args = {k: v for k, v in spec.args.items() if k not in OWN_ARGS}
    if is_modified_resnet(clip.visual):  # RN50, ...: its attention pool ends in the joint space (c_proj)
        model = resnet_tower(clip.visual, spec.name, timm_args)
        projection = torch.eye(model.num_features, device=clip.logit_scale.device)
    else:
        model = image_tower(clip.visual, spec.name, timm_args)
        projection = clip.visual.proj
    names = classnames or [f"class {i}" for i in range(num_classes)]  # planning's builds: counts need no names
    text = ClipText.from_open_clip(clip, spec.name[len(PREFIX):], projection, names, templates or [])
    model.clip = text  # a plain attribute: ClipText is not an nn.Module, so the image model's parameters exclude it
    if spec.args.get("head", "linear") == "zeroshot":
        model.head = ZeroShotHead.from_text(text)
    else:
        model.reset_classifier(num_classes)
    return model
