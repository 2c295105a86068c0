"""Select the high-quality fine-tuning subset (§3.3).

The paper fine-tunes on a small high-motion, high-quality subset "found automatically from the
motion signals stored in H.264-encoded video, then filtered by aesthetic score and by CLIP
similarity between the text and the first frame"; this improved motion faithfulness (Table 1d).

Motion: the H.264 decoder exports the encoder's block motion vectors, so the amount of motion is
read almost for free. Sources in other codecs are re-encoded to H.264 first so that every score
comes from the same encoder (other decoders export no vectors, and encoders differ in their choices).
CLIP text–first-frame similarity and an aesthetic score are optional callables; signals are combined
by averaging their percentile ranks, so their scales never need calibrating against each other.

    emu-video select-hq DATASET --top K [--clip-model FOLDER] [--min-motion X]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

from ..model.config import InputError
from ..model.video_io import atomic_path, probe, read_frames, write_mp4
from .data import MANIFEST, list_entries


# --------------------------------------------------------------------------- motion from H.264 vectors

def frame_motion(vectors: np.ndarray, frame_area: int) -> float:
    """Block-area-weighted mean |motion| in pixels per frame over the whole frame.

    Vectors that reference frames further away (|source| > 1, B-frames) are divided by that distance.
    Uncovered area (skipped or intra blocks) counts as still, so a small moving object scores less
    than a whole moving scene.
    """
    if vectors is None or len(vectors) == 0:
        return 0.0
    scale = np.maximum(vectors["motion_scale"].astype(np.float64), 1)
    distance = np.maximum(np.abs(vectors["source"].astype(np.float64)), 1)
    magnitude = np.hypot(vectors["motion_x"] / scale, vectors["motion_y"] / scale) / distance
    area = vectors["w"].astype(np.float64) * vectors["h"]
    return float((magnitude * area).sum() / max(area.sum(), frame_area))


def _h264_motion(path: str) -> list[float]:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        stream.thread_type = "AUTO"
        area = stream.codec_context.width * stream.codec_context.height
        per_frame = []
        for frame in container.decode(stream):
            vectors = frame.side_data.get("MOTION_VECTORS")
            if vectors is not None:     # I-frames carry none
                per_frame.append(frame_motion(vectors.to_ndarray(), area))
    return per_frame


def motion_score(path: str) -> dict:
    """dict(motion, motion_p90, frames_with_mvs, reencoded). `motion` is the median over frames of the
    mean |motion vector|, as a fraction of the frame width per second (independent of size and fps)."""
    import av

    info = probe(path)
    reencoded = info["codec"] != "h264"
    try:
        if reencoded:
            with tempfile.TemporaryDirectory() as tmp:
                h264 = os.path.join(tmp, "h264.mp4")
                write_mp4(read_frames(path), h264, info["fps"] or 25)
                per_frame = _h264_motion(h264)
        else:
            per_frame = _h264_motion(path)
    except av.error.FFmpegError as e:   # report the file, not a traceback from deep inside
        raise InputError(f"cannot score motion in {path}: {e}") from e
    to_rate = (info["fps"] or 25) / max(info["width"], 1)
    values = np.array(per_frame or [0.0]) * to_rate
    return dict(motion=float(np.median(values)), motion_p90=float(np.percentile(values, 90)),
                frames_with_mvs=len(per_frame), reencoded=reencoded)


# --------------------------------------------------------------------------- optional scorers

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_scorer(folder: str):
    """A (caption, first_frame uint8 [H,W,3]) -> cosine similarity callable from a local
    transformers CLIP folder (config + weights + tokenizer); never downloads."""
    import torch
    from kornia.geometry.transform import center_crop, resize
    from transformers import AutoTokenizer, CLIPModel

    if not os.path.isdir(folder):
        raise InputError(f"CLIP model folder not found: {folder} (a local transformers CLIPModel folder)")
    model = CLIPModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    mean, std = _CLIP_MEAN, _CLIP_STD
    preprocessor = os.path.join(folder, "preprocessor_config.json")
    if os.path.isfile(preprocessor):
        with open(preprocessor) as f:
            cfg = json.load(f)
        mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
    side = model.config.vision_config.image_size
    max_length = model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def score(caption: str, frame: np.ndarray) -> float:
        image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float() / 255
        image = center_crop(resize(image, side, side="short", antialias=True), (side, side))
        image = (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        text = tokenizer([caption], padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        out = model(input_ids=text["input_ids"], attention_mask=text.get("attention_mask"), pixel_values=image)
        return float((out.text_embeds * out.image_embeds).sum())    # both are L2-normalised

    return score


# --------------------------------------------------------------------------- ranking

def percentile_ranks(values) -> np.ndarray:
    """0 for the lowest, 1 for the highest; ties share their mean rank."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return np.ones(len(values))
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for v in np.unique(values):
        tie = values == v
        ranks[tie] = ranks[tie].mean()
    return ranks / (len(values) - 1)


