"""Video decoding and encoding: which frames are read, frame folders, the training transform,
MP4 and animation round trips, and the errors for bad data and a missing PyAV."""

import io
import sys

import pytest
import torch
from PIL import Image

from diffalign.data import videos
from diffalign.data.images import prepare
from diffalign.data.videos import (
    VIDEO_ERRORS, MissingVideoExtraError, UnreadableVideoError, VideoArgumentError, encode_animation, encode_video,
    is_readable_video, prepare_video, read_frames, require_av,
)
from diffalign.errors import DiffalignError

STEP = 20  # brightness step between frames: frame i is grey 20·i, far above codec error


def numbered(count: int, size: int = 16) -> torch.Tensor:
    """uint8 ``[count, 3, size, size]``: frame ``i`` is a flat grey of brightness ``STEP · i``."""
    return (torch.arange(count, dtype=torch.uint8) * STEP).view(count, 1, 1, 1).expand(count, 3, size, size).contiguous()


def frame_numbers(frames: torch.Tensor) -> list[int]:
    """Which ``numbered`` frame each decoded frame is (its mean brightness / STEP, rounded)."""
    return [round(float(f.float().mean()) / STEP) for f in frames]


def gradient(count: int, height: int = 32, width: int = 32) -> torch.Tensor:
    """float ``[count, 3, H, W]`` in [0, 1]: smooth ramps that drift over time (codec-friendly)."""
    y = torch.linspace(0, 1, height)[:, None].expand(height, width)
    x = torch.linspace(0, 1, width)[None, :].expand(height, width)
    return torch.stack([torch.stack([x * (0.5 + 0.5 * t / count), y, 0.5 * (x + y) * (1 - t / count)])
                        for t in range(count)])


@pytest.fixture(scope="module")
def twelve() -> bytes:
    return encode_video(numbered(12))


def test_frame_sampling_takes_the_right_frames(twelve):
    everything = read_frames(twelve)
    assert everything.dtype == torch.uint8 and everything.shape == (12, 3, 16, 16)
    assert frame_numbers(everything) == list(range(12))
    assert frame_numbers(read_frames(twelve, frames=4, stride=3)) == [0, 3, 6, 9]
    assert frame_numbers(read_frames(twelve, stride=5)) == [0, 5, 10]
    assert frame_numbers(read_frames(twelve, frames=2)) == [0, 1]
    # The last frame needed is the last frame there is: exactly long enough.
    assert frame_numbers(read_frames(twelve, frames=6, stride=2)) == [0, 2, 4, 6, 8, 10]
    assert frame_numbers(read_frames(twelve, frames=4, stride=3)) == frame_numbers(read_frames(twelve)[::3][:4])


