"""Write the key-and-shape fixtures of torchvision's and timm's ResNet, VGG and DenseNet.

Run once, in a separate environment that has torchvision and timm (never a convzoo
dependency); see README.md beside this file. No weights are downloaded: every model is
built with random initialisation and only its state_dict's names and shapes are kept.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import timm
import torch
import torchvision

NAMES = [
    *(f"resnet{d}" for d in (18, 34, 50, 101, 152)),
    *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
    *(f"densenet{d}" for d in (121, 161, 169, 201)),
]


def keys_and_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        for name in NAMES:
            tv = getattr(torchvision.models, name)(weights=None)
            tm = timm.create_model(name, pretrained=False)
            for source, model in (("torchvision", tv), ("timm", tm)):
                data = {
                    "source": source,
                    "model": name,
                    "versions": {
                        "torch": torch.__version__,
                        "torchvision": torchvision.__version__,
                        "timm": timm.__version__,
                    },
                    "state_dict": keys_and_shapes(model),
                }
                path = out / f"{source}-{name}.json"
                path.write_text(json.dumps(data, indent=0) + "\n")
                print(path, len(data["state_dict"]), "tensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
