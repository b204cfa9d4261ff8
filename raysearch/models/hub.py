"""Pretrained weights the way timm and segmentation_models_pytorch get them: through the Hugging Face Hub.

Online, a model created with pretrained weights downloads them into the Hugging Face cache (`HF_HOME`,
default ~/.cache/huggingface) once; with `HF_HUB_OFFLINE=1` only the cache is read. On a cluster,
`raysearch weights fetch MODEL ...` fills a cache on shared storage (cluster.yaml points `HF_HOME` there),
so that trials never download. Weights that are neither in the cache nor downloadable are a one-line
ConfigError saying where they were looked for.

The input normalisation of a pretrained model follows its weights' own mean and standard deviation
(`pretrained_statistics`): timm's pretrained configuration for timm models and `tu-` encoders, smp's
preprocessing parameters for smp encoders.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

from raysearch.errors import ConfigError

T = TypeVar("T")
FETCH_HINT = "run `raysearch weights fetch {name}` where the Hugging Face Hub is reachable (into the same HF_HOME)"


def hub_cache() -> str:
    """The Hugging Face cache folder this process reads and fills."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _unavailable(what: str, name: str, error: Exception) -> ConfigError:
    from huggingface_hub import constants

    reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"the download failed: {type(error).__name__}"
    return ConfigError(f"pretrained: weights for {what} are not in the Hugging Face cache {hub_cache()} and "
                       f"{reason}; {FETCH_HINT.format(name=name)}, or give 'pretrained' a local weights file")


def create_pretrained(create: Callable[[], T], *, pretrained: bool, what: str, name: str) -> T:
    """`create()`, which loads pretrained weights through the Hub when `pretrained`; weights neither cached nor
    downloadable become a one-line ConfigError about `what` (fetched with `raysearch weights fetch name`)."""
    if not pretrained:
        return create()
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return create()
    except (OSError, HfHubHTTPError) as error:
        raise _unavailable(what, name, error) from None


def is_smp_encoder(name: str) -> bool:
    """Whether `name` is one of smp's own encoders (not a `tu-` timm encoder)."""
    import segmentation_models_pytorch as smp

    return name in smp.encoders.get_encoder_names()


def smp_weights_tag(encoder: str) -> str:
    """The tag of an smp encoder's ImageNet weights (its first tag when it has no 'imagenet' one)."""
    import segmentation_models_pytorch as smp

    tags = list(smp.encoders.encoders[encoder]["pretrained_settings"])
    return "imagenet" if "imagenet" in tags else tags[0]


@functools.lru_cache(maxsize=64)
def pretrained_statistics(name: str, *, encoder: bool = False) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel (RGB) mean and standard deviation that the pretrained weights of `name` expect: a timm
    model, or with `encoder` a segmentation encoder: `tu-<timm model>` or one of smp's own (whose statistics
    come with its weights' files)."""
    import timm
    import timm.data

    if not encoder or name.startswith("tu-"):
        model = name.removeprefix("tu-").removeprefix("timm:")
        if not timm.is_model(model):
            raise ConfigError(f"pretrained: {name!r} is not a timm model or smp encoder with pretrained weights")
        pretrained_cfg = timm.models.get_pretrained_cfg(model)
        if pretrained_cfg is None:
            raise ConfigError(f"pretrained: timm has no pretrained weights for {model!r}")
        config = timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict())
        return tuple(map(float, config["mean"])), tuple(map(float, config["std"]))
    import segmentation_models_pytorch as smp

    params = create_pretrained(lambda: smp.encoders.get_preprocessing_params(name, smp_weights_tag(name)),
                               pretrained=True, what=f"encoder {name}", name=name)
    return tuple(map(float, params["mean"])), tuple(map(float, params["std"]))


def fetch_weights(models: Sequence[str] = (), encoders: Sequence[str] = ()) -> list[str]:
    """Download into the Hugging Face cache the pretrained weights of each timm model in `models` (the values of
    the `model` hyperparameter) and of each segmentation encoder in `encoders` (`encoder`: an smp encoder or
    `tu-<timm model>`); one line per name saying where they are."""
    import segmentation_models_pytorch as smp
    import timm

    def timm_weights(name: str) -> None:
        if not timm.is_model(name) or not timm.models.is_model_pretrained(name):
            raise ConfigError(f"weights fetch: {name!r} is not a timm model with pretrained weights")
        create_pretrained(lambda: timm.create_model(name, pretrained=True), pretrained=True, what=name, name=name)

    done = []
    for model in models:
        timm_weights(model.removeprefix("timm:"))
        done.append(f"{model}: in {hub_cache()}")
    for encoder in encoders:
        if encoder.startswith("tu-"):
            timm_weights(encoder.removeprefix("tu-"))
        elif is_smp_encoder(encoder):
            create_pretrained(lambda e=encoder: smp.encoders.get_encoder(e, weights=smp_weights_tag(e)),
                              pretrained=True, what=f"encoder {encoder}", name=f"--encoder {encoder}")
            pretrained_statistics(encoder, encoder=True)
        else:
            raise ConfigError(f"weights fetch: --encoder {encoder!r} is neither an smp encoder nor tu-<timm model>")
        done.append(f"encoder {encoder}: in {hub_cache()}")
    return done
