"""A variant net on disk (:mod:`variant_net`): its weights file, the JSON record beside it, and the
checks that a net kept in a cache folder belongs to the weights and inverse decoder in use.

A net is two files: ``variant_net.safetensors`` (the weights; the variant order and architecture
in its metadata) and ``variant_net.json`` (the training record: config, losses, and for nets
trained since they were recorded the sha256 of the weights file's bytes, the digest of the
family's weights, :func:`models.zoo.weights_digest`, and of the inverse decoder whose maps it was
trained on, :func:`inv_decoder.inverse_decoder_digest`). The record is written first and names the
weights' bytes, so a training killed between the two writes leaves a pair that
:func:`read_record` refuses, never a record that describes another net (whose generation counts
would put :func:`variant_net.heldout_maps` inside its training data).

A net trained on first use under a cache folder (:func:`check_made_from`) is reused only for the
weights and inverse decoder it was trained with; the shipped ones (``demo_zoo/variant_nets/``) are
the zoo's own and are not checked.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from atomic import atomic_path
from inv_decoder import inverse_decoder_digest
from models.adapter import FamilyAdapter
from models.checkpoints import CheckpointError
from models.files import file_sha256
from models.variant_net import AnyVariantNet, VariantNet, VariantNetEnsemble

__all__ = ["METADATA_KEY", "WEIGHTS_FILE", "record_path", "save_variant_net", "load_variant_net", "read_record",
           "provenance_record", "check_made_from"]

WEIGHTS_FILE = "variant_net.safetensors"
METADATA_KEY = "variant_net"  # the file's metadata: {"variants": [...], "shape": {...}} as JSON


def record_path(net_path: Path | str) -> Path:
    """The JSON record beside the net at ``net_path``."""
    return Path(net_path).with_suffix(".json")


def save_variant_net(net: AnyVariantNet, variants: Sequence[str], path: Path | str, record: Optional[dict] = None) -> Path:
    """Weights (``.safetensors``, the variant order and architecture in its metadata) and a JSON record
    beside them that names the weights' sha256; the record is written first (see the module docstring)."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(variants) != net.shape["num_variants"]:
        raise ValueError(f"{len(variants)} variant names for a net of {net.shape['num_variants']} outputs")
    # one metadata key: safetensors writes several in a random order, and the file's bytes must not vary
    meta = {METADATA_KEY: json.dumps({"variants": list(variants), "shape": net.shape}, sort_keys=True)}
    weights = save({k: v.detach().contiguous() for k, v in net.state_dict().items()}, metadata=meta)
    described = dict(record or {}, variants=list(variants), shape=net.shape, weights_sha256=hashlib.sha256(weights).hexdigest())
    with atomic_path(record_path(path)) as tmp:
        Path(tmp).write_text(json.dumps(described, indent=2))
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(weights)
    return path


def load_variant_net(path: Path | str, variants: Optional[Sequence[str]] = None) -> Tuple[AnyVariantNet, List[str]]:
    """The net and its variant names, in output order; with ``variants`` (the family's, e.g. an
    adapter's ``variant_names``), a :class:`CheckpointError` unless the net names those, in that order."""
    from safetensors import safe_open

    from models.checkpoints import load_strict, read_state_dict

    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata() or {}
    if METADATA_KEY not in meta:
        raise ValueError(f"{path}: not a variant net (no variant names in its metadata); train one with `python variant_net.py`")
    described = json.loads(meta[METADATA_KEY])
    if variants is not None and list(described["variants"]) != list(variants):
        raise CheckpointError(f"{path} names the variants {', '.join(described['variants'])}, not this family's "
                              f"{', '.join(variants)}: it was trained for other weights; remove it or give another --cache-dir "
                              "(variant_net.py: another --out)")
    shape = described["shape"]

    def member() -> VariantNet:
        return VariantNet(shape["channels"], shape["size"], shape["num_variants"], shape["width"], shape["hidden"], shape["dropout"],
                          shape.get("num_classes", 1), shape.get("input_map", "f"))

    net = VariantNetEnsemble([member() for _ in range(shape["members"])]) if "members" in shape else member()
    load_strict(net, read_state_dict(Path(path)), str(path))
    return net.eval(), list(described["variants"])


def read_record(net_path: Path | str) -> dict:
    """The training record beside the net at ``net_path``: a ``FileNotFoundError`` without one, a
    :class:`CheckpointError` when it names other weights bytes than the file's (a training killed
    between writing the two). Records older than ``weights_sha256`` (the shipped nets') are taken as they are."""
    path = record_path(net_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training record beside the net, so its held-out generations are unknown")
    record = json.loads(path.read_text())
    if "weights_sha256" in record and Path(net_path).is_file():
        if file_sha256(net_path) != record["weights_sha256"]:
            raise CheckpointError(f"{path} describes another net than {net_path} (a training stopped between writing the two?): "
                                  f"remove both and train it again")
    return record


def provenance_record(inverse: FamilyAdapter) -> dict:
    """What a net trained on ``inverse``'s maps records of where they came from: the family's
    weights (:attr:`FamilyAdapter.weights_digest`) and its inverse decoder (:func:`inv_decoder.inverse_decoder_digest`)."""
    return {"weights_digest": inverse.weights_digest, "inverse_decoder_digest": inverse_decoder_digest(inverse)}


def check_made_from(net_path: Path | str, inverse: FamilyAdapter) -> None:
    """Refuse a net kept under a cache folder unless its record names the weights and the inverse
    decoder of ``inverse`` (:func:`provenance_record`): a net trained on other weights' maps, or on
    another inverse decoder's, would score the images wrongly without a sign."""
    try:
        record = read_record(net_path)
    except FileNotFoundError:
        record = {}
    wanted = provenance_record(inverse)
    differ = [key for key, value in wanted.items() if record.get(key) != value]
    if differ:
        if all(key not in record for key in wanted):
            why = "has no record of the weights and inverse decoder it was trained on (trained before they were recorded)"
        else:
            why = "was trained on " + " and ".join({"weights_digest": "other weights", "inverse_decoder_digest": "another inverse decoder's maps"}[k]
                                                   for k in differ) + " than the ones in use"
        raise CheckpointError(f"{net_path} {why}: remove it or give another --cache-dir (variant_net.py: another --out)")
