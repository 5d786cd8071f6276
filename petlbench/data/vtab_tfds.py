"""VTAB-1k as TFDS defines it: for each of the 19 tasks, the dataset and version, the slices that are train800,
val200, train800val200 and test, and the image and label preprocessing, as google-research/task_adaptation
(commit d7630d3, `task_adaptation/data/*.py`) defines them. Data only: `tfds_build` reads it.

`val` says where val200 comes from: "validation[:200]", "test[:200]" (smallnorb), or "train" (the train split
minus its first `train_pct` percent: val200 = train[c:c+200], c = train_pct * N // 100, N = the TFDS train
split's size). `test` is a TFDS slice, or "train[trainval:]" where trainval = (train_pct + val_pct) percent of N,
each rounded down as task_adaptation does. train800val200 = train[:800] + val200, read as one TFDS split.

Where NOAH's `data/vtab-source/get_vtab1k.py` (ZhangYuanhan-AI/NOAH e9c55f3, which made the JPEG build) differs:
it vendors these same files with the same slices and preprocessing, but reads kitti at 3.2.0 (task_adaptation:
3.1.0), and saves every image with PIL's default JPEG quality (75): the loss this build avoids.
"""
from __future__ import annotations

from dataclasses import dataclass

TA = "google-research/task_adaptation@d7630d3 task_adaptation/data/"


@dataclass(frozen=True)
class TfdsTask:
    task: str             # the task folder (NOAH's name, the vtab1k suite's)
    tfds: str             # "name[/config]:version pattern" passed to tfds.builder
    val: str              # "validation", "test" or "train" (see the module docstring)
    label: str            # how the label is made: "label" (as stored) or one of tfds_build.LABELS
    source: str           # where task_adaptation says so
    train_pct: int = 0    # val == "train": the first train_pct percent of train is VTAB's train split
    val_pct: int = 0      # test == "train[trainval:]": the next val_pct percent is its val split
    test: str = "test"
    image: str = "image"  # "image" as stored, "tile" (grey -> 3 channels), "tile255" (dsprites' 0/1 -> 0/255)


TASKS = (
    # natural
    TfdsTask("cifar", "cifar100:3.*.*", "train", "label", TA + "cifar.py:28,48,58-81 (num_classes=100)", train_pct=90),
    TfdsTask("caltech101", "caltech101:3.*.*", "train", "label", TA + "caltech.py:28,51,55-77", train_pct=90),
    TfdsTask("dtd", "dtd:3.*.*", "validation", "label", TA + "dtd.py:38,42-50"),
    TfdsTask("oxford_flowers102", "oxford_flowers102:2.*.*", "validation", "label",
             TA + "oxford_flowers102.py:36,68-76"),
    TfdsTask("oxford_iiit_pet", "oxford_iiit_pet:3.*.*", "train", "label", TA + "oxford_iiit_pet.py:28,45,47-73",
             train_pct=80),
    TfdsTask("svhn", "svhn_cropped:3.*.*", "train", "label", TA + "svhn.py:28,48,56-88", train_pct=90),
    TfdsTask("sun397", "sun397/tfds:4.*.*", "validation", "label", TA + "sun397.py:37,40-48 (config tfds)"),
    # specialized
    TfdsTask("patch_camelyon", "patch_camelyon:2.*.*", "validation", "label", TA + "patch_camelyon.py:32,36-44"),
    TfdsTask("eurosat", "eurosat/rgb:2.*.*", "train", "label", TA + "eurosat.py:25-27,42,47-67 (subset rgb)",
             train_pct=60, val_pct=20, test="train[trainval:]"),
    TfdsTask("resisc45", "resisc45:3.*.*", "train", "label", TA + "resisc45.py:25-27,43,47-67", train_pct=60,
             val_pct=20, test="train[trainval:]"),
    TfdsTask("diabetic_retinopathy", "diabetic_retinopathy_detection/btgraham-300:3.*.*", "validation", "label",
             TA + "diabetic_retinopathy.py:42,52-54,61-69 (config btgraham-300, no heavy augmentation)"),
    # structured
    TfdsTask("clevr_count", "clevr:3.*.*", "train", "clevr_count", TA + "clevr.py:29,32-34,57-60,86,103-113",
             train_pct=90, test="validation"),
    TfdsTask("clevr_dist", "clevr:3.*.*", "train", "clevr_dist", TA + "clevr.py:29,45-53,65-68,86,103-113",
             train_pct=90, test="validation"),
    TfdsTask("dmlab", "dmlab:2.0.1", "validation", "label", TA + "dmlab.py:42,44-52"),
    TfdsTask("kitti", "kitti:3.1.0", "validation", "kitti_dist",
             TA + "kitti.py:90-103,147-150,172,175-183 (closest_vehicle_distance)"),
    TfdsTask("dsprites_loc", "dsprites:2.*.*", "train", "dsprites_loc",
             TA + "dsprites.py:30-31,47,58-65,68-93,95-103 (label_x_position, 16 classes)",
             train_pct=80, val_pct=10, test="train[trainval:]", image="tile255"),
    TfdsTask("dsprites_ori", "dsprites:2.*.*", "train", "dsprites_ori",
             TA + "dsprites.py:30-31,47,58-65,68-93,95-103 (label_orientation, 16 classes)",
             train_pct=80, val_pct=10, test="train[trainval:]", image="tile255"),
    TfdsTask("smallnorb_azi", "smallnorb:2.*.*", "test", "smallnorb_azi",
             TA + "smallnorb.py:29,47,55-63,79-82 (label_azimuth)", test="test[50%:]", image="tile"),
    TfdsTask("smallnorb_ele", "smallnorb:2.*.*", "test", "smallnorb_ele",
             TA + "smallnorb.py:29,47,55-63,79-82 (label_elevation)", test="test[50%:]", image="tile"),
)
BY_TASK = {t.task: t for t in TASKS}
SPLITS = ("train800", "val200", "train800val200", "test")
COUNTS = {"train800": 800, "val200": 200, "train800val200": 1000}  # test: whatever the slice holds


def slices(entry: TfdsTask, train_examples: int) -> dict[str, str]:
    """The four TFDS slices of a task, given the size of its dataset's train split."""
    if entry.val == "train":
        start = entry.train_pct * train_examples // 100
        val200 = f"train[{start}:{start + 200}]"
    else:
        val200 = f"{entry.val}[:200]"
    test = entry.test
    if test == "train[trainval:]":
        trainval = entry.train_pct * train_examples // 100 + entry.val_pct * train_examples // 100
        test = f"train[{trainval}:]"
    return {"train800": "train[:800]", "val200": val200, "train800val200": f"train[:800]+{val200}", "test": test}
