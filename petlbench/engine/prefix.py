"""The frozen-prefix cache: when nothing before block k of a ViT trains or was changed by the method (Partial-k,
or any method whose first trainable part sits in block k), the activations entering block k are computed once
per backbone, weights, preprocessing, training data and k, kept in the verified store (petlbench.data.store), and
training runs blocks[k:], the final norm and the head on them: the same batches in the same order, so the
same result up to float rounding, without running the prefix every epoch.

Decided structurally, against the architecture timm builds (on the meta device): block k is the first whose
subtree differs from timm's or holds a trainable parameter; everything before it (patch embedding, class and
register tokens, position embedding, blocks[:k]) must be frozen, unchanged, without active dropout or
drop-path, and the training split without augmentation. Only the training split is cached (test splits can
hold 20k images): evaluation runs the full model once, as without the cache.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import torch
from timm.layers import DropPath, PatchDropout
from timm.models._manipulate import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer, global_pool_nlc
from torch import nn

from petlbench.data import store
from petlbench.backbone import BackboneSpec, meta_model
from petlbench.backbones import family_of
from petlbench.data.decode import TensorData
from petlbench.engine.features import FeatureCache, FeatureData, fetch_labelled
from petlbench.params import FrozenStatsBatchNorm2d

FORMAT = 1  # bump when what a prefix entry holds, or how it is computed, changes
TAIL_CHILDREN = ("blocks", "norm", "attn_pool", "fc_norm", "head_drop", "head")  # what runs after block k
MIRRORED = ("forward", "forward_features", "forward_head", "pool", "_pos_embed")  # the timm code prefix/Tail copy


class Tail(nn.Module):
    """blocks[k:], the final norm and the head of a timm VisionTransformer, on the activations entering block k.

    It holds the model's own modules, so training it trains the model (the saved task and evaluation use the
    model unchanged); its forward is timm's VisionTransformer.forward_features / forward_head from block k on.
    """

    def __init__(self, model: VisionTransformer, first: int):
        super().__init__()
        self.first = first
        self.blocks = model.blocks[first:]  # a new Sequential of the same block modules
        self.norm, self.attn_pool, self.fc_norm = model.norm, model.attn_pool, model.fc_norm
        self.head_drop, self.head = model.head_drop, model.head
        self.global_pool, self.num_prefix_tokens = model.global_pool, model.num_prefix_tokens
        self.pool_include_prefix = getattr(model, "pool_include_prefix", False)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head  # as the model's: the decay rules (petlbench.engine.decay) find the head by it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        x = self.norm(x)
        if self.attn_pool is not None:  # VisionTransformer.pool
            x = self.attn_pool(x if self.pool_include_prefix else x[:, self.num_prefix_tokens:])
        else:
            x = global_pool_nlc(x, pool_type=self.global_pool, num_prefix_tokens=self.num_prefix_tokens,
                                reduce_include_prefix=self.pool_include_prefix)
        x = self.fc_norm(x)
        x = self.head_drop(x)
        return self.head(x)


def prefix_forward(model: VisionTransformer, first: int, x: torch.Tensor) -> torch.Tensor:
    """What enters block `first`: VisionTransformer.forward_features up to there."""
    x = model.patch_embed(x)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    return model.blocks[:first](x)


def signature(module: nn.Module) -> list:
    """The module's structure: every submodule's name and class, every parameter's and buffer's name and shape."""
    return ([(name, type(m)) for name, m in module.named_modules()]
            + [(name, tuple(t.shape)) for name, t in [*module.named_parameters(), *module.named_buffers()]])


def own_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The module's own parameters and buffers (a ViT's class, register and position embeddings), by name."""
    return [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]


def first_block(model: nn.Module, spec: BackboneSpec, num_classes: int, train: TensorData) -> int | str:
    """k, the first block that trains or was changed (nothing before it does), or why there is no frozen prefix."""
    if family_of(model) != "vit" or any(getattr(type(model), f) is not getattr(VisionTransformer, f) for f in MIRRORED):
        return "the method trains more than the head (a frozen prefix is cached on timm ViTs only)"
    if any(f in vars(model) for f in MIRRORED):
        return "the model's forward was rebound"
    if train.augment != "none":
        return f"train-time augmentation ({train.augment})"
    with torch.random.fork_rng(devices=[]):  # the architecture alone; the run's random state is left as it was
        reference = meta_model(spec, num_classes)
    children, timm_children = dict(model.named_children()), dict(reference.named_children())
    mine, timms = ({**dict(m.named_children()), **dict(own_tensors(m))} for m in (model, reference))
    if set(mine) != set(timms):
        return f"the method added or removed model.{', model.'.join(sorted(set(mine) ^ set(timms)))}"
    if any(t.shape != timms[name].shape for name, t in own_tensors(model)):
        return "the method changed the shape of the class or position embedding"
    if type(model.blocks) is not nn.Sequential or len(model.blocks) != len(reference.blocks):
        return "the method changed the blocks' container"
    for name, module in children.items():
        if name not in TAIL_CHILDREN and (signature(module) != signature(timm_children[name]) or trains(module)):
            return f"no frozen prefix (the method trains or changes {name}, before block 0)"
    if any(p.requires_grad for p in model.parameters(recurse=False)):
        return "no frozen prefix (the method trains the class or position embedding)"
    k = next((i for i, (block, timm_block) in enumerate(zip(model.blocks, reference.blocks))
              if signature(block) != signature(timm_block) or trains(block)), len(model.blocks))
    if k == 0:
        return "no frozen prefix (the method trains or changes block 0)"
    for name, module in prefix_modules(model, k):
        for sub in module.modules():
            if (isinstance(sub, nn.modules.dropout._DropoutNd) and sub.p > 0) or (
                    isinstance(sub, DropPath) and sub.drop_prob > 0) or (
                    isinstance(sub, PatchDropout) and sub.prob > 0):
                return f"{type(sub).__name__} is active before block {k} (in {name})"
            if isinstance(sub, nn.modules.batchnorm._BatchNorm) and not isinstance(sub, FrozenStatsBatchNorm2d):
                return f"a BatchNorm before block {k} (in {name}) normalises with batch statistics in training"
    return k


def trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def prefix_modules(model: nn.Module, k: int) -> list[tuple[str, nn.Module]]:
    """Everything that computes the activations entering block k, by name."""
    return ([(name, m) for name, m in model.named_children() if name not in TAIL_CHILDREN]
            + [(f"blocks.{i}", model.blocks[i]) for i in range(k)])


def prefix_digest(model: nn.Module, k: int) -> str:
    """sha256 of every tensor before block k (the class and position embeddings included): the cache key holds
    what computes the activations, not only the name of the weights."""
    h = hashlib.sha256()
    tensors = own_tensors(model) + [(f"{name}.{n}", t) for name, m in prefix_modules(model, k)
                                              for n, t in [*m.named_parameters(), *m.named_buffers()]]
    for name, t in tensors:
        h.update(f"{name} {t.dtype} {list(t.shape)}\n".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


@torch.no_grad()
def activations(model: nn.Module, k: int, data: TensorData, device: torch.device, batch_size: int,
                amp: torch.dtype | None, out: np.ndarray | None = None) -> np.ndarray:
    """What enters block k for every image, in order (eval mode: the same as training mode by `first_block`)."""
    was_training = model.training
    model.eval()
    data = data.to(device)
    start, chunks = 0, []
    for idx in torch.arange(len(data), device=data.device).split(batch_size):
        images, _ = data.batch(idx)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            x = prefix_forward(model, k, images).float().cpu().numpy()
        if out is None:
            chunks.append(x)
        else:
            out[start: start + len(x)] = x
        start += len(x)
    model.train(was_training)
    return out if out is not None else np.concatenate(chunks)


@torch.no_grad()
def reproduces(model: nn.Module, tail: Tail, data: TensorData, device: torch.device) -> bool:
    """The prefix and the Tail give the model's own output on two images (a guard against a timm whose forward
    no longer matches the copy here)."""
    was_training = model.training
    model.eval().to(device)
    images, _ = data.to(device).batch(torch.arange(min(2, len(data)), device=device))
    ok = torch.allclose(tail(prefix_forward(model, tail.first, images)), model(images), rtol=1e-4, atol=1e-5)
    model.train(was_training)
    return ok


def cached_prefix(cache: FeatureCache, model: nn.Module, k: int, data: TensorData, identity: dict,
                  device: torch.device, batch_size: int, amp: torch.dtype | None) -> FeatureData:
    """The activations entering block k of every training image: from memory (the last entry), the store, or
    computed and stored."""
    key = json.dumps({**identity, "amp": str(amp), "format": FORMAT, "data": data.digest, "before_block": k,
                      "prefix_sha256": prefix_digest(model, k)}, sort_keys=True)
    name = "prefix-" + hashlib.sha256(key.encode()).hexdigest()[:24]
    if name in cache.prefix:
        return cache.prefix[name]
    cache.prefix.clear()  # one entry in memory: a ViT-B prefix of 1000 images is 600 MB
    labels = data.labels.cpu().numpy().astype(np.int64)
    if cache.folder is None:
        found = activations(model, k, data, device, batch_size, amp)
        checksum = store.digest([found, labels])
    else:
        one = activations(model, k, replace(data, images=data.images[:1], labels=data.labels[:1]), device, 1, amp)
        found, checksum = fetch_labelled(cache.folder, name, key, (len(labels), *one.shape[1:]), labels,
                                         lambda out: activations(model, k, data, device, batch_size, amp, out=out),
                                         values="activations")
    cache.prefix[name] = FeatureData(torch.from_numpy(np.array(found)), torch.from_numpy(labels), checksum)
    return cache.prefix[name]


def prepare(model: nn.Module, spec: BackboneSpec, num_classes: int, train: TensorData, identity: dict,
            cache: FeatureCache, device: torch.device, batch_size: int, amp: torch.dtype | None
            ) -> tuple[Tail, FeatureData] | str:
    """The Tail to train and the cached activations it trains on, or why the prefix is not cached."""
    k = first_block(model, spec, num_classes, train)
    if isinstance(k, str):
        return k
    tail = Tail(model, k)
    if not reproduces(model, tail, train, device):
        return "the prefix and tail do not reproduce the model's output (timm's forward changed?)"
    return tail, cached_prefix(cache, model, k, train, identity, device, batch_size, amp)
