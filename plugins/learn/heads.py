"""Probe heads: small networks that read the policy's hidden states and say how likely a
path (so far) is to reach a right answer.

- ``linear``: a logistic regression on the pooled states of the path so far (standardized
  first). SWIFT's shape.
- ``encoder``: ReProbe's shape: the path's token states projected to a small width, a
  marker added to the tokens of the step being scored, one transformer encoder layer,
  mean pooling and an MLP. Well under 10M parameters (about 0.3M at width 128).

A head is saved as ``NAME.safetensors`` (its weights) beside ``NAME.json`` (its card: the
policy it belongs to and that policy's weights' checksum, the feature spec, the
calibration, the training data and its hash, the command that trained it, the held-out
metrics, and the weights' own checksum). :func:`load_head` refuses, in one line naming
both sides, a head used with another policy or a file that does not match its card.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from reason.errors import UsageError

from .features import FeatureSpec

CARD_FORMAT = 1


def build_head(kind: str, features: int, config: dict[str, Any] | None = None) -> Any:
    """A fresh head of ``kind`` over ``features``-wide inputs (per token for ``encoder``)."""
    import torch
    from torch import nn

    config = dict(config or {})
    if kind == "linear":

        class Linear(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.register_buffer("mean", torch.zeros(features))
                self.register_buffer("scale", torch.ones(features))
                self.out = nn.Linear(features, 1)

            def forward(self, x: Any) -> Any:  # [rows, features] -> logits [rows]
                return self.out((x - self.mean) / self.scale).squeeze(-1)

        return Linear()
    if kind == "encoder":
        width = int(config.get("width", 128))
        heads = int(config.get("heads", 4))

        class Encoder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.register_buffer("mean", torch.zeros(features))
                self.register_buffer("scale", torch.ones(features))
                self.project = nn.Linear(features, width)
                self.marker = nn.Embedding(2, width)
                self.encoder = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.1, batch_first=True)
                self.out = nn.Sequential(nn.Linear(width, width // 2), nn.GELU(), nn.Linear(width // 2, 1))

            def forward(self, x: Any, marker: Any, mask: Any) -> Any:
                # x [rows, tokens, features], marker [rows, tokens] 0/1, mask [rows, tokens] True = padding
                h = self.project((x - self.mean) / self.scale) + self.marker(marker)
                h = self.encoder(h, src_key_padding_mask=mask)
                keep = (~mask).unsqueeze(-1).float()
                pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1)
                return self.out(pooled).squeeze(-1)

        return Encoder()
    raise UsageError(f"unknown probe head kind {kind!r}: linear or encoder")


def parameter_count(head: Any) -> int:
    return sum(p.numel() for p in head.parameters())


def head_files(path: Path | str) -> tuple[Path, Path]:
    """The card and weights of the head named by ``path`` (its ``.json``, its ``.safetensors``
    or the bare name). Only those two suffixes are stripped: a name such as
    ``qwen2.5-coder-0.5b`` keeps its dots."""
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".json"), path.with_name(path.name + ".safetensors")


def save_head(head: Any, card: dict[str, Any], path: Path) -> Path:
    """Write ``path.safetensors`` and ``path.json`` (the card, with the weights' checksum);
    each through a temporary file renamed into place, card last."""
    from safetensors.torch import save_file

    card_path, weights = head_files(path)
    card_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(weights.name + ".tmp")
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp))
    tmp.chmod(0o644)  # safetensors writes 0600; a head is shipped and shared, not a secret
    tmp.replace(weights)
    card = {**card, "format": CARD_FORMAT, "weights_sha256": _sha256(weights)}
    tmp_card = card_path.with_name(card_path.name + ".tmp")
    tmp_card.write_text(json.dumps(card, indent=2) + "\n")
    tmp_card.replace(card_path)
    return card_path


def read_card(path: Path) -> dict[str, Any]:
    """The card of the head at ``path`` (``.json``, ``.safetensors`` or the bare stem)."""
    card_path, _ = head_files(path)
    try:
        card = json.loads(card_path.read_text())
    except FileNotFoundError:
        raise UsageError(f"probe head {card_path} not found: pass a head trained by `reason learn train`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"probe head card {card_path} is damaged ({exc}); retrain it or reinstall the package") from None
    if card.get("format") != CARD_FORMAT:
        raise UsageError(f"probe head card {card_path} has format {card.get('format')!r}, this version reads {CARD_FORMAT}")
    return card


def load_head(path: Path, policy_sha256: str, policy_name: str) -> tuple[Any, dict[str, Any]]:
    """The head at ``path`` and its card, checked against the policy it will read.

    Raises :class:`UsageError` when the head belongs to another policy (its hidden states
    mean nothing to it) or when the weights do not match their card (a damaged file).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    card = read_card(path)
    card_path, weights = head_files(path)
    policy = card["policy"]
    if policy["sha256"] != policy_sha256:
        raise UsageError(
            f"probe head {card_path} was trained for {policy['name']} "
            f"(sha256 {policy['sha256'][:12]}), not the policy {policy_name} (sha256 {policy_sha256[:12]}): "
            "train a head for this model with `reason learn`"
        )
    if not weights.is_file() or _sha256(weights) != card["weights_sha256"]:
        raise UsageError(
            f"probe head {weights} is missing or damaged (its checksum does not match {card_path.name}): "
            "retrain it or reinstall the package"
        )
    head = build_head(card["kind"], int(card["input_features"]), card.get("config"))
    try:
        head.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError) as exc:
        raise UsageError(f"probe head {weights} does not load ({exc}); retrain it") from None
    return head.eval(), card


def spec_of(card: dict[str, Any]) -> FeatureSpec:
    features = card["features"]
    return FeatureSpec(layers=tuple(features["layers"]), pooling=features["pooling"])


def calibrated(logit: float, calibration: dict[str, float]) -> float:
    """Platt scaling: sigmoid(a * logit + b), fitted on held-out problems."""
    z = calibration.get("a", 1.0) * logit + calibration.get("b", 0.0)
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
