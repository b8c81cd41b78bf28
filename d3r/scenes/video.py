"""Source ``video``: one video file, or a folder of videos, each one scene (PyAV).

Frame selection: ``scenes.video_fps`` when set (frames nearest to ``t = k / video_fps``), else every
``scenes.video_stride``-th frame (default every frame); setting both is a config error. Listing reads
container metadata (frame count, rate, duration) and decodes the first frame for its rotation; each
view's loader decodes its one frame. Frame ``i`` is the frame presented at ``start + i / rate``: the
loader seeks to the key frame before it and decodes forward, identifying frames by timestamp, and falls
back to decoding from the start counting frames when the stream has no timestamps. An unreadable video
becomes a scene with no views and a reject.

Rotation: a phone records a portrait video as landscape frames plus a display matrix saying how to
turn them. Frames come out as a player shows them: turned by the matrix's rotation (a multiple of 90°,
counter-clockwise as PyAV's ``VideoFrame.rotation`` gives it), and ``meta["size"]`` is the shown size.
A mirror in the matrix is not applied (phones do not write one).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from d3r.scenes.errors import InputFileError, os_error_reason
from d3r.scenes.folders import rejected_scenes, sorted_entries
from d3r.scenes.records import Scene, View

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})


class VideoReadError(InputFileError):
    """A video (or one of its frames) that cannot be read: names the file and what was wrong."""


@dataclass(frozen=True)
class VideoInfo:
    """Container metadata: frame count, frame rate (frames/s), duration (s), frame size (W, H) as shown, and
    the rotation (degrees counter-clockwise, a multiple of 90) that turns stored frames into shown ones."""

    num_frames: int
    rate: Fraction
    duration: float
    size: tuple[int, int]
    rotation: int = 0


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def probe_video(path: Path) -> VideoInfo:
    """Read :class:`VideoInfo` from the container header, decoding nothing.

    Raises:
        VideoReadError: when the file is empty, not a video, or has no video stream.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise VideoReadError(path, os_error_reason(exc)) from None
    if size == 0:
        raise VideoReadError(path, "file is empty (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(path, "no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise VideoReadError(path, "video stream has no frame rate")
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = (container.duration or 0) / av.time_base
            num_frames = stream.frames or round(duration * float(rate))
            size = (stream.codec_context.width, stream.codec_context.height)
            first = next(container.decode(stream), None)
    except av.FFmpegError as exc:
        reason = os_error_reason(exc) if isinstance(exc, OSError) and exc.errno else f"not a readable video: {exc}"
        raise VideoReadError(path, reason) from None
    if num_frames <= 0 or first is None:
        raise VideoReadError(path, "video has no frames")
    rotation = display_rotation(first)
    if rotation % 180:
        size = (size[1], size[0])
    return VideoInfo(num_frames=num_frames, rate=Fraction(rate), duration=duration, size=size, rotation=rotation)


def display_rotation(frame: av.VideoFrame) -> int:
    """The frame's display rotation in degrees counter-clockwise, to the nearest multiple of 90 (0 without one)."""
    return int(round((frame.rotation or 0) / 90.0)) * 90 % 360


def shown(image: np.ndarray, rotation: int) -> np.ndarray:
    """A stored frame ``[H, W, 3]`` turned ``rotation`` degrees counter-clockwise, as a player shows it."""
    return np.ascontiguousarray(np.rot90(image, k=rotation // 90)) if rotation else image


def frame_indices(info: VideoInfo, stride: int | None, fps: float | None) -> list[int]:
    """Indices of the frames to keep: nearest to ``k / fps`` seconds when ``fps`` is set, else every ``stride``-th."""
    if fps is not None:
        times = np.arange(0.0, info.num_frames / float(info.rate), 1.0 / fps)
        picks = np.round(times * float(info.rate)).astype(int)
        return sorted({int(i) for i in picks if i < info.num_frames})
    return list(range(0, info.num_frames, stride or 1))


def _decode_by_count(path: str, index: int) -> np.ndarray | None:
    with av.open(path) as container:
        for count, frame in enumerate(container.decode(video=0)):
            if count == index:
                return frame.to_ndarray(format="rgb24")
    return None


def _decode_by_time(path: str, index: int) -> np.ndarray | None:
    """The frame presented at ``start + index / rate``, or None when the stream lacks timestamps."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate or stream.guessed_rate)
        start = stream.start_time or 0
        target = start + round(Fraction(index) / rate / stream.time_base)
        container.seek(target, backward=True, any_frame=False, stream=stream)
        for frame in container.decode(stream):
            if frame.pts is None:
                return None
            if round((frame.pts - start) * stream.time_base * rate) >= index:
                return frame.to_ndarray(format="rgb24")
    return None


def load_video_frame(view: View) -> View:
    """Loader for video views: decodes frame ``view.meta["frame_index"]`` of ``view.path`` to ``[H, W, 3]`` uint8,
    turned by ``view.meta["rotation"]`` as a player shows it.

    Raises:
        VideoReadError: naming the file and frame when it cannot be decoded.
    """
    index = int(view.meta["frame_index"])
    try:
        image = _decode_by_time(view.path, index)
        if image is None:
            image = _decode_by_count(view.path, index)
    except av.FFmpegError as exc:
        raise VideoReadError(view.path, f"cannot decode frame {index}: {exc}") from None
    if image is None:
        raise VideoReadError(view.path, f"video ends before frame {index}")
    return view.with_(image=shown(np.ascontiguousarray(image), int(view.meta.get("rotation", 0))))


def video_scene(path: Path, stride: int | None = None, fps: float | None = None) -> Scene:
    """One lazy scene from a video file; an unreadable file gives a scene with no views and one reject."""
    try:
        info = probe_video(path)
    except VideoReadError as exc:
        logger.info("skipping video %s", exc)
        return Scene(id=path.stem, source="video", views=[], rejects=[(str(path), exc.reason)])
    views = [
        View(name=f"frame_{i:06d}", path=str(path), loader=load_video_frame,
             meta={"frame_index": i, "size": info.size, "rotation": info.rotation})
        for i in frame_indices(info, stride, fps)
    ]
    meta = {"video": str(path), "num_frames": info.num_frames, "fps": float(info.rate), "duration": info.duration,
            "rotation": info.rotation}
    return Scene(id=path.stem, source="video", views=views, meta=meta)


def list_video_scenes(root: Path, stride: int | None = None, fps: float | None = None) -> Iterator[Scene]:
    """Scenes from ``root``: a video file, or every video file directly in the folder ``root``
    (an entry that cannot be used comes as a scene with no views and its reject)."""
    if root.is_file():
        yield video_scene(root, stride, fps)
        return
    rejects: list[tuple[str, str]] = []
    paths = [p for p in sorted_entries(root, rejects) if p.is_file() and is_video_file(p)]
    yield from rejected_scenes(rejects, "video")
    for path in paths:
        yield video_scene(path, stride, fps)
