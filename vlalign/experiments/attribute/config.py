"""Settings and targets of the attribute experiment."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlalign.data.people import ACTIVITIES
from vlalign.training.methods.preference import PreferenceConfig
from vlalign.training.train_config import TrainConfig

#: Targets of the issue; the report checks each.
TARGETS = {"flipped_rate_min": 0.90, "t_star_rate_tolerance": 0.05, "parity_gap_max": 0.10, "activity_drop_max": 0.02}

#: The reference paths of :func:`erasure_bounds` are sampled every 1 / BOUNDS_POINTS; W's ridge towards I.
BOUNDS_POINTS = 100
BOUNDS_RIDGE = 1.0
BOUND_NAMES = {"ideal_eraser": "ideal eraser: (1 − t) image + t twin",
               "linear_map": "best linear map to the twins: I + t(W − I)"}


#: (β, λ) per method for flipping the people MiniCLIP's attribute, chosen by a small grid (β 0.02-1, λ 0.1-10,
#: 600-6000 steps) scored on 1600 `test` images of seed 0 — the first 1600 of the default run's test set, so a
#: held-out check is `--seed 1`. The paper's gender setting, β = λ = 1, barely moves this model:
#: its reference margins between the two attribute prompts are ~8 nats, and DPO saturates after a few nats of
#: improvement at β = 1, so a smaller β is needed to reverse them; IPO needs a strong λ to keep activity accuracy.
METHOD_PARAMS: dict[str, tuple[float, float]] = {"dpo": (0.1, 1.0), "ipo": (0.02, 10.0), "kto": (0.1, 0.3)}


@dataclass
class AttributeExperimentConfig:
    """Sizes and training settings of the attribute experiment (``quick`` shrinks them for smoke runs).

    ``method_params`` gives (β, λ) per method; a method missing from it uses the trainer's defaults.
    """

    methods: list[str] = field(default_factory=lambda: ["dpo", "ipo", "kto"])
    method_params: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(METHOD_PARAMS))
    n_pref: int = 2048
    n_reg: int = 2048
    n_test: int = 4096
    n_galleries: int = 16
    top_k: int = 10
    t_points: int = 21
    steps: int = 3000
    batch_size: int = 128
    lr: float = 0.01
    averaging: str = "none"
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods is empty")
        block = 2 * len(ACTIVITIES) * self.n_galleries
        if self.n_test < block or self.n_test % block:
            raise ValueError(f"n_test must be a positive multiple of 2 * {len(ACTIVITIES)} activities * n_galleries = "
                             f"{block}, so that every gallery is balanced; got {self.n_test}")
        if self.n_test // self.n_galleries < self.top_k:
            raise ValueError(f"galleries of {self.n_test // self.n_galleries} images are smaller than top_k={self.top_k}")
        if self.t_points < 2:
            raise ValueError(f"t_points must be >= 2, got {self.t_points}")
        if self.n_pref < 1 or self.n_reg < 1:
            raise ValueError(f"n_pref and n_reg must be >= 1, got {self.n_pref}, {self.n_reg}")

    @classmethod
    def quick(cls, seed: int = 0) -> "AttributeExperimentConfig":
        """A smoke-test size: DPO only, trained as in the full run, evaluated on fewer images and t values."""
        return cls(methods=["dpo"], n_test=1024, n_galleries=4, t_points=11, seed=seed)

    def train_config(self, method: str) -> tuple[PreferenceConfig, TrainConfig]:
        """Head-mode preference training for ``method`` with this experiment's (β, λ) for it."""
        beta, lam = self.method_params.get(method, (None, None))
        return (PreferenceConfig(method=method, trainable="head", beta=beta, lam=lam),
                TrainConfig(lr=self.lr, averaging=self.averaging, steps=self.steps, batch_size=self.batch_size,
                            seed=self.seed, device=self.device))