def select_hq(root: str, top: int, clip=None, aesthetic=None, min_motion: float = 0.0,
              min_clip: float | None = None, min_aesthetic: float | None = None,
              weights=(1.0, 0.5, 0.5), manifest: str = MANIFEST, out: str | None = None) -> dict:
    """Score every clip, drop those under the thresholds, rank the rest and write the top `top`.

    clip: None | callable(caption, first_frame) -> similarity. aesthetic: None | callable(first_frame)
    -> score. Writes manifest_hq.jsonl, hq_report.json and hq_report.txt into `out` (default: root).
    Returns the report dict.
    """
    if top < 1:
        raise InputError(f"--top must be >= 1, got {top}")
    entries, skipped = list_entries(root, manifest)
    scored = []
    for entry in entries:
        try:
            row = dict(entry, **motion_score(entry["path"]))
            if clip is not None or aesthetic is not None:
                first = read_frames(entry["path"], num_frames=1)[0]
                row["clip"] = float(clip(entry["caption"], first)) if clip is not None else None
                row["aesthetic"] = float(aesthetic(first)) if aesthetic is not None else None
        except InputError as e:
            skipped.append(dict(path=entry["path"], reason=str(e)))
            continue
        scored.append(row)

    def passes(r):
        return (r["motion"] > min_motion
                and (min_clip is None or r.get("clip") is None or r["clip"] >= min_clip)
                and (min_aesthetic is None or r.get("aesthetic") is None or r["aesthetic"] >= min_aesthetic))

    kept = [r for r in scored if passes(r)]
    signals = [("motion", weights[0]), ("clip", weights[1]), ("aesthetic", weights[2])]
    combined = np.zeros(len(kept))
    total = 0.0
    for name, weight in signals:
        if kept and weight and kept[0].get(name) is not None:
            combined += weight * percentile_ranks([r[name] for r in kept])
            total += weight
    for r, value in zip(kept, combined / max(total, 1e-9)):
        r["score"] = float(value)
    kept.sort(key=lambda r: (-r["score"], -r["motion"], r["relpath"]))
    selected = kept[:top]
    for rank, r in enumerate(kept):
        r["rank"], r["selected"] = rank + 1, rank < top
    report = dict(dataset=os.path.abspath(root), top=top, scored=len(scored), passed_filters=len(kept),
                  selected=len(selected), skipped=skipped,
                  thresholds=dict(min_motion=min_motion, min_clip=min_clip, min_aesthetic=min_aesthetic),
                  clips=[{k: v for k, v in r.items() if k != "path"} for r in scored])
    _write_outputs(out or root, selected, report)
    return report


def _write_outputs(out: str, selected: list[dict], report: dict) -> None:
    os.makedirs(out, exist_ok=True)
    internal = ("path", "relpath", "motion_p90", "frames_with_mvs", "reencoded", "rank", "selected")
    lines = [json.dumps({"path": os.path.relpath(r["path"], out), **{k: v for k, v in r.items() if k not in internal}}) for r in selected]
    files = {"manifest_hq.jsonl": "".join(line + "\n" for line in lines),
             "hq_report.json": json.dumps(report, indent=1),
             "hq_report.txt": summary(report) + "\n"}
    for name, text in files.items():
        with atomic_path(os.path.join(out, name)) as tmp:
            with open(tmp, "w") as f:
                f.write(text)


def summary(report: dict) -> str:
    motions = [c["motion"] for c in report["clips"] if c.get("selected")]
    spread = f"; selected motion {min(motions):.3f}..{max(motions):.3f} frame-widths/s" if motions else ""
    return (f"HQ selection: {report['selected']} of {report['scored']} scored clips "
            f"({report['passed_filters']} passed filters, {len(report['skipped'])} skipped){spread}")


def select_hq_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="emu-video select-hq", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="dataset folder (manifest.jsonl or video+.txt pairs)")
    p.add_argument("--top", type=int, required=True, help="how many clips to keep")
    p.add_argument("--clip-model", help="local transformers CLIP folder for text/first-frame similarity")
    p.add_argument("--min-motion", type=float, default=0.0, help="drop clips at or below this motion")
    p.add_argument("--min-clip", type=float, default=None, help="drop clips under this CLIP similarity")
    p.add_argument("--out", default=None, help="output folder (default: the dataset folder)")
    args = p.parse_args(argv)
    clip = clip_scorer(args.clip_model) if args.clip_model else None
    report = select_hq(args.dataset, args.top, clip=clip, min_motion=args.min_motion, min_clip=args.min_clip,
                       out=args.out)
    print(summary(report))
    return 0


main = select_hq_main
