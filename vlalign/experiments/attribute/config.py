"""Settings and targets of the attribute experiment."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlalign.data.people import ACTIVITIES
from vlalign.training.methods.preference import PreferenceConfig
from vlalign.training.train_config import TrainConfig

#: Targets of the issue (issue 13's restated goal), checked on every seed: flipped rate at t = 1 at least 0.88 (the
#: ceiling is ~0.926: figures whose torso is hidden cannot flip); the neutralized retrieval parity gap at most
#: this fraction of the pretrained model's gap; activity accuracy within 0.02 of the pretrained model at every t.
TARGETS = {"flipped_rate_min": 0.88, "parity_gap_max_fraction": 0.5, "activity_drop_max": 0.02}

#: The neutralized parity gap is the mean of the gap over t* ± this half width (the gap is steep near t*, so a
#: value read at t* alone moves far when float noise moves t* a little).
NEUTRAL_HALF_WIDTH = 0.05

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
#: Not re-chosen for issue 13's targets: seeds 1 and 2 of `--seeds 0,1,2` are draws no choice was made on. Chosen
#: with 2048 training images (the default of then); DPO's and KTO's not re-chosen for N_TRAIN_IMAGES. IPO's was
#: (2026-12-08), by a rule written down before the runs: over β ∈ {0.01, 0.02, 0.05} × λ ∈ {3, 10, 30} on validation
#: seeds 10-14 with 8192 images, the cell meeting every attribute target on the most draws, if more than (0.02, 10)
#: did: (0.02, 30) met them on 2 of 5, (0.02, 10) and every other cell on none (README, "Disentangling an attribute").
METHOD_PARAMS: dict[str, tuple[float, float]] = {"dpo": (0.1, 1.0), "ipo": (0.02, 30.0), "kto": (0.1, 0.3)}

#: Preference and regularization images per run. 8192 rather than the earlier 2048: by a rule written down before
#: the runs, the size whose DPO head met every target on more of 15 validation draws (seeds 10-14, three weight-noise
#: draws each) won: 8192 met them on 12, 2048 on 9 (README, "Disentangling an attribute").
N_TRAIN_IMAGES = 8192


@dataclass
class AttributeExperimentConfig:
    """Sizes and training settings of the attribute experiment (``quick`` shrinks them for smoke runs).

    ``method_params`` gives (β, λ) per method; a method missing from it uses the trainer's defaults. The Σ^t
    sweep samples ``t_points`` values of t evenly over [0, 1] (step 0.01 by default); ``neutral_half_width`` is
    the half width of the window around t* over which the neutralized parity gap is averaged.

    ``regularize_on`` picks the regularization images: ``rest`` (default) the ``n_reg`` images drawn after the
    preference images, ``same`` the ``n_pref`` preference images themselves (the paper's §4.2; ``n_reg`` is then
    not used). The preference images are the same either way.

    ``averaging`` and ``ema_decay`` are the loop's weight averaging of the trained head (none, bma or ema; see
    :class:`vlalign.training.train_config.TrainConfig`).

    ``seed`` draws the training images, the test images and the training loop's batches; ``loop_seed`` and
    ``test_seed`` (None: ``seed``) set the last two apart, to tell which of the three a figure's spread comes from.

    ``weight_noise`` > 0 multiplies every image-tower weight by (1 + weight_noise · N(0, 1)) (draws seeded by
    ``weight_noise_seed``) before anything is computed: about what another CPU's rounding does to the features
    (1e-6), to measure how far one seed's figures move between machines without another machine.
    """

    methods: list[str] = field(default_factory=lambda: ["dpo", "ipo", "kto"])
    method_params: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(METHOD_PARAMS))
    n_pref: int = N_TRAIN_IMAGES
    n_reg: int = N_TRAIN_IMAGES
    regularize_on: str = "rest"
    n_test: int = 4096
    n_galleries: int = 16
    top_k: int = 10
    t_points: int = 101
    neutral_half_width: float = NEUTRAL_HALF_WIDTH
    steps: int = 3000
    batch_size: int = 128
    lr: float = 0.01
    averaging: str = "none"
    ema_decay: float = 0.99
    seed: int = 0
    loop_seed: int | None = None
    test_seed: int | None = None
    device: str = "cpu"
    weight_noise: float = 0.0
    weight_noise_seed: int = 0

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
        if not 0 <= self.neutral_half_width <= 0.5:
            raise ValueError(f"neutral_half_width must lie in [0, 0.5], got {self.neutral_half_width}")
        if not 0 <= self.weight_noise < 0.1:
            raise ValueError(f"weight_noise must lie in [0, 0.1), got {self.weight_noise}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.regularize_on not in ("rest", "same"):
            raise ValueError(f"regularize_on must be 'rest' or 'same', got {self.regularize_on!r}")
        if self.n_pref < 1 or self.n_reg < 1:
            raise ValueError(f"n_pref and n_reg must be >= 1, got {self.n_pref}, {self.n_reg}")

    @classmethod
    def quick(cls, seed: int = 0) -> "AttributeExperimentConfig":
        """A smoke-test size: DPO only, trained as in the full run, evaluated on fewer images and t values."""
        return cls(methods=["dpo"], n_test=1024, n_galleries=4, t_points=21, seed=seed)

    def train_config(self, method: str) -> tuple[PreferenceConfig, TrainConfig]:
        """Head-mode preference training for ``method`` with this experiment's (β, λ) for it."""
        beta, lam = self.method_params.get(method, (None, None))
        return (PreferenceConfig(method=method, trainable="head", beta=beta, lam=lam),
                TrainConfig(lr=self.lr, averaging=self.averaging, steps=self.steps, batch_size=self.batch_size,
                            ema_decay=self.ema_decay, seed=self.seed if self.loop_seed is None else self.loop_seed,
                            device=self.device))

    @property
    def test_draw(self) -> int:
        """The seed of the test images (and of their counterfactual twins)."""
        return self.seed if self.test_seed is None else self.test_seed
