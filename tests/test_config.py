"""Config loading: every bad file fails at load time, naming the file, the dotted field, the value and the expectation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Optional

import pytest

from vlalign.config import ConfigError, config_from_dict, config_to_dict, load_config
from vlalign.data.mini_world import WorldConfig
from vlalign.data.typographic import WordStyle
from vlalign.pipelines.pretrain import ModelShape, PretrainConfig


@dataclass
class Inner:
    rate: float
    mode: Literal["fast", "slow"] = "fast"

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0, got {self.rate}")


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=lambda: Inner(1.0))
    maybe: Optional[Inner] = None
    count: int | None = None
    sizes: list[int] = field(default_factory=list)
    pair: tuple[int, float] = (1, 2.0)
    widths: tuple[int, ...] = (8,)
    flag: bool = False


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str, cls: type = PretrainConfig) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, cls)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message, message
    return message


def test_shipped_pretrain_config_loads():
    config = load_config(Path(__file__).parents[1] / "configs" / "pretrain_mini.yaml", PretrainConfig)
    assert isinstance(config.world, WorldConfig) and isinstance(config.world.word_style, WordStyle)
    assert isinstance(config.model, ModelShape)
    assert config.model.stem_channels == [32, 64, 128]
    assert config.world.word_style.max_size == 0.38
    assert config.init == "mini-v1" and config.world.other_word_prob == 0.8 and config.world.letters_prob == 0.5
    first = load_config(Path(__file__).parents[1] / "configs" / "pretrain_mini_v1.yaml", PretrainConfig)
    assert first.init is None and first.world.other_word_prob == 0 and first.train.steps == 9000
    assert config.train.lr == 0.001 and isinstance(config.train.lr, float)


def test_full_config_round_trips_through_dict(tmp_path):
    config = config_from_dict(PretrainConfig, {"train": {"steps": 7}, "world": {"image_size": 32, "max_radius": 14.0}})
    assert config_from_dict(PretrainConfig, config_to_dict(config)) == config


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, ""), PretrainConfig) == PretrainConfig()


def test_values_are_converted_to_their_hints(tmp_path):
    path = write(tmp_path, "train: {lr: 1e-3, warmup_fraction: 0}\nworld: {word_style: {min_size: 0.1, max_size: 0.2}}\n")
    config = load_config(path, PretrainConfig)
    # YAML 1.1 reads "1e-3" as a string; a float field accepts numeric strings.
    assert config.train.lr == pytest.approx(1e-3) and isinstance(config.train.lr, float)
    assert isinstance(config.train.warmup_fraction, float)
    assert config.world.word_style == WordStyle(min_size=0.1, max_size=0.2)


def test_nested_list_tuple_optional_and_literal(tmp_path):
    path = write(tmp_path, "inner: {rate: 2, mode: slow}\nmaybe: {rate: 0.5}\ncount: 3\nsizes: [1, 2]\n"
                           "pair: [4, 5]\nwidths: [1, 2, 3]\nflag: true\n")
    config = load_config(path, Outer)
    assert config.inner == Inner(2.0, "slow")
    assert config.maybe == Inner(0.5)
    assert config.count == 3 and config.sizes == [1, 2] and config.flag is True
    assert config.pair == (4, 5.0) and isinstance(config.pair[1], float)
    assert config.widths == (1, 2, 3) and isinstance(config.widths, tuple)
    assert load_config(write(tmp_path, "maybe: null\ncount: null\n"), Outer).maybe is None


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(path, PretrainConfig)


def test_bad_yaml_is_one_line_with_position(tmp_path):
    message = load_error(tmp_path, "seed: 1\nn_images: [1, 2\nworkers: 3\n")
    assert "not valid YAML" in message and "line 3" in message


def test_top_level_must_be_a_mapping(tmp_path):
    message = load_error(tmp_path, "- 1\n- 2\n")
    assert "expected a mapping at the top level, got list" in message


def test_unknown_top_level_key(tmp_path):
    message = load_error(tmp_path, "n_imagez: 10\n")
    assert "unknown key(s) n_imagez for PretrainConfig" in message
    assert "n_images" in message  # the expected keys are listed


def test_unknown_nested_key_has_dotted_path(tmp_path):
    message = load_error(tmp_path, "world:\n  word_style: {min_size: 0.1, colour: red}\n")
    assert "world.word_style.colour" in message and "WordStyle" in message


@pytest.mark.parametrize("text, path, value, expected", [
    ("train: {steps: ten}\n", "train.steps", "'ten'", "expected an integer"),
    ("train: {steps: 2.5}\n", "train.steps", "2.5", "expected an integer"),
    ("n_images: true\n", "n_images", "True", "expected an integer"),
    ("train: {lr: fast}\n", "train.lr", "'fast'", "expected float or null"),
    ("train: {warmup_fraction: false}\n", "train.warmup_fraction", "False", "expected a number"),
    ("train: {device: 3}\n", "train.device", "3", "expected a string"),
    ("model: {vision_width: wide}\n", "model.vision_width", "'wide'", "expected an integer"),
    ("model: {stem_channels: 8}\n", "model.stem_channels", "8", "expected a list"),
    ("model: {stem_channels: [8, x]}\n", "model.stem_channels[1]", "'x'", "expected an integer"),
    ("world: 5\n", "world", "int", "expected a mapping for WorldConfig"),
    ("world: {word_style: {min_size: big}}\n", "world.word_style.min_size", "'big'", "expected a number"),
])
def test_wrong_types_name_path_value_and_expectation(tmp_path, text, path, value, expected):
    message = load_error(tmp_path, text)
    assert f": {path}: " in message, message
    assert value in message and expected in message, message


@pytest.mark.parametrize("text, path, value, expected", [
    ("inner: {rate: 1, mode: medium}\n", "inner.mode", "'medium'", "expected one of ['fast', 'slow']"),
    ("maybe: {rate: oops}\n", "maybe.rate", "'oops'", "expected a number"),  # the inner error, not "Inner or null"
    ("count: many\n", "count", "'many'", "expected int or null"),
    ("pair: [1]\n", "pair", "[1]", "expected 2 items"),
    ("pair: [1, x]\n", "pair[1]", "'x'", "expected a number"),
    ("widths: [1, 2.5]\n", "widths[1]", "2.5", "expected an integer"),
    ("flag: yes please\n", "flag", "'yes please'", "expected true/false"),
])
def test_literal_optional_tuple_errors(tmp_path, text, path, value, expected):
    message = load_error(tmp_path, text, Outer)
    assert f": {path}: " in message, message
    assert value in message and expected in message, message


def test_unknown_key_inside_optional_dataclass(tmp_path):
    message = load_error(tmp_path, "maybe: {rate: 1, speed: 2}\n", Outer)
    assert "maybe.speed" in message


def test_missing_required_nested_key_names_its_path(tmp_path):
    message = load_error(tmp_path, "maybe: {mode: slow}\n", Outer)  # no default section to fill it in
    assert "missing required key(s) maybe.rate for Inner" in message
    # A section with a default takes the fields it does not give from that default.
    assert load_config(write(tmp_path, "inner: {mode: slow}\n"), Outer).inner == Inner(1.0, "slow")


def test_post_init_errors_name_the_section_and_value(tmp_path):
    message = load_error(tmp_path, "world: {image_size: 8}\n")
    assert "world: image_size must be >= 16, got 8" in message
    message = load_error(tmp_path, "inner: {rate: -2}\n", Outer)
    assert "inner: rate must be >= 0, got -2.0" in message
    message = load_error(tmp_path, "train: {steps: 0}\n")
    assert "train: steps must be a finite number in [1, inf), got 0" in message
    message = load_error(tmp_path, "train: {batch_size: 64}\nn_images: 10\n")
    assert "train.batch_size 64 exceeds n_images 10" in message


def test_config_from_dict_names_its_source():
    with pytest.raises(ConfigError, match=r"^my-source: unknown key\(s\) bogus"):
        config_from_dict(PretrainConfig, {"bogus": 1}, "my-source")


def test_field_help_lists_every_field_with_default_and_help():
    from vlalign.config import field_help
    from vlalign.training.train_config import TrainConfig

    rows = {name: (type_name, default, text) for name, type_name, default, text in field_help(TrainConfig)}
    assert rows["steps"] == ("int", 300, "optimizer steps")
    assert rows["lr"][1] is None and "method's default" in rows["lr"][2]
    assert rows["extra_averaging"][1] == []
    assert all(text for _, _, text in rows.values()), "every loop setting has a help text"


def test_check_range_names_the_allowed_range():
    from vlalign.config import check_range

    with pytest.raises(ValueError, match=r"^lr must be a finite number in \(0, inf\), got 0$"):
        check_range("lr", 0, 0, low_open=True)
    with pytest.raises(ValueError, match=r"^p must be a finite number in \[0, 1\), got 1$"):
        check_range("p", 1, 0, 1, high_open=True)
    with pytest.raises(ValueError, match="got inf"):
        check_range("x", float("inf"))
    check_range("p", 0.5, 0, 1)


# --- duplicate keys --------------------------------------------------------------------------------------------

def test_a_duplicate_top_level_key_names_the_key_and_both_lines(tmp_path):
    path = write(tmp_path, "name: a\nsteps: 3\ncount: 2\nname: b\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, Outer)
    message = str(info.value)
    assert message == f"{path}: duplicate key 'name' at line 4 (first given at line 1); remove one of them"


def test_a_duplicate_nested_key_is_caught_too(tmp_path):
    path = write(tmp_path, "inner:\n  rate: 1.0\n  mode: fast\n  rate: 2.0\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'rate' at line 4 \(first given at line 2\)"):
        load_config(path, Outer)


def test_the_same_key_in_different_mappings_and_merges_are_fine(tmp_path):
    path = write(tmp_path, "inner:\n  rate: 1.0\nmaybe:\n  rate: 2.0\n")
    config = load_config(path, Outer)
    assert config.inner.rate == 1.0 and config.maybe.rate == 2.0
    # A YAML merge ("<<") then an override is how anchors are meant to be used, not a duplicate.
    from vlalign.config import read_yaml

    merged = write(tmp_path, "base: &b {rate: 1.0, mode: slow}\ninner:\n  <<: *b\n  rate: 3.0\n", "merge.yaml")
    assert read_yaml(merged)["inner"] == {"rate": 3.0, "mode": "slow"}


def test_a_duplicate_key_in_a_list_item_mapping(tmp_path):
    from vlalign.config import read_yaml

    path = write(tmp_path, "items:\n  - a: 1\n    a: 2\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'a' at line 3 \(first given at line 2\)"):
        read_yaml(path)


def test_a_section_given_in_part_keeps_the_field_defaults_of_its_run():
    from vlalign.pipelines.preference import PreferenceRun
    from vlalign.pipelines.robust import RobustRun

    run = config_from_dict(PreferenceRun, {"method": "dpo", "train": {"steps": 3}})
    assert (run.train.steps, run.train.averaging) == (3, "bma")  # the preference run's default, not TrainConfig's
    robust = config_from_dict(RobustRun, {"method": "fare", "train": {"steps": 3}})
    assert (robust.train.steps, robust.train.checkpoint_every) == (3, 50)


@dataclass
class _Mode:
    mode: str = "a"
    extra: bool | None = None  # resolved: on for mode a, off otherwise
    size: int = 1
    RESOLVED_IN_POST_INIT: ClassVar[tuple[str, ...]] = ("extra",)

    def __post_init__(self) -> None:
        self.extra = self.mode == "a" if self.extra is None else self.extra


@dataclass
class _RunWithMode:
    section: _Mode = field(default_factory=lambda: _Mode(size=7))


def test_a_section_given_in_part_resolves_its_post_init_fields_again():
    assert config_from_dict(_RunWithMode, {}).section == _Mode(mode="a", extra=True, size=7)
    # the run's default size stays; extra follows the given mode instead of the default instance's resolved value
    assert config_from_dict(_RunWithMode, {"section": {"mode": "b"}}).section == _Mode(mode="b", extra=False, size=7)
    assert config_from_dict(_RunWithMode, {"section": {"mode": "b", "extra": True}}).section.extra is True


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs" / "pretrain_mini_trials").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_pretraining_trial_configs_load(path):
    config = load_config(path, PretrainConfig)
    assert config.train.batch_size == 128 and config.seed == 0
    assert (config.init == "mini-v1") == path.name.startswith("continue")


def test_a_config_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfemethod: dpo\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not UTF-8 text \(invalid start byte at byte 0\)"):
        load_config(path, PretrainConfig)


def test_regularization_is_refused_where_it_would_be_ignored():
    from vlalign.pipelines.preference import PreferenceRun

    with pytest.raises(ConfigError, match="regularization is read only when path is a preference JSONL"):
        config_from_dict(PreferenceRun, {"method": "dpo", "data": {"path": "folder", "regularization": "clean"}})
    run = config_from_dict(PreferenceRun, {"method": "dpo", "data": {"path": "triplets.JSONL", "regularization": "c"}})
    assert run.data.is_jsonl
