"""`petlbench profile`: throughput and peak memory of methods on a VTAB-sized synthetic task.

Same model building and training loop as a real run, on random uint8 images already in memory, so
the figures measure the method and the loop (not JPEG decoding): train images/s, eval images/s,
peak memory, wall time. Use it on a GPU with bf16 and a large batch; it also runs (slowly) on a CPU.
"""
from __future__ import annotations

import resource
import time

import torch

from petlbench.backbone import BackboneSpec, check_backbone, preprocessing
from petlbench.data.decode import TensorData
from petlbench.engine.device import pick_device
from petlbench.errors import UserError
from petlbench.options import build
from petlbench.params import build_model
from petlbench.plan import method_label
from petlbench.registry import parse_method_list, refuse_unsupported
from petlbench.specs import TrainConfig
from petlbench.engine.train import evaluate, fit


def synthetic(n: int, classes: int, prep: dict, seed: int) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *prep["input_size"]), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return TensorData(images, labels, torch.tensor(prep["mean"]).view(1, 3, 1, 1),
                      torch.tensor(prep["std"]).view(1, 3, 1, 1))


def profile(methods: str, backbone: str = "vit_base_patch16_224", backbone_args: dict | None = None,
            images: int = 1000, eval_images: int = 2000, classes: int = 100, epochs: int = 2,
            train: dict | None = None, device: str = "auto") -> list[dict]:
    for flag, value in (("--images", images), ("--eval-images", eval_images), ("--epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{flag}: expected a positive integer, got {value!r}")
    dev = pick_device(device)
    spec = BackboneSpec(backbone, backbone_args or {}, pretrained=False)
    # --train is checked exactly as `run` checks it (names, types, ranges), over profile's own defaults
    cfg = build(TrainConfig, {"epochs": epochs, "warmup_epochs": 0, "batch_size": 128, "eval_batch_size": 512,
                              **(train or {})}, "--train")
    rows, method_list = [], parse_method_list(methods)  # every method checked before the first is profiled
    refuse_unsupported(method_list, check_backbone(spec), spec.name)
    for method in method_list:
        model, counts, _ = build_model(spec, method, classes, seed=0)
        prep = preprocessing(model, spec)
        train_data, eval_data = synthetic(images, classes, prep, 0), synthetic(eval_images, classes, prep, 1)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        metrics = fit(model, train_data, eval_data, cfg, dev, seed=0, progress=False)
        wall = time.perf_counter() - start
        eval_start = time.perf_counter()
        evaluate(model, eval_data.to(dev), cfg, dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        eval_time = time.perf_counter() - eval_start
        peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        rows.append({
            "method": method_label(method), "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "trainable": counts.trainable, "batch_size": cfg.batch_size, "precision": cfg.precision,
            "input": "x".join(map(str, prep["input_size"][1:])), "train_img_per_s": metrics["train_images_per_s"],
            "eval_img_per_s": round(len(eval_data) / eval_time, 1),
            "peak_memory_mb": round(peak / 2**20, 1),
            "peak_memory_kind": "cuda max allocated" if dev.type == "cuda" else "process peak RSS",
            "wall_time_s": round(wall, 2),
            **utilisation(model, prep, dev, metrics["train_images_per_s"]),
        })
        del model
    return rows


# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, matched on the device name.
BF16_PEAK_TFLOPS = {"H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 756.0, "A100": 312.0, "L40S": 362.0,
                    "L40": 181.0, "A6000": 155.0, "RTX 4090": 165.0, "L4": 121.0, "A10G": 125.0, "A10": 125.0,
                    "RTX 3090": 71.0}


def utilisation(model: torch.nn.Module, prep: dict, device: torch.device, images_per_s: float) -> dict:
    """FLOPs of one training image (forward + backward, torch's FlopCounterMode) and what the measured throughput
    achieves; on a GPU whose bf16 peak is known, the fraction of it."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    x = torch.zeros(1, *prep["input_size"], device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).float().sum().backward()
    model.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    achieved = flops * images_per_s / 1e12
    found = {"train_gflops_per_image": round(flops / 1e9, 3), "achieved_tflops": round(achieved, 4)}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        found["fraction_of_bf16_peak"] = round(achieved / peak, 4) if peak else None
    return found
