"""Training-time augmentation of in-memory grey images (the ``augment`` setting), on the device.

Each training image gets its own random affine map (rotation, scale, shift, shear, each uniform in
its +-range) applied by bilinear resampling with the border's value outside the image, and, with
probability ``stroke``, its strokes thickened or thinned by one pixel (a 3x3 grey dilation or
erosion, each half of the time): the variation of type designs that no two renderings capture.
The draws come from the augmenter's own generator, seeded by the run's seed and saved with a
resumed run's state, so a seed fixes every augmented batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Augmenter:
    def __init__(self, amounts: dict[str, float], seed: int):
        self.amounts = {name: float(value) for name, value in amounts.items()}
        self.generator = torch.Generator().manual_seed(10_007 + seed)

    def _uniform(self, name: str, n: int) -> torch.Tensor:
        return (torch.rand(n, generator=self.generator) * 2 - 1) * self.amounts.get(name, 0.0)

    def matrices(self, n: int) -> torch.Tensor:
        """(n, 2, 3) affine maps of output to input coordinates (affine_grid's convention)."""
        angle = self._uniform("rotate", n) * math.pi / 180
        shear = self._uniform("shear", n) * math.pi / 180
        scale = 1 + self._uniform("scale", n)
        shift = torch.stack([self._uniform("shift", n), self._uniform("shift", n)], dim=1) * 2
        cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
        linear = torch.stack([torch.stack([cos, -sin + cos * tan], 1), torch.stack([sin, cos + sin * tan], 1)], 1)
        return torch.cat([linear / scale[:, None, None], shift[:, :, None]], dim=2)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float -> the same batch augmented (a new tensor)."""
        n = len(images)
        out = images
        if any(self.amounts.get(k, 0) for k in ("rotate", "scale", "shift", "shear")):
            grid = F.affine_grid(self.matrices(n).to(images.device, images.dtype), list(images.shape), align_corners=False)
            out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.amounts.get("stroke", 0):
            draw = torch.rand(n, generator=self.generator)
            thick = (draw < self.amounts["stroke"] / 2).to(images.device)
            thin = ((draw >= self.amounts["stroke"] / 2) & (draw < self.amounts["stroke"])).to(images.device)
            dilated = F.max_pool2d(out, 3, 1, 1)
            eroded = -F.max_pool2d(-out, 3, 1, 1)
            view = (-1,) + (1,) * (out.ndim - 1)
            out = torch.where(thick.view(view), dilated, torch.where(thin.view(view), eroded, out))
        return out.contiguous(memory_format=torch.channels_last)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
