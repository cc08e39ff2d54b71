"""Video I/O with PyAV: decode clips at a target fps and size, encode/decode mp4 bytes, write mp4/gif."""
from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path, PurePosixPath

import av
import numpy as np
from PIL import Image


class VideoReadError(RuntimeError):
    """A file that is not a decodable video, or has too few frames for one clip."""


def _resize_crop(frame: av.VideoFrame, size: int) -> np.ndarray:
    """Resize the short side to ``size`` (bilinear, swscale) and center-crop → ``(size, size, 3)`` uint8."""
    w, h = frame.width, frame.height
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = frame.reformat(width=nw, height=nh, format="rgb24", interpolation="BILINEAR").to_ndarray()
    top, left = (nh - size) // 2, (nw - size) // 2
    return img[top:top + size, left:left + size]


def read_clips(path: str, num_frames: int, fps: float, size: int, max_clips: int | None = None,
               span: tuple[float, float] | None = None) -> list[tuple[int, np.ndarray]]:
    """Cut a video into non-overlapping clips of ``num_frames`` frames resampled to ``fps``.

    Args:
        path: local path, fsspec URL (``s3://…``, read through fsspec) or file-like object.
        fps: output frame rate (frames are picked by presentation time, nearest earlier frame).
        size: output height = width in pixels (resize short side + center crop).
        max_clips: keep at most this many clips, spread evenly over the video.
        span: ``(start, end)`` seconds: only that part of the video (a captioned segment).
    Returns:
        ``[(first_source_frame_index, frames uint8 (F, size, size, 3)), ...]``.
    Raises:
        VideoReadError: undecodable/empty file, or fewer than ``num_frames`` frames at ``fps``.
    """
    if isinstance(path, str) and "://" in path:
        import fsspec

        try:
            with fsspec.open(path, "rb") as f:
                return _decode_clips(f, path, num_frames, fps, size, max_clips, span)
        except (FileNotFoundError, PermissionError) as e:
            raise VideoReadError(f"{path}: cannot open: {e}") from e
    return _decode_clips(path, path, num_frames, fps, size, max_clips, span)


def _decode_clips(source, path: str, num_frames: int, fps: float, size: int, max_clips: int | None,
                  span: tuple[float, float] | None = None) -> list[tuple[int, np.ndarray]]:
    """:func:`read_clips` of ``source`` (a path or a file object); ``path`` names it in errors."""
    start, end = span or (0.0, float("inf"))
    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            picked, src_index, next_time = [], [], start
            for i, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else i / float(stream.average_rate or 25)
                if t >= end:
                    break
                if t + 1e-6 >= next_time:
                    picked.append(_resize_crop(frame, size))
                    src_index.append(i)
                    next_time += 1.0 / fps
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoReadError(f"{path}: cannot decode video: {e}") from e
    return _cut_clips(picked, src_index, num_frames, fps, max_clips, path)


def _cut_clips(picked: list[np.ndarray], src_index: list[int], num_frames: int, fps: float,
               max_clips: int | None, path: str) -> list[tuple[int, np.ndarray]]:
    n = len(picked) // num_frames
    if n == 0:
        raise VideoReadError(f"{path}: {len(picked)} frames at {fps} fps, need {num_frames} for one clip")
    starts = list(range(n))
    if max_clips is not None and n > max_clips:
        starts = [round(k * (n - 1) / max(max_clips - 1, 1)) for k in range(max_clips)]
    return [(src_index[k * num_frames],
             np.stack(picked[k * num_frames:(k + 1) * num_frames])) for k in starts]


IMAGE_EXTS = (".jpg", ".jpeg", ".png")   # frames of a frame-folder video (Sky-Timelapse)


def read_frame_clips(folder: str, num_frames: int, fps: float, size: int, src_fps: float,
                     max_clips: int | None = None) -> list[tuple[int, np.ndarray]]:
    """:func:`read_clips` for a video stored as a folder of image files (Sky-Timelapse), frame i
    of the sorted file names shown at ``i / src_fps`` seconds. ``folder``: a local path or an
    fsspec URL (``s3://…``).

    Raises:
        VideoReadError: no images (or no such folder), an unreadable image, or too few frames.
    """
    import fsspec

    fs, base = fsspec.core.url_to_fs(folder)
    try:
        names = fs.ls(base, detail=False)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
        raise VideoReadError(f"{folder}: cannot list frames: {e}") from e
    files = sorted(f for f in names if PurePosixPath(f).suffix.lower() in IMAGE_EXTS)
    if not files:
        raise VideoReadError(f"{folder}: no {'/'.join(IMAGE_EXTS)} frames")
    picked, src_index, next_time = [], [], 0.0
    for i, f in enumerate(files):
        if i / src_fps + 1e-6 < next_time:
            continue
        try:
            with fs.open(f, "rb") as fh, Image.open(fh) as img:
                frame = av.VideoFrame.from_ndarray(np.asarray(img.convert("RGB")), format="rgb24")
        except OSError as e:
            name = fs.unstrip_protocol(f) if "://" in folder else f
            raise VideoReadError(f"{name}: cannot read frame: {e}") from e
        picked.append(_resize_crop(frame, size))
        src_index.append(i)
        next_time += 1.0 / fps
    return _cut_clips(picked, src_index, num_frames, fps, max_clips, folder)


def encode_mp4(frames: np.ndarray, fps: float, crf: int = 18) -> bytes:
    """H.264 mp4 bytes from ``(F, H, W, 3)`` uint8 frames (H, W even)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "fast"}
        for img in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def decode_mp4(data: bytes, stop: int | None = None) -> np.ndarray:
    """The frames of an in-memory video → ``(F, H, W, 3)`` uint8; with ``stop``, only the first
    ``stop`` frames are decoded.

    Raises:
        VideoReadError: bytes that are not a decodable video.
    """
    try:
        with av.open(io.BytesIO(data)) as container:
            frames = []
            for f in container.decode(video=0):
                frames.append(f.to_ndarray(format="rgb24"))
                if stop is not None and len(frames) >= stop:
                    break
            return np.stack(frames)
    except (av.error.FFmpegError, ValueError) as e:
        raise VideoReadError(f"cannot decode mp4 bytes: {e}") from e


def write_gif(path: str, frames: np.ndarray, fps: float) -> None:
    """Write ``(F, H, W, 3)`` uint8 frames as a looping gif."""
    imgs = [Image.fromarray(f) for f in frames]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=round(1000 / fps), loop=0)


def video_grid(videos: np.ndarray, cols: int) -> np.ndarray:
    """Tile ``(B, F, H, W, 3)`` videos into one ``(F, rows*H, cols*W, 3)`` video (blank cells black)."""
    B, F, H, W, C = videos.shape
    rows = -(-B // cols)
    grid = np.zeros((F, rows * H, cols * W, C), dtype=videos.dtype)
    for b in range(B):
        r, c = divmod(b, cols)
        grid[:, r * H:(r + 1) * H, c * W:(c + 1) * W] = videos[b]
    return grid


def write_grid(frames: np.ndarray, out: Path, fps: float, name: str = "samples") -> None:
    """``{name}.mp4`` and ``{name}.gif`` (a grid of uint8 videos ``(N, F, H, W, 3)``, 4 per row)
    and ``{name}.npy`` (the videos) under the folder ``out`` (created)."""
    grid = video_grid(frames, cols=min(4, len(frames)))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.mp4").write_bytes(encode_mp4(grid, fps))
    write_gif(str(out / f"{name}.gif"), grid, fps)
    np.save(out / f"{name}.npy", frames)
