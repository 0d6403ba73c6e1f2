"""Stub reward plugins for the online-reward tests, loaded by path (``"online_stubs:Brightness"``)
as a config names them: their scores are simple functions of the pixels, so tests compute them by hand."""

import torch


class Brightness:
    """``[n]`` mean of all pixels; records the size of every batch it scores."""

    label = "brightness"

    def __init__(self, gain: float = 1.0):
        self.gain, self.calls = gain, []

    def score(self, images, prompts):
        self.calls.append(len(images))
        return self.gain * images.mean((1, 2, 3))


class RedMean:
    """``[n]`` mean of the red channel (no label: its key is the name it was loaded by)."""

    def score(self, images, prompts):
        return images[:, 0].mean((1, 2))


class MetadataValue:
    """``[n]`` each image's ``metadata["value"]``: shows which rows reached which batch."""

    label = "metadata_value"

    def score(self, images, prompts, metadata):
        return torch.tensor([m["value"] for m in metadata])


class VideoLength:
    """A video plugin: ``[n]`` frame count of ``[n, F, 3, H, W]`` videos (frames first)."""

    media = "video"
    label = "video_length"

    def score(self, videos, prompts):
        assert videos.shape[2] == 3, "video plugins get frames-first videos"
        return torch.full((len(videos),), float(videos.shape[1]))


def brightness_factory(path=None, device=None):
    """A factory that takes ``path`` and ``device``: the loader passes both."""
    reward = Brightness()
    reward.label, reward.seen = "factory", (path, device)
    return reward


class NoScore:
    """A plugin that cannot score (the loader refuses it)."""
