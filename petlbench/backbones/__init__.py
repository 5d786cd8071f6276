"""Backbone anatomy: what a method needs to know about a timm model, one small module per family.

A method asks `anatomy(model)` for the blocks in depth order (each with its width, attention
projections, MLP layers and norms) and the token layout, and declares the families it supports
(`Method.families`); it never looks at a class name or matches parameter names. Only this package
knows timm's classes.
"""
from __future__ import annotations

from torch import nn

from petlbench.backbones.anatomy import ALL_FAMILIES, Anatomy, Block, replace_module
from petlbench.errors import UserError

__all__ = ["ALL_FAMILIES", "Anatomy", "Block", "anatomy", "family_of", "replace_module"]


def _readers():
    from petlbench.backbones import convnext, resnet, swin, vit
    return {"vit": vit, "swin": swin, "convnext": convnext, "resnet": resnet}


def family_of(model: nn.Module) -> str | None:
    """'vit', 'swin', 'convnext' or 'resnet'; None for a model no anatomy reads."""
    return next((name for name, reader in _readers().items() if reader.matches(model)), None)


def anatomy(model: nn.Module, method: str = "this method") -> Anatomy:
    """The model's anatomy; one line naming the model when no family reads it."""
    family = family_of(model)
    if family is None:
        raise UserError(f"{method}: no backbone anatomy reads {type(model).__name__}; "
                        f"supported families: {', '.join(ALL_FAMILIES)}")
    return _readers()[family].read(model)
