"""The text presets (`text-mdm`, `text-ar`, `text-recurrent`) and their checkpoints, for `dblocks train/eval/sample`.

Each preset names a model family module `shared/text_<family>.py` with the same contract: a flat frozen
dataclass `Config` whose defaults are the preset, `build(cfg, end_to_end=, seed=)`, `train(model, cfg, stream,
seed=, steps=, on_step=)`, `evaluate(model, cfg, stream, seed=, max_windows=) -> {"bpc": ...}` and
`sample(model, cfg, prompt_ids, new_tokens=, seed=) -> continuation ids`. The module is imported only when the
preset is used (importlib), so this file imports nothing heavy and a family that is not installed yet is
refused with one line.

A text checkpoint is one file written with torch.save: {"format", "family", "config" (the Config as a dict),
"end_to_end", "state_dict", "data" (what it was trained on: the corpus name and digest, or the user's path,
so that `eval` without --data scores the same corpus's test split)}. Loading uses torch.load(weights_only=True)
(plain containers and tensors only, no pickled code) and rebuilds the model from the config.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import DataError

TEXT_PRESETS = {"text-mdm": "mdm", "text-ar": "ar", "text-recurrent": "recurrent"}  # preset -> family
CHECKPOINT_FORMAT = "dblocks-text-1"


def family_module(family: str) -> ModuleType:
    """shared/text_<family>.py, imported on first use."""
    try:
        return importlib.import_module(f"{__package__}.text_{family}")
    except ModuleNotFoundError as e:
        if e.name == f"{__package__}.text_{family}":
            raise DataError(f"the text family {family!r} is not available in this dblocks version") from None
        raise


def load_corpus(data: str | None):
    """The user's text (a UTF-8 file or folder, DataError if unusable), else the built-in stdlib corpus."""
    from .text import load_text, stdlib_corpus

    return stdlib_corpus() if data is None else load_text(data)


def data_record(corpus, data: str | None) -> dict[str, str]:
    record = {"corpus": corpus.name, "digest": corpus.digest, "license": corpus.license}
    if data is not None:
        record["path"] = str(Path(data).resolve())
    return record


@dataclass
class TextModel:
    family: str
    module: ModuleType
    config: Any  # the family's Config
    end_to_end: bool
    model: Any  # torch.nn.Module
    data: dict


def save_checkpoint(path: Path, tm: TextModel) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "family": tm.family,
            "config": dataclasses.asdict(tm.config),
            "end_to_end": tm.end_to_end,
            "data": tm.data,
            "state_dict": tm.model.state_dict(),
        },
        tmp,
    )
    tmp.replace(path)


def is_text_checkpoint(path: Path) -> bool:
    """A text model is one file (image/tabular models are directories with model.json)."""
    return path.is_file() or (not path.exists() and path.suffix in (".pt", ".pth"))


def load_checkpoint(path: Path) -> TextModel:
    import torch

    if not path.is_file():
        raise DataError(f"{path} does not exist: give the file `dblocks train --preset text-... --out FILE` wrote")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any file torch cannot read back as plain data is not a text model
        raise DataError(
            f"{path} is not a dblocks text model ({type(e).__name__}); train one with --preset text-mdm"
        ) from None
    if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path} is not a dblocks text model (no {CHECKPOINT_FORMAT!r} record)")
    family = d["family"]
    module = family_module(family)
    try:
        cfg = module.Config(**d["config"])
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: its configuration does not fit this dblocks version ({e})") from None
    model = module.build(cfg, end_to_end=bool(d["end_to_end"]), seed=0)
    model.load_state_dict(d["state_dict"])
    model.eval()
    return TextModel(family, module, cfg, bool(d["end_to_end"]), model, dict(d.get("data", {})))
