"""The trainer's dataset of captioned videos (§3.3: square centre crops of clips sampled at a fixed fps).

A dataset folder holds either `manifest.jsonl` (one JSON object per line: path relative to the
folder, caption, optional fps/frames/attributes) or `name.mp4` + `name.txt` caption pairs.

Unreadable and too-short videos are found when the dataset is built, listed in `dataset.skipped`
and summarised, so an epoch never crashes on one bad file. A clip that still fails to decode later
is replaced by the next usable one (and recorded) rather than raising mid-epoch.

Every random choice for item i in epoch e (clip start, flip) comes from a generator seeded with
(seed, epoch, i), so results do not depend on the number of DataLoader workers or their order.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import torch

from ..model.config import InputError
from ..model.video_io import VIDEO_EXTENSIONS, probe, read_frames

MANIFEST = "manifest.jsonl"


def list_entries(root: str, manifest: str = MANIFEST) -> tuple[list[dict], list[dict]]:
    """(entries, problems): entries are dicts with absolute `path`, `caption` and any extra manifest
    keys; problems are dict(path, reason) for lines or files that cannot become entries."""
    if not os.path.isdir(root):
        raise InputError(f"dataset folder not found: {root}")
    manifest_path = os.path.join(root, manifest)
    if os.path.isfile(manifest_path):
        return _read_manifest(root, manifest_path)
    if manifest != MANIFEST:
        raise InputError(f"{manifest_path} not found")
    return _scan_pairs(root)


def _read_manifest(root: str, manifest_path: str):
    entries, problems = [], []
    with open(manifest_path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{manifest_path}:{number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(dict(path=where, reason=f"invalid JSON ({e})"))
                continue
            if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not isinstance(item.get("caption"), str):
                problems.append(dict(path=where, reason="needs string fields 'path' and 'caption'"))
                continue
            entries.append({**item, "path": os.path.join(root, item["path"]), "relpath": item["path"]})
    return entries, problems


def _scan_pairs(root: str):
    entries, problems = [], []
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in VIDEO_EXTENSIONS or name.startswith("."):
                continue
            path = os.path.join(folder, name)
            text = os.path.join(folder, stem + ".txt")
            if not os.path.isfile(text):
                problems.append(dict(path=path, reason=f"no caption file {stem}.txt next to it"))
                continue
            with open(text, encoding="utf-8") as f:
                entries.append(dict(path=path, relpath=os.path.relpath(path, root), caption=f.read().strip()))
    if not entries and not problems:
        raise InputError(f"{root} holds neither {MANIFEST} nor video+.txt caption pairs")
    return entries, problems


_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(caption: str) -> str:
    """A horizontally flipped clip moves the other way, so its caption must say so."""
    def swap(m):
        word = {"left": "right", "right": "left"}[m.group(1).lower()]
        return word.capitalize() if m.group(1)[0].isupper() else word
    return _LEFT_RIGHT.sub(swap, caption)


def resize_center_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    """[T,3,H,W] -> [T,3,size,size]: short side to `size` (antialiased), then the centre square."""
    from kornia.geometry.transform import center_crop, resize

    video = resize(video, size, side="short", antialias=True)
    return center_crop(video, (size, size))


def color_jitter(strength: float = 0.1):
    """Mild colour jitter with ONE set of parameters per clip (kornia VideoSequential, same_on_frame):
    per-frame jitter would be flicker the video model learns to reproduce."""
    from kornia.augmentation import ColorJiggle, VideoSequential

    return VideoSequential(ColorJiggle(strength, strength, strength, 0.0, p=1.0),
                           data_format="BCTHW", same_on_frame=True)


class VideoDataset(torch.utils.data.Dataset):
    """Items: dict(video float [3,T,H,W] in -1..1, caption str, index int).

    augment: None (default: no augmentation) | "flip" (horizontal flip with p=0.5 that also swaps
    'left'/'right' in the caption, keeping text and motion consistent) | "color" (`color_jitter()`:
    brightness/contrast/saturation, hue untouched so colour words stay true) | a callable taking and
    returning [1,3,T,H,W] in 0..1, e.g. kornia.augmentation.VideoSequential(..., data_format="BCTHW")
    (same parameters on every frame); it runs under a torch RNG seeded from (seed, epoch, index).
    A callable that flips must fix captions itself — prefer "flip" for that.
    """

    def __init__(self, root: str, num_frames: int, fps: float | None, size: int, start: str = "random",
                 augment=None, seed: int = 0, manifest: str = MANIFEST, scan: bool = True):
        if start not in ("random", "center"):
            raise InputError(f"start must be 'random' or 'center', got {start!r}")
        if augment == "color":
            augment = color_jitter()
        if augment not in (None, "flip") and not callable(augment):
            raise InputError(f"augment must be None, 'flip', 'color' or a callable, got {augment!r}")
        if num_frames < 1 or size < 1:
            raise InputError(f"num_frames and size must be positive (got {num_frames}, {size})")
        self.root, self.num_frames, self.fps, self.size = root, num_frames, fps, size
        self.start, self.augment, self.seed, self.epoch = start, augment, seed, 0
        entries, self.skipped = list_entries(root, manifest)
        self.entries = [e for e in entries if self._usable(e)] if scan else entries
        if not self.entries:
            raise InputError(f"no usable videos in {root}: {self.summary()}")

    def _usable(self, entry: dict) -> bool:
        """Probe without decoding; record why a video cannot give `num_frames` frames at `fps`."""
        try:
            info = probe(entry["path"])
        except InputError as e:
            self.skipped.append(dict(path=entry["path"], reason=f"unreadable: {e}"))
            return False
        if self.fps:
            needed, have = self.num_frames / self.fps, info["duration"]
            # Half a native frame of slack absorbs container rounding; a clip that still falls short
            # at load time is replaced there (see __getitem__).
            short = have + 0.5 / (info["fps"] or 25) + 1e-3 < needed
            detail = f"{have:.2f}s < {needed:.2f}s needed for {self.num_frames} frames at {self.fps} fps"
        else:
            short = info["frames"] < self.num_frames
            detail = f"{info['frames']} frames < {self.num_frames} needed"
        if short:
            self.skipped.append(dict(path=entry["path"], reason=f"too short: {detail}"))
        return not short

    def summary(self) -> str:
        kinds = {}
        for s in self.skipped:
            kind = s["reason"].split(":")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
        detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        return f"{len(self.entries)} usable videos, {len(self.skipped)} skipped" + (f" ({detail})" if detail else "")

    def set_epoch(self, epoch: int) -> None:
        """Call once per epoch (in every worker's copy: DataLoader(persistent_workers=False))."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict:
        for attempt in range(len(self.entries)):
            i = (index + attempt) % len(self.entries)
            entry = self.entries[i]
            try:
                return self._load(entry, index)
            except InputError as e:   # found bad only now: record it and use the next clip instead
                self.skipped.append(dict(path=entry["path"], reason=f"failed at load: {e}"))
        raise InputError(f"no video in {self.root} could be decoded: {self.summary()}")

    def _load(self, entry: dict, index: int) -> dict:
        rng = self._rng(index)
        frames = read_frames(entry["path"], fps=self.fps, num_frames=self.num_frames, start=self.start, rng=rng)
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)      # [T,3,H,W] 0..1
        video = resize_center_crop(video, self.size)
        caption = entry["caption"]
        if self.augment == "flip":
            if rng.random() < 0.5:
                video = video.flip(-1)
                caption = swap_left_right(caption)
        elif self.augment is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(2**63 - 1)))
                video = self.augment(video.permute(1, 0, 2, 3)[None])[0].permute(1, 0, 2, 3)
        video = video.clamp(0, 1).mul(2).sub(1).permute(1, 0, 2, 3).contiguous()      # [3,T,H,W] -1..1
        return dict(video=video, caption=caption, index=index)
