"""Video reading and writing: decode to frames, sample them, prepare them for a video VAE, and
encode frames to MP4 (storage) or to an animated WebP / GIF (HTML previews).

A video is read from the bytes of a video file (MP4, WebM, MKV, MOV, AVI), from a path to such a
file, or from a path to a *frame folder*: a directory of ``.png`` / ``.jpg`` / ``.jpeg`` / ``.webp``
images, one per frame, in file-name order (so name them ``00000.png``, ``00001.png``, ...).

Video files need PyAV, the optional ``video`` extra (``pip install 'diffalign[video]'``); it is
imported only when a video file is decoded or encoded, so image-only installs never need it.
Frame folders and animations use PIL alone.

Every failure to decode, whatever PyAV or PIL raised, comes out as :class:`UnreadableVideoError`,
so callers catch :data:`VIDEO_ERRORS` and nothing library-specific.
"""

from __future__ import annotations

import io
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import torch

from diffalign.errors import DiffalignError

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

# Encoders by preference: H.264 plays in every browser; MPEG-4 Part 2 is in every FFmpeg build.
_ENCODERS = ("libx264", "h264", "mpeg4")
_INSTALL_HINT = "reading and writing MP4 videos needs PyAV, the `video` extra: pip install 'diffalign[video]'"


class MissingVideoExtraError(DiffalignError, ImportError):
    """PyAV is not installed; the message gives the ``pip install`` that adds it."""


class UnreadableVideoError(DiffalignError, ValueError):
    """Bytes, a file or a frame folder that cannot be decoded, or a video too short for the frames
    asked for; the message says which and why."""


class VideoArgumentError(DiffalignError, ValueError):
    """A frame count, stride or frame tensor these functions cannot take; the message says what they take."""


# What decoding raises for bad data. PyAV's and PIL's own errors are re-raised as
# UnreadableVideoError inside this module, so this one class is all a caller needs to catch.
VIDEO_ERRORS = (UnreadableVideoError,)


def require_av():
    """The ``av`` module, or :class:`MissingVideoExtraError` saying how to install it."""
    try:
        import av
    except ImportError as err:
        raise MissingVideoExtraError(_INSTALL_HINT) from err
    return av


# ----------------------------------------------------------------------------------- reading
def read_frames(source, frames: int | None = None, stride: int = 1) -> torch.Tensor:
    """Decode frames ``0, stride, 2·stride, ...`` of a video.

    Decoding stops at the last frame needed, so asking for the first few frames of a long video
    is cheap.

    Args:
        source: the bytes of a video file, a path (``Path`` or ``str``) to a video file, or a path
            to a frame folder.
        frames: how many sampled frames to return; ``None`` returns all of them.
        stride: take every ``stride``-th frame.

    Returns:
        uint8 ``[F, 3, H, W]``.

    Raises:
        UnreadableVideoError: the source cannot be decoded, or has fewer than
            ``(frames - 1) · stride + 1`` frames.
        MissingVideoExtraError: a video file, and PyAV is not installed.
    """
    _check_sampling(frames, stride)
    if isinstance(source, (bytes, bytearray, memoryview)):
        chosen = _decode_video(io.BytesIO(bytes(source)), "the video bytes", frames, stride)
    else:
        path = Path(source)
        if path.is_dir():
            chosen = _read_frame_folder(path, frames, stride)
        elif path.is_file():
            chosen = _decode_video(str(path), str(path), frames, stride)
        else:
            raise UnreadableVideoError(f"{path}: no such video file or frame folder")
    return torch.stack(chosen)


def _check_sampling(frames: int | None, stride: int) -> None:
    if frames is not None and frames < 1:
        raise VideoArgumentError(f"frames={frames}: ask for at least 1 frame, or None for all of them")
    if stride < 1:
        raise VideoArgumentError(f"stride={stride}: the stride must be 1 or more (1 takes every frame)")


def _too_short(where: str, found: int, frames: int, stride: int) -> UnreadableVideoError:
    need = (frames - 1) * stride + 1
    return UnreadableVideoError(f"{where} has {found} frames; {frames} at stride {stride} need {need}. "
                                "Ask for fewer frames or a smaller stride, or drop this video")


