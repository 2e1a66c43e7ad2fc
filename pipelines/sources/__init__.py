"""Readers: one module per raw format, each turning that format's records into trace drafts.

A reader module provides
  DEFAULTS                      its options and their defaults (every option is documented there)
  NOTE                          one line on where the real data comes from
  plan(opts, seed) -> list      (record readers) light raw rows {source_id, split, raw: dict}, built on the driver
  units(opts) -> list           (file readers) work units, each expanded in a Ray task by
  read_unit(unit, opts, ids_only) -> list   raw rows {source_id, split, raw, blob}
  convert(raw, blob, opts, seed) -> dict    a draft: question, answer, choices, steps, meta and the image
                                            (image_pil, image_bytes, or image_path with its image_root: the
                                            record's path as given, checked and joined by pipelines.process,
                                            so no file outside the root is ever opened); raises validate.Reject
"""

import importlib

SOURCE_TYPES = ("refocus", "easy_vqa", "visual_cot", "gqa", "vqav2", "jsonl", "parquet")
_MODULES = {"jsonl": "tabular", "parquet": "tabular"}


def get_source(source_type: str):
    if source_type not in SOURCE_TYPES:
        raise ValueError(f"unknown source {source_type!r}; choose one of {', '.join(SOURCE_TYPES)}")
    return importlib.import_module(f"pipelines.sources.{_MODULES.get(source_type, source_type)}")
