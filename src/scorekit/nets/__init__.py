"""Networks ``net(x, t)`` for score models, each rebuilt from a JSON-able config.

``build_net({"name": "mlp", "dim": 2, ...})`` returns the network; ``net.config()``
gives back the dict, so a checkpoint stores the config and rebuilds the module.
"""

from __future__ import annotations

from torch import nn

from .embedding import NoiseEmbedding
from .energy import EnergyMLP
from .mlp import MLP
from .unet import UNet

__all__ = ["NETS", "EnergyMLP", "MLP", "NoiseEmbedding", "UNet", "build_net"]

NETS = {"mlp": MLP, "unet": UNet, "energy_mlp": EnergyMLP}


def build_net(config: dict) -> nn.Module:
    """Build a network from ``{"name": one of NETS, **kwargs}`` (as ``net.config()`` returns).

    Example:
        >>> net = build_net({"name": "mlp", "dim": 2, "hidden": 16, "depth": 1})
        >>> build_net(net.config()).config() == net.config()
        True
    """
    name = config.get("name") if isinstance(config, dict) else None
    if not isinstance(name, str) or name not in NETS:
        raise ValueError(f"net config must be a dict with 'name' in {sorted(NETS)}, got {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "name"}
    try:
        return NETS[config["name"]](**kwargs)
    except TypeError as e:
        raise ValueError(f"net config {config!r} has unexpected fields: {e}") from None
    except (RuntimeError, OverflowError) as e:  # sizes torch cannot allocate or index
        raise ValueError(f"net config {config!r} cannot be built: {e}") from None
