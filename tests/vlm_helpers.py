"""Tiny generative VLMs for tests, built from configs (nothing downloaded)."""

from __future__ import annotations

import torch

from vlalign.data.vqa import vlm_vocabulary
from vlalign.models.mini_clip import MiniCLIPConfig
from vlalign.models.mini_vlm import MiniVLM, MiniVLMConfig

TINY_TOWER = dict(image_size=32, stem_channels=(8, 16, 32), vision_width=32, vision_layers=1, vision_heads=2,
                  text_width=32, text_layers=1, text_heads=2, embed_dim=16)


def tiny_mini_vlm(seed: int = 0, hidden_size: int = 32, layers: int = 2, token_merge: int = 2,
                  init_std: float = 0.2) -> MiniVLM:
    """A random MiniVLM on a 32-pixel, one-layer tower (4x4 patches). ``init_std`` spreads the decoder's logits so
    that greedy choices are never near-ties (float noise cannot flip them)."""
    torch.manual_seed(seed)
    config = MiniVLMConfig(vision=MiniCLIPConfig(**TINY_TOWER), vocab=list(vlm_vocabulary()), hidden_size=hidden_size,
                           layers=layers, heads=2, intermediate_size=2 * hidden_size, token_merge=token_merge,
                           max_positions=64)
    model = MiniVLM(config)
    with torch.no_grad():
        for name, param in model.language_model.named_parameters():
            if param.dim() == 2:
                param.normal_(0, init_std)
    return model.eval()


def images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    """Random float images in [0, 1]."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


LLAVA_WORDS = ("USER", ":", "ASSISTANT", "what", "shape", "is", "this", "?", "circle", "red", "a", "the", "describe",
               "image", ".", "how", "many", "shapes", "are", "there", "3", "star", "blue", "in", "top", "left")


def tiny_clip_vision_config(hidden_size: int = 32, layers: int = 3):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
                            num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16)


def tiny_llava_folder(folder, seed: int = 0, vision_feature_layer: int = -2, init_std: float = 0.2):
    """Save a random LLaVA (tiny CLIP vision tower, tiny Llama) with a real word-level tokenizer whose ``<image>``
    is an added special token, and its LlavaProcessor, into ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

    from vlalign.models.hf_clip import _image_processor_class

    vocab = {w: i for i, w in enumerate(("<unk>", "<s>", "</s>", "<pad>", *LLAVA_WORDS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                       bos_token_id=1, eos_token_id=2, pad_token_id=3)
    config = LlavaConfig(vision_config=tiny_clip_vision_config(), text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=vision_feature_layer, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "vision" not in name:
                param.normal_(0, init_std)
    processor = LlavaProcessor(image_processor=_image_processor_class()(size={"shortest_edge": 32},
                                                                        crop_size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1)
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def count_calls(monkeypatch, cls: type, name: str, counts: dict, key: str) -> None:
    """Count calls of ``cls.name`` (a method) into ``counts[key]``, still calling it."""
    real = getattr(cls, name)

    def counted(self, *args, **kwargs):
        counts[key] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)


def with_moved_vision(method, seed: int = 1):
    """A shallow copy of a prepared AdPO method whose model is a copy with the vision encoder moved by 0.05-std
    noise, as after some training steps (its pairs and reference parameters are the original's)."""
    import copy

    moved = copy.copy(method)
    moved.model = copy.deepcopy(method.model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in moved.model.vision_parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return moved


def tiny_adpo(data, precompute_batch_size: int, loss: str = "dpo", seed: int = 0, eps: str = "48/255", **config):
    """AdPO on :func:`tiny_mini_vlm` (PGD-3, answers of 4 tokens at most; a large ε so that the random model's answers
    change under attack), without progress bars."""
    from vlalign.training.methods.adpo import AdPO, AdPOConfig

    method = AdPO(tiny_mini_vlm(seed=seed), data, AdPOConfig(loss=loss, eps=eps, attack_steps=3, max_new_tokens=4,
                                                             **config), precompute_batch_size=precompute_batch_size)
    method.progress = False
    return method


def prepared_with_reference(method):
    """``(method, frozen copy of its model before any update)`` with the method's pairs computed."""
    from vlalign.training.methods.adpo import frozen_copy

    reference = frozen_copy(method.model)
    method.prepare(torch.device("cpu"))
    return method, reference
