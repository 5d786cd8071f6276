"""The method plugin contract: every PETL method is a `Method` subclass.

A method has a `name`, a dataclass `Config` of its hyper-parameters (with defaults), the backbone
families it supports (`families`, read by petlbench.backbones), the training recipe of its paper
(`recipe`, a name in petlbench.recipes) with its departures from it (`train_defaults`, `tune_grid`,
`backbone_defaults`, `decay_rule`, all used only under that recipe) and where its untuned defaults come from (`defaults_source`), and
`apply(model)`. The runner freezes the whole backbone before `apply` and trains the classifier head
after it, so `apply` only adds modules (new parameters train by default) or switches `requires_grad`
on existing ones; it may replace the head (a method that changes the head's input). Methods wrap or
replace submodules; they never rebind `forward`. Methods that can fold into the backbone's own
weights (`petlbench export --merged`) implement `merge`.

Closed-form methods (`closed_form = True`: Tip-Adapter's cache) also need data, which `apply` never sees. The runner
hands it to two hooks, with the head's inputs (the frozen backbone's pooled features, eval mode, un-augmented
images; petlbench.engine.closedform): `fit_closed_form` right after `apply`, with the run's training images (before
parameters are counted, so a cache sized by the data counts), and `choose_on_val` after training, before the test
is scored, with the suite's validation split (rows of the training data that are validation images are marked
`held_out`: a choice never sees its own images). The test split never reaches either hook. What each returns goes
into the run record's `closed_form`. Such a method adapts only the head (the hooks' features are the backbone's).

Selecting methods (`selects = True`: GPS) choose what trains from the training data, gradients included. The runner
calls `select(model, batches)` right after `apply`, before parameters are counted and before training
(petlbench.engine.selection): `batches` is one epoch of the run's training images (normalised, the run's training
augmentation, in an order drawn from the run's seed) with their labels; never a validation or test image. `apply`
already sized what trains (so planning counts it on the meta device); `select` only fills it in. What it returns
goes into the run record's `parameter_selection` (`selection` is a tuned final's grid choice).

Pruning methods (`rewinds()` true: E2VPT's pruning) are trained twice in one run (petlbench.engine.rewind): after a
first training, `prune(model, batches)` scores the trained model on one epoch of the training data (as `select`
gets it) and returns what to cut (recorded as the run's `pruning`); the model is then built again from the run's
seed (the same initialisation: the lottery ticket's rewind), `rewind(model, pruned)` fixes the cut, and it trains.

The training loop asks the method for each (micro-)batch's loss, `training_loss(model, images, labels, loss_fn)`,
under the loop's autocast: by default `loss_fn(model(images), labels)`. A method whose objective needs more than one
forward or another term (PACE's two noisy passes and consistency term) overrides it; the options it reads are in
the record's `method.options`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterable

import torch
from torch import nn

from petlbench.backbones import ALL_FAMILIES
from petlbench.errors import UserError


@dataclasses.dataclass
class NoOptions:
    """The options of a method that has none (a module-level class, so a method's config pickles for workers)."""


class Method:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # the paper the method and its defaults come from
    # Hyper-parameters of the method itself; replace with a dataclass in subclasses.
    Config: ClassVar[type] = NoOptions
    # Backbone families the method knows how to adapt (petlbench.backbones.ALL_FAMILIES).
    families: ClassVar[tuple[str, ...]] = ("vit",)
    # The named recipe (petlbench.recipes) of the paper whose numbers the method is compared with.
    recipe: ClassVar[str] = "noah"
    # Where the method's paper departed from that recipe (TrainConfig keys) and its own tune grid;
    # both apply only when the method trains under that recipe.
    train_defaults: ClassVar[dict[str, Any]] = {}
    tune_grid: ClassVar[dict[str, list] | None] = None
    # timm.create_model arguments ({"drop_path_rate": 0.0}) and the input's mean, std, interpolation
    # ({"mean": "backbone", "std": "backbone"}: the weights' own normalisation instead of the recipe's)
    backbone_defaults: ClassVar[dict[str, Any]] = {}
    defaults_source: ClassVar[str] = ""  # where the untuned defaults come from (else the recipe's source)
    # Which trained tensors weight decay reaches, as the code of the method's source does it
    # (petlbench.engine.decay: "timm", "all", "vpt"); None: its recipe's. Recorded as the record's train.decay_rule.
    decay_rule: ClassVar[str | None] = None
    # False: the method is evaluated as built, never trained (zero-shot CLIP, Tip-Adapter); its runs get epochs 0
    trains: ClassVar[bool] = True
    # True: the method needs a CLIP backbone's text side (`model.clip`, petlbench.clip); refused on other backbones
    needs_text: ClassVar[bool] = False
    # True: the runner calls `fit_closed_form` and `choose_on_val` with data (Tip-Adapter); see the module docstring
    closed_form: ClassVar[bool] = False
    # True: the runner calls `select` with the training data before training (GPS); see the module docstring
    selects: ClassVar[bool] = False

    def __init__(self, config=None):
        self.config = config if config is not None else self.Config()

    def apply(self, model: nn.Module) -> nn.Module:
        """Add modules and/or mark parameters trainable on a frozen timm model; return the model."""
        raise NotImplementedError

    def fit_closed_form(self, model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """After `apply`: set what is computed from the training images' head inputs (N, width) and labels (N,);
        return what the record keeps (closed_form methods only)."""
        return {}

    def choose_on_val(self, model: nn.Module, features: torch.Tensor, labels: torch.Tensor,
                      held_out: torch.Tensor) -> dict[str, Any]:
        """After training, before the test: choose on the validation split's head inputs and labels; `held_out`
        (bool, one per training image given to `fit_closed_form`) marks training images that are validation images
        too (a `final` protocol's trainval holds val), to leave out of the choice. Returns what the record keeps."""
        return {}

    def select(self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
        """After `apply`, before training: choose what trains from the training (images, labels) batches; return
        what the record keeps (selecting methods only)."""
        return {}

    def rewinds(self) -> bool:
        """Train, `prune`, rebuild, `rewind`, train again? (see the module docstring)"""
        return False

    def prune(self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
        """After the first training: what to cut, from the trained model and the training batches (JSON-able)."""
        return {}

    def rewind(self, model: nn.Module, pruned: dict[str, Any]) -> None:
        """On the model built again from the run's seed: fix what `prune` cut, before the second training."""

    def training_batch(self, index: torch.Tensor) -> None:
        """Before each training step: the positions in the training data of the batch's images, in the order
        `training_loss` receives them (PACE_fast keeps each image's logits from the previous epoch)."""

    def training_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, loss_fn) -> torch.Tensor:
        """The batch's training loss (mean over the batch); see the module docstring."""
        return loss_fn(model(images), labels)

    def check_fit(self, model: nn.Module) -> None:
        """Refuse, in one line, options that do not fit this backbone: a rank or bottleneck above the width it
        adapts, a count above what the backbone has, a factor that does not divide a width (see `refuse_above`).
        Every build calls it on the frozen model `apply` receives, planning's meta-device build too
        (petlbench.params.meta_counts), so a misfit is refused before any run starts."""

    def identity(self) -> dict[str, Any]:
        """What makes two configurations of the method the same run: its options; a method whose options name
        a file adds the file's content (so editing the file is a new run)."""
        return dataclasses.asdict(self.config)

    def for_task(self, task) -> "Method":
        """The method as it runs on `task` (a petlbench.specs.Task): itself, unless an option means a per-task
        setting (noah's subnet=released picks the task's released subnet). Planning calls it once per run."""
        return self

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold the trained method into the backbone's own weights: a plain timm model of the original
        architecture with the same outputs. Methods that cannot are refused in one line."""
        raise UserError(f"method {self.name!r} cannot be merged into the backbone's weights "
                        "(it adds computation that no weight of the original architecture holds)")

    @classmethod
    def supports(cls, family: str | None) -> bool:
        return family in cls.families

    def __repr__(self) -> str:
        return f"{self.name}({dataclasses.asdict(self.config)})"


ANY_FAMILY = ALL_FAMILIES  # for methods that only touch the head or every parameter (linear, full, bitfit)


def refuse_above(method: Method, option: str, value: int | None, most: int, what: str) -> None:
    """`check_fit`'s refusal of a size: `option` as the user named it ("option 'rank'", "config F: key 'r'")."""
    if value is not None and value > most:
        raise UserError(f"method {method.name}: {option} is {value}, above {most}, {what}")


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(True)


def unfreeze_biases(model: nn.Module) -> None:
    """Every module's own bias trains (BitFit's set; DiffFit's too): found as the `bias` parameter a module owns."""
    for module in model.modules():
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter):
            bias.requires_grad_(True)