def _decode_video(file, where: str, frames: int | None, stride: int) -> list[torch.Tensor]:
    """Frames ``[3, H, W]`` uint8 of a video file (a path or a file object), decoded with PyAV."""
    av = require_av()
    chosen, seen = [], 0
    try:
        with av.open(file, mode="r") as container:
            if not container.streams.video:
                raise UnreadableVideoError(f"{where} holds no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame threads: several times faster on long clips
            for index, frame in enumerate(container.decode(stream)):
                seen = index + 1
                if index % stride == 0:
                    chosen.append(torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1))
                    if chosen[-1].shape != chosen[0].shape:  # a stream that changes size midway
                        raise UnreadableVideoError(f"{where} changes frame size at frame {index}; every frame "
                                                   "of a video must have one size")
                    if frames is not None and len(chosen) == frames:
                        break  # stop early: the rest of the video is never decoded
    except av.FFmpegError as err:
        raise UnreadableVideoError(f"{where} cannot be decoded as a video ({err})") from err
    if not chosen:
        raise UnreadableVideoError(f"{where} holds no decodable frames")
    if frames is not None and len(chosen) < frames:
        raise _too_short(where, seen, frames, stride)
    return chosen


def _read_frame_folder(folder: Path, frames: int | None, stride: int) -> list[torch.Tensor]:
    """Frames ``[3, H, W]`` uint8 of a frame folder; only the sampled files are decoded."""
    from PIL import Image

    from diffalign.data.images import IMAGE_ERRORS

    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
                   key=lambda p: p.name)
    if not files:
        raise UnreadableVideoError(f"{folder} holds no frame images ({', '.join(FRAME_SUFFIXES)})")
    if frames is not None and len(files) < (frames - 1) * stride + 1:
        raise _too_short(str(folder), len(files), frames, stride)
    chosen = []
    for path in files[::stride][:frames]:
        try:
            with Image.open(path) as image:
                pixels = torch.from_numpy(_rgb_array(image)).permute(2, 0, 1)
        except IMAGE_ERRORS as err:
            raise UnreadableVideoError(f"frame {path} cannot be decoded ({err})") from err
        if chosen and pixels.shape != chosen[0].shape:
            raise UnreadableVideoError(f"frame {path} is {tuple(pixels.shape[1:])} (h, w) but the first frame is "
                                       f"{tuple(chosen[0].shape[1:])}; every frame of a video must have one size")
        chosen.append(pixels)
    return chosen


def _rgb_array(image):
    import numpy as np

    return np.array(image.convert("RGB"))  # a copy: torch.from_numpy needs a writable array


def is_readable_video(data: bytes | None) -> bool:
    """True when ``data`` decodes as a video with at least one frame (only the first is decoded).

    Raises:
        MissingVideoExtraError: PyAV is not installed (a setup problem, not bad data).
    """
    if not data:
        return False
    try:
        read_frames(data, frames=1)
    except UnreadableVideoError:
        return False
    return True


