"""advreid: generative and adversarial learning for object re-identification."""

__version__ = "0.1.0"
