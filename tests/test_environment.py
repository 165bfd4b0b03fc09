"""The environment `make` creates: transformers and peft import, and no broken torchvision sits beside torch."""

import importlib
import importlib.util


def test_torchvision_absent_or_working():
    # A PyPI torchvision beside the CPU torch wheel imports with "operator torchvision::nms does not exist",
    # and then transformers and peft fail too. vlalign depends on neither; if one is installed it must work.
    if importlib.util.find_spec("torchvision") is None:
        return
    torchvision = importlib.import_module("torchvision")
    assert torchvision.ops.nms is not None


def test_transformers_clip_and_peft_import():
    from peft import LoraConfig
    from transformers import CLIPModel

    assert CLIPModel.__name__ == "CLIPModel"
    assert LoraConfig(r=4).r == 4
