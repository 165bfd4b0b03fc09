"""vlalign: align and harden vision-language models with preference optimization and adversarial training."""

__version__ = "0.1.0"
