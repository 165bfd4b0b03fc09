"""Model FLOPs of a CLIP vision tower, counted analytically, and model-FLOPs utilization (MFU).

Counting convention (PaLM's MFU, and what ``torch.utils.flop_counter`` counts): a multiply-add is 2 FLOPs; only
matrix products count — the patch-embedding convolution, the attention and MLP projections, the attention scores
and their weighted sum, and the final projection; layer norms, softmax, GELU and additions do not. A training
step costs 3× the forward pass (the backward pass computes gradients of activations and of weights, each as
costly as the forward), whatever the implementation actually executes; so MFU does not reward recomputation nor
penalize skipping the input gradient, and numbers compare across attention kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Dense bf16 tensor-core peak in FLOP/s, by a substring of ``torch.cuda.get_device_name()`` (first match wins).
PEAK_BF16 = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),  # SXM / HBM3
    ("A100", 312.0e12),
    ("L40S", 362.0e12),
    ("A10G", 70.0e12),
)


@dataclass(frozen=True)
class VisionShape:
    """What the FLOPs of a ViT image tower depend on."""

    image_size: int
    patch_size: int
    hidden: int
    intermediate: int
    layers: int
    projection: int

    @classmethod
    def from_config(cls, config) -> "VisionShape":
        """From a transformers ``CLIPConfig`` (its ``vision_config`` and ``projection_dim``)."""
        vision = config.vision_config
        return cls(vision.image_size, vision.patch_size, vision.hidden_size, vision.intermediate_size,
                   vision.num_hidden_layers, config.projection_dim)

    @property
    def tokens(self) -> int:
        """Patches plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1


def vision_forward_flops(shape: VisionShape) -> int:
    """Forward FLOPs of one image through the tower, up to its projected embedding (see the module docstring)."""
    n, d, m = shape.tokens, shape.hidden, shape.intermediate
    patches = 2 * (n - 1) * (3 * shape.patch_size ** 2) * d
    per_layer = (2 * n * d * 3 * d      # query, key, value projections
                 + 2 * n * n * d        # scores Q Kᵀ (all heads together)
                 + 2 * n * n * d        # scores × V
                 + 2 * n * d * d        # output projection
                 + 2 * 2 * n * d * m)   # MLP: two matrices
    return patches + shape.layers * per_layer + 2 * d * shape.projection


def training_step_flops(shape: VisionShape, batch: int) -> int:
    """Model FLOPs of one training step of the image tower: 3× the forward pass of ``batch`` images."""
    return 3 * batch * vision_forward_flops(shape)


def mfu(flops_per_step: float, seconds_per_step: float, peak_flops: float) -> float:
    """Model-FLOPs utilization: achieved model FLOP/s over the hardware's peak FLOP/s."""
    if seconds_per_step <= 0 or peak_flops <= 0:
        raise ValueError(f"seconds_per_step and peak_flops must be > 0, got {seconds_per_step} and {peak_flops}")
    return flops_per_step / seconds_per_step / peak_flops


def peak_bf16_flops(device_name: str) -> float | None:
    """The bf16 dense peak of a GPU by name, or None when unknown (pass ``--peak-tflops``)."""
    for key, value in PEAK_BF16:
        if key in device_name:
            return value
    return None


def counted_flops(function) -> int:
    """FLOPs ``torch.utils.flop_counter`` counts while ``function()`` runs (matrix products and convolutions;
    it does not know every fused attention kernel, e.g. SDPA on a CPU)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return int(counter.get_total_flops())
