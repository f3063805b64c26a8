"""OmegaConf resolvers used by conf/ (registered on import; idempotent)."""

from omegaconf import OmegaConf

if not OmegaConf.has_resolver("mul"):
    # ${mul:a,b}: e.g. total optimizer steps = max_epochs * epoch_batches
    OmegaConf.register_new_resolver("mul", lambda a, b: int(a) * int(b))
