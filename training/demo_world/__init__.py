"""The demo world: a small, seeded, synthetic stand-in for PASCAL VOC plus web-crawled videos.

It is the demo's and the tests' data, not part of the method: the pipeline reads it through the same loaders as
the real data, and the crawl finds its videos on a web site served on 127.0.0.1 (``loopback_site``).

Every object is a large BODY whose shape family, texture and colours are shared by all classes, with a
small PART (about 8-11 % of the object) whose colour and pattern identify the class. A classifier
trained on image-level labels therefore looks at the part and misses much of the body, which is the
failure the paper fixes with videos. Bodies stand roughly upright with the part near their top, as most
VOC objects stand: that pose is the class-agnostic shape prior the decoder learns from video masks.
Part-less bodies appear as unlabelled distractors, so the body alone does not mean "object".

Written under ``out``:

- ``images/``: VOC layout: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette indices,
  0 background, 1 + class position, 255 void along object boundaries), ``Annotations/<id>.xml``,
  ``ImageSets/Segmentation/{train,val}.txt`` and ``classes.txt`` (no background line).
- ``web/<class>/<video_id>.mp4`` (H.264, fixed GOP) with ``<video_id>.jpg`` thumbnails, and
  ``web/listing.json``: the search results per class, ``{class: [{id, title, video, thumbnail,
  relevant, duration}]}`` with paths relative to ``web/``.
- ``davis/``: DAVIS layout of the same videos, ``JPEGImages/480p/<video_id>/%05d.jpg`` and
  ``Annotations/480p/<video_id>/%05d.png`` (0/255 mask of the queried class's object; all zero in
  misleading videos and in the irrelevant stretches). The folder is named 480p by DAVIS convention;
  the frames are ``video_size``.
- ``world.json``: config, class names and counts; ``"complete": true`` is written last.

Every image and video draws from its own random stream (seed, kind, index), so the files do not depend
on the number of worker processes, and an interrupted run resumes where it stopped.

Modules: ``config`` (WorldConfig, the random streams), ``plans`` (what each image and video shows),
``drawing`` (backgrounds, bodies and parts), ``images`` and ``videos`` (rendering one item), ``layouts``
(writing items in the VOC, DAVIS and web layouts), ``generate`` (``generate_world`` and ``wsvs world``),
``loopback_site`` (the 127.0.0.1 server standing in for the video site).
"""

from __future__ import annotations

from .config import WorldConfig
from .drawing import class_colour, class_pattern
from .generate import generate_world
from .images import ImageSample, render_image
from .plans import ImagePlan, VideoPlan, plan_images, plan_videos
from .videos import VideoSample, render_video

__all__ = [
    "ImagePlan",
    "ImageSample",
    "VideoPlan",
    "VideoSample",
    "WorldConfig",
    "class_colour",
    "class_pattern",
    "generate_world",
    "plan_images",
    "plan_videos",
    "render_image",
    "render_video",
]