# ----------------------------------------------------------------------------------- training
def prepare_video(frames: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize the shorter side to ``resolution`` and centre-crop a square, every frame alike.

    The resize and crop are :func:`diffalign.data.images.prepare`'s (bilinear, antialiased; the
    crop's corner rounded the same way), so a one-frame video prepares like the image it is.

    Args:
        frames: uint8 ``[F, 3, H, W]``, as :func:`read_frames` returns.
        resolution: output side ``R``.

    Returns:
        float32 ``[3, F, R, R]`` in [-1, 1]: channels, then time, as video VAEs take it.
    """
    import torchvision.transforms.functional as TF

    _check_frames(frames, "prepare_video")
    if frames.dtype != torch.uint8:
        raise VideoArgumentError(f"prepare_video takes uint8 frames (as read_frames returns); got {frames.dtype}")
    # One call on the whole [F, 3, H, W] tensor: torchvision treats F as a batch.
    resized = TF.resize(frames, resolution, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    h, w = resized.shape[-2:]
    top, left = max(0, round((h - resolution) / 2.0)), max(0, round((w - resolution) / 2.0))
    cropped = TF.crop(resized, top, left, resolution, resolution)
    return (cropped.float() / 127.5 - 1.0).permute(1, 0, 2, 3).contiguous()


def _check_frames(frames, what: str) -> None:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] < 1:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise VideoArgumentError(f"{what} takes frames [F, 3, H, W] with F >= 1; got {shape}")


def _to_uint8(frames: torch.Tensor, what: str) -> torch.Tensor:
    """``[F, 3, H, W]`` uint8 from uint8, or from floats in [0, 1]."""
    _check_frames(frames, what)
    if frames.dtype == torch.uint8:
        return frames.cpu()
    if not frames.is_floating_point():
        raise VideoArgumentError(f"{what} takes uint8 frames or floats in [0, 1]; got {frames.dtype}")
    low, high = float(frames.min()), float(frames.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise VideoArgumentError(f"{what} takes floats in [0, 1]; got values in [{low:.3g}, {high:.3g}]. Map frames "
                                 "in [-1, 1] with (x + 1) / 2, or pass uint8")
    return (frames.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


# ----------------------------------------------------------------------------------- writing
def encode_video(frames: torch.Tensor, fps: int = 16) -> bytes:
    """Encode frames as an MP4 (H.264 where the PyAV build has it, else MPEG-4), in memory.

    The pixel format is yuv420p, which needs even sides: an odd height or width gets one more
    row or column repeating the edge, so the decoded video is that much larger.

    Args:
        frames: ``[F, 3, H, W]`` uint8, or float in [0, 1].
        fps: frames per second written in the file.

    Returns:
        The MP4 file's bytes.
    """
    av = require_av()
    video = _pad_to_even(_to_uint8(frames, "encode_video"))
    codec = _encoder(av)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = video.shape[-2:]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        _set_quality(stream, codec, fps)
        for index, pixels in enumerate(video.permute(0, 2, 3, 1).contiguous().numpy()):  # [F, H, W, 3]
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush the frames the encoder still holds
    return buffer.getvalue()


def _pad_to_even(video: torch.Tensor) -> torch.Tensor:
    """``[F, 3, H, W]`` with an odd side grown by one, repeating the last row or column."""
    if video.shape[-2] % 2:
        video = torch.cat([video, video[..., -1:, :]], dim=-2)
    if video.shape[-1] % 2:
        video = torch.cat([video, video[..., -1:]], dim=-1)
    return video


@lru_cache(maxsize=None)
def _encoder(av) -> str:
    """The first of :data:`_ENCODERS` this PyAV build can encode with.

    ``av.codecs_available`` lists decoders too (``h264`` decodes everywhere), so each candidate is
    opened for writing to be sure.
    """
    for name in _ENCODERS:
        if name not in av.codecs_available:
            continue
        try:
            av.Codec(name, "w")
        except (ValueError, av.FFmpegError):  # UnknownCodecError: only a decoder of that name
            continue
        return name
    raise MissingVideoExtraError(f"this PyAV build has none of the encoders {', '.join(_ENCODERS)}; install the "
                                 "PyPI wheel, which has them: pip install --force-reinstall 'av>=12'")


def _set_quality(stream, codec: str, fps: int) -> None:
    """Near-transparent quality: stored videos are training data, so codec artefacts would be learnt."""
    if codec == "mpeg4":
        # No CRF for MPEG-4 Part 2: a bit rate generous for the frame size instead (~2 bits a pixel).
        stream.bit_rate = max(400_000, 2 * stream.width * stream.height * fps)
    else:
        # asm=0: x264's SIMD paths made the same frames encode differently from run to run, as
        # the memory around the frame buffers changed (seen after any model ran in between), so
        # two identical checkpoints did not tie in an evaluation. Without them it is deterministic,
        # at 4x the encoding time (an 81-frame 480x832 clip: 2.1 s instead of 0.5 s on 2 CPU
        # cores), small next to generating the clip.
        stream.options = {"crf": "18", "preset": "medium", "x264-params": "asm=0"}


def encode_animation(frames: torch.Tensor, fps: int = 8, format: str = "webp") -> bytes:
    """Encode frames as a looping animated WebP or GIF with PIL (no PyAV), for HTML previews.

    GIF writers merge identical consecutive frames, so a still video may read back with fewer.

    Args:
        frames: ``[F, 3, H, W]`` uint8, or float in [0, 1].
        fps: frames per second (each frame shows ``1000 // fps`` ms).
        format: ``"webp"`` or ``"gif"``.

    Returns:
        The animation file's bytes.
    """
    from PIL import Image

    if format.lower() not in ("webp", "gif"):
        raise VideoArgumentError(f"format={format!r}: encode_animation writes 'webp' or 'gif'")
    if fps < 1:
        raise VideoArgumentError(f"fps={fps}: give 1 frame per second or more")
    video = _to_uint8(frames, "encode_animation")
    images = [Image.fromarray(pixels) for pixels in video.permute(0, 2, 3, 1).numpy()]
    buffer = io.BytesIO()
    images[0].save(buffer, format=format.upper(), save_all=True, append_images=images[1:],
                   duration=max(1, 1000 // fps), loop=0)
    return buffer.getvalue()