def test_a_path_to_a_video_file_reads_like_its_bytes(twelve, tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(twelve)
    assert torch.equal(read_frames(path, frames=3), read_frames(twelve, frames=3))
    assert torch.equal(read_frames(str(path), stride=4), read_frames(twelve, stride=4))


def test_too_short_a_video_names_the_counts():
    five = encode_video(numbered(5))
    with pytest.raises(UnreadableVideoError, match=r"has 5 frames; 9 at stride 2 need 17"):
        read_frames(five, frames=9, stride=2)
    with pytest.raises(UnreadableVideoError, match=r"has 5 frames; 6 at stride 1 need 6"):
        read_frames(five, frames=6)
    assert read_frames(five, frames=3, stride=2).shape[0] == 3  # needs exactly 5


def test_frame_folder_in_file_name_order(tmp_path):
    frames = numbered(6, size=8)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in reversed(range(6)):  # written out of order: the names, not the times, give the order
        suffix = ".png" if i % 2 else ".PNG"
        Image.fromarray(frames[i].permute(1, 2, 0).numpy()).save(folder / f"{i:03d}{suffix}", format="PNG")
    (folder / "notes.txt").write_text("not a frame")
    assert torch.equal(read_frames(folder), frames)  # PNG is lossless: the exact pixels
    assert torch.equal(read_frames(folder, frames=2, stride=2), frames[[0, 2]])
    assert torch.equal(read_frames(str(folder), stride=4), frames[[0, 4]])
    with pytest.raises(UnreadableVideoError, match=r"has 6 frames; 4 at stride 2 need 7"):
        read_frames(folder, frames=4, stride=2)


def test_frame_folder_errors_name_the_problem(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnreadableVideoError, match="holds no frame images"):
        read_frames(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (8, 8)).save(mixed / "0.png")
    Image.new("RGB", (8, 6)).save(mixed / "1.png")
    (mixed / "2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UnreadableVideoError, match=r"1.png is \(6, 8\).*one size"):
        read_frames(mixed)
    with pytest.raises(UnreadableVideoError, match=r"2.jpg cannot be decoded"):
        read_frames(mixed, stride=2)
    with pytest.raises(UnreadableVideoError, match="no such video file or frame folder"):
        read_frames(tmp_path / "nowhere.mp4")


def test_prepare_video_is_the_image_transform_frame_by_frame():
    frames = torch.randint(0, 256, (3, 3, 24, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    frames[0], frames[2] = 0, 255  # a black and a white frame: the ends of the range
    prepared = prepare_video(frames, 16)
    assert prepared.shape == (3, 3, 16, 16) and prepared.dtype == torch.float32
    assert torch.all(prepared[:, 0] == -1) and torch.all(prepared[:, 2] == 1)
    assert -1 < prepared[:, 1].min() < prepared[:, 1].max() < 1
    for f in range(3):  # channels first, then time; the same resize and centre crop as an image
        image = Image.fromarray(frames[f].permute(1, 2, 0).numpy())
        assert torch.allclose(prepared[:, f], prepare(image, 16, flip=False, crop_fraction=None).pixels, atol=1e-6)
    with pytest.raises(VideoArgumentError, match=r"\[F, 3, H, W\]"):
        prepare_video(frames[0], 16)
    with pytest.raises(VideoArgumentError, match="uint8"):
        prepare_video(frames.float(), 16)


def test_mp4_round_trip_is_close():
    frames = gradient(9)
    decoded = read_frames(encode_video(frames, fps=8))
    assert decoded.shape == (9, 3, 32, 32)
    error = (decoded.float() - frames * 255).abs().mean()
    assert error < 12, f"mean abs error {error:.2f} / 255"
    as_uint8 = read_frames(encode_video((frames * 255).round().to(torch.uint8)))
    assert (as_uint8.float() - decoded.float()).abs().mean() < 2  # floats in [0, 1] and uint8 encode alike


def test_odd_sides_are_padded_by_repeating_the_edge():
    frames = (gradient(9, 15, 17) * 255).round().to(torch.uint8)
    decoded = read_frames(encode_video(frames))
    assert decoded.shape == (9, 3, 16, 18)
    assert (decoded[..., :15, :17].float() - frames.float()).abs().mean() < 12
    # The added row and column copy the last ones, so they are as close to them as the codec allows.
    assert (decoded[..., 15, :17].float() - frames[..., 14, :].float()).abs().mean() < 12
    assert (decoded[..., :15, 17].float() - frames[..., :, 16].float()).abs().mean() < 12


def test_mpeg4_fallback_round_trips(monkeypatch):
    av = require_av()
    monkeypatch.setattr(videos, "_encoder", lambda av: "mpeg4")
    data = encode_video(gradient(9))
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert (read_frames(data).float() - gradient(9) * 255).abs().mean() < 12


def test_encoder_choice_skips_decoder_only_names():
    class FakeAv:
        FFmpegError = RuntimeError
        codecs_available = {"h264", "mpeg4"}

        @staticmethod
        def Codec(name, mode):
            if name == "h264":  # a build that decodes H.264 but cannot encode it
                raise ValueError(name)

    assert videos._encoder.__wrapped__(FakeAv) == "mpeg4"
    FakeAv.codecs_available = {"h264"}
    with pytest.raises(MissingVideoExtraError, match="none of the encoders"):
        videos._encoder.__wrapped__(FakeAv)


def test_undecodable_bytes_are_unreadable(twelve):
    assert VIDEO_ERRORS == (UnreadableVideoError,)
    for bad in (b"not a video at all", twelve[: len(twelve) // 2], b"\x00" * 64):
        with pytest.raises(UnreadableVideoError, match="cannot be decoded"):
            read_frames(bad)
        assert not is_readable_video(bad)
    assert is_readable_video(twelve)
    assert not is_readable_video(None) and not is_readable_video(b"")
    assert issubclass(UnreadableVideoError, DiffalignError) and issubclass(UnreadableVideoError, ValueError)


def test_bad_arguments_say_what_is_taken(twelve):
    with pytest.raises(VideoArgumentError, match="stride must be 1 or more"):
        read_frames(twelve, stride=0)
    with pytest.raises(VideoArgumentError, match="at least 1 frame"):
        read_frames(twelve, frames=0)
    with pytest.raises(VideoArgumentError, match=r"\(x \+ 1\) / 2"):
        encode_video(gradient(3) * 2 - 1)


def test_a_missing_pyav_names_the_extra(monkeypatch, tmp_path, twelve):
    monkeypatch.setitem(sys.modules, "av", None)  # what `import av` sees when PyAV is not installed
    with pytest.raises(MissingVideoExtraError, match=r"pip install 'diffalign\[video\]'") as caught:
        require_av()
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, DiffalignError)
    with pytest.raises(MissingVideoExtraError):
        read_frames(twelve)
    with pytest.raises(MissingVideoExtraError):
        is_readable_video(twelve)  # a setup problem, not a bad video: never a silent False
    with pytest.raises(MissingVideoExtraError):
        encode_video(numbered(2))
    # Frame folders and animations need PIL only.
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(folder / "0.png")
    assert read_frames(folder).shape == (1, 3, 4, 4)
    assert Image.open(io.BytesIO(encode_animation(numbered(3)))).n_frames == 3


@pytest.mark.parametrize("format", ["webp", "gif"])
def test_animation_reads_back_frame_for_frame(format):
    frames = numbered(5)
    data = encode_animation(frames.float() / 255, fps=4, format=format)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == format.upper() and image.n_frames == 5 and image.size == (16, 16)
        assert image.info.get("loop") == 0
        image.seek(3)
        assert abs(sum(image.convert("L").getdata()) / 256 - 3 * STEP) < 4  # frame 3 is grey 60


def test_animation_refuses_other_formats():
    with pytest.raises(VideoArgumentError, match="'webp' or 'gif'"):
        encode_animation(numbered(2), format="mp4")


def test_the_same_frames_encode_to_the_same_file_whatever_ran_before(tiny_path):
    """x264's SIMD paths read memory that other work changes; the stored clip must not depend on it
    (with them, 4 runs of this gave 4 different files)."""
    from diffalign.evaluation.generate import load_pipeline
    from diffalign.families.pipelines import generate

    pipe = load_pipeline(str(tiny_path("wan")))
    call = dict(frames=5, num_inference_steps=2, guidance_scale=3.0, height=32, width=32)
    clip = generate(pipe, ["a red cat"], [torch.Generator().manual_seed(42)], **call)[0]
    files = set()
    for seed in range(4):
        files.add(encode_video(clip))
        generate(pipe, ["a dog"], [torch.Generator().manual_seed(seed)], **call)  # other work in between
    assert len(files) == 1
