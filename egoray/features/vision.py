"""Image and video-frame encoding with an open_clip image tower."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from egoray.models.clip import ClipModel


def to_tensor(frames: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]):
    """uint8 [N, H, W, 3] (already at the model's size) → normalised float tensor [N, 3, H, W]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


class ImageEncoder:
    """Loads an open_clip model once; encodes batches of frames to [N, D] float32."""

    def __init__(self, spec: ClipModel, device: str | None = None) -> None:
        import torch

        from egoray.models.clip import load_open_clip

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer, image = load_open_clip(spec, self.device)
        self.size, self.mean, self.std = image["size"], image["mean"], image["std"]
        self.name = f"{spec.name}:{spec.pretrained or 'random'}"

    def encode(self, frames: np.ndarray, normalize: bool = False) -> np.ndarray:
        import torch

        if len(frames) == 0:
            return np.zeros((0, self.dim), np.float32)
        with torch.no_grad():
            x = to_tensor(frames, self.mean, self.std).to(self.device)
            return self.model.encode_image(x, normalize=normalize).float().cpu().numpy()

    def encode_stream(self, frames: Iterable[np.ndarray], batch_size: int = 32, normalize: bool = False) -> np.ndarray:
        """Encode frames as they arrive, ``batch_size`` at a time (bounded memory)."""
        chunks, batch = [], []
        for frame in frames:
            batch.append(frame)
            if len(batch) == batch_size:
                chunks.append(self.encode(np.stack(batch), normalize))
                batch = []
        if batch:
            chunks.append(self.encode(np.stack(batch), normalize))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    @property
    def dim(self) -> int:
        return int(self.model.visual.output_dim)


class VideoTowerEncoder:
    """The video tower of a ``train_video_text`` run: a window's frames → one clip embedding.

    Same interface as :class:`ImageEncoder` (``size``, ``name``, ``encode_stream``), so the
    ``video_features`` stage serves it unchanged: each window yields [1, D] instead of [T, D].
    """

    def __init__(self, url: str, device: str | None = None) -> None:
        import torch

        from egoray.models.video_text import load_video_text

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_video_text(url).to(self.device)
        self.size = int(self.model.image["size"])
        self.num_frames = self.model.config.num_frames
        self.name = f"video_text:{url}"

    def encode_stream(self, frames: Iterable[np.ndarray], batch_size: int = 32, normalize: bool = False) -> np.ndarray:
        return self.model.embed_clip(np.stack(list(frames)), normalize)
