"""Video files: results written as H.264 mp4 (PyAV's bundled FFmpeg, no system ffmpeg needed),
and uploads to extend read back as frames, within limits and with one-sentence refusals."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import av
import numpy as np

from studio.errors import InvalidRequest

# An upload to extend: beyond these it is not a video the studio continues.
MAX_FRAMES = 2000
MAX_PIXELS = 2048 * 2048


def write_mp4(frames: np.ndarray, fps: int, directory: Path, name: str) -> Path:
    """Frames [count, H, W, 3] uint8 as a new mp4 in `directory` (a random suffix, written to a
    temporary file and renamed, as the studio's PNGs are)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{secrets.token_hex(6)}.mp4"
    partial = path.with_name(f".{path.stem}.partial.mp4")
    try:
        with av.open(str(partial), mode="w") as container:
            stream = container.add_stream("libx264", rate=int(fps))
            stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
            stream.pix_fmt = "yuv420p"
            # Near-lossless: the small built-ins' flat colours stay the colours they drew.
            stream.options = {"crf": "12", "preset": "medium"}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(stream.encode())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """A video file's frames [count, H, W, 3] uint8 and its frame rate, or InvalidRequest."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InvalidRequest("That file has no video in it.")
            stream = container.streams.video[0]
            if stream.width * stream.height > MAX_PIXELS:
                raise InvalidRequest(
                    f"That video is {stream.width}×{stream.height}; at most 2048×2048 can be continued."
                )
            frames = []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) > MAX_FRAMES:
                    raise InvalidRequest(f"That video has more than {MAX_FRAMES} frames; shorten it to continue it.")
            rate = float(stream.average_rate or stream.guessed_rate or 0)
    except av.FFmpegError as error:
        raise InvalidRequest("That file is not a video the studio can read.") from error
    if not frames:
        raise InvalidRequest("That video has no frames.")
    return np.stack(frames), rate
