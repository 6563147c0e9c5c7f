"""Writing a world's items in the layouts the real loaders read: VOC images, DAVIS frames, the web folder."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import av
import numpy as np

from wsvs.runtime.io import add_h264_stream, atomic_path, write_binary_png, write_image_rgb, write_palette_png

from .config import WorldConfig
from .images import render_image
from .plans import ImagePlan, VideoPlan
from .videos import render_video


def write_image(config: WorldConfig, plan: ImagePlan, out: Path) -> None:
    """The JPEG, the palette mask, then the XML: the XML's presence marks the image done."""
    sample = render_image(config, plan)
    images = out / "images"
    write_image_rgb(images / "JPEGImages" / f"{plan.image_id}.jpg", sample.image)
    write_palette_png(images / "SegmentationClass" / f"{plan.image_id}.png", sample.labels)
    write_text(annotation_path(out, plan), _voc_xml(config, plan.image_id, sample.objects))


def annotation_path(out: Path, plan: ImagePlan) -> Path:
    return out / "images" / "Annotations" / f"{plan.image_id}.xml"


def _voc_xml(config: WorldConfig, image_id: str, objects: list[tuple[int, tuple[int, int, int, int]]]) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "wsvs-world"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", config.image_size), ("height", config.image_size), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for class_index, (x0, y0, x1, y1) in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = config.classes[class_index]
        ET.SubElement(node, "pose").text = "Unspecified"
        truncated = min(x0, y0) == 0 or max(x1, y1) == config.image_size - 1
        ET.SubElement(node, "truncated").text = str(int(truncated))
        ET.SubElement(node, "difficult").text = "0"
        box = ET.SubElement(node, "bndbox")
        for tag, value in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, tag).text = str(value + 1)  # VOC boxes are 1-based
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def video_path(out: Path, config: WorldConfig, plan: VideoPlan) -> Path:
    return out / "web" / config.classes[plan.query_class] / f"{plan.video_id}.mp4"


def write_video(config: WorldConfig, plan: VideoPlan, out: Path) -> None:
    """DAVIS frames and masks, the thumbnail, then the mp4: the mp4's presence marks the video done."""
    sample = render_video(config, plan)
    davis = out / "davis"
    for t in range(plan.n_frames):
        write_image_rgb(davis / "JPEGImages" / "480p" / plan.video_id / f"{t:05d}.jpg", sample.frames[t])
        write_binary_png(davis / "Annotations" / "480p" / plan.video_id / f"{t:05d}.png", sample.masks[t])
    mp4 = video_path(out, config, plan)
    write_image_rgb(mp4.with_suffix(".jpg"), sample.thumbnail)
    with atomic_path(mp4) as tmp:
        encode_h264(tmp, sample.frames, config.fps, config.gop)


def encode_h264(path: Path, frames: np.ndarray, fps: int, gop: int) -> None:
    """Reproducible H.264 yuv420p with an I-frame exactly every ``gop`` frames (no scene-cut I-frames)."""
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = add_h264_stream(container, fps, frames.shape[2], frames.shape[1], crf=18, preset="fast",
                                 x264_params=f"keyint={gop}:min-keyint={gop}:scenecut=0")
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))


def web_listing(config: WorldConfig, plans: list[VideoPlan]) -> dict[str, list[dict]]:
    listing: dict[str, list[dict]] = {name: [] for name in config.classes}
    for plan in plans:
        name = config.classes[plan.query_class]
        listing[name].append(
            {
                "id": plan.video_id,
                "title": plan.title,
                "video": f"{name}/{plan.video_id}.mp4",
                "thumbnail": f"{name}/{plan.video_id}.jpg",
                "relevant": plan.relevant,
                "duration": plan.n_frames / config.fps,
            }
        )
    return listing


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
