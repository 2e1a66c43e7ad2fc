"""Build LaRe trace data with Ray Data: lare-build-data --source NAME --out DIR_OR_S3_URI [key=value ...]
(or python jobs/build_data.py ..., the same job)

Examples
  lare-build-data --source refocus --out data/refocus
  lare-build-data --source refocus --out data/refocus_small num_train=500 num_hard=0
  lare-build-data --source jsonl --out data/mine path=mine.jsonl image_root=imgs columns.image_path=file
  lare-build-data --source easy_vqa --out s3://my-bucket/lare/easy_vqa        # endpoint/credentials from AWS_* env
  lare-build-data --source visual_cot --out data/viscot --config viscot.yaml --max-reject-fraction 0.05

Reader and build options are `key=value` arguments, as the config overrides of jobs/train.py (`--option key=value`
is the same); a dotted key sets one entry of a mapping option (columns.image_path=file).

Without RAY_ADDRESS a local Ray bound to 127.0.0.1 is started (and stopped at the end); with it, the job
connects to that cluster. The summary never shows credentials.

Exit status
  0  success (some rejects included)
  1  data failure: every record rejected, or more than --max-reject-fraction of them (default 0.5). Everything,
     rejects included, is still written; the most common reject reasons are printed with an example record each,
     and the option to change when one setting looks like the cause. (1 is also Python's status for a bug.)
  2  user error: a bad option, key=value or path, a non-empty output folder, a missing --config file; one line
     on stderr (with --debug or LARE_DEBUG=1 its traceback too)
"""

import argparse
import json
import os
import sys

from lare.cli import UserError, add_job_flags, main_guard, ray_for, run_cli, start
from pipelines.build import COMMON_DEFAULTS, RejectFractionExceeded, build_traces, check_output, resolve_options
from pipelines.sources import SOURCE_TYPES, get_source

EXIT_DATA_FAILURE = 1
# Options naming local input files or folders: checked before Ray starts, so a typo fails in a second.
INPUT_PATH_OPTIONS = ("path", "questions", "scene_graphs", "annotations", "instances", "root", "image_root")


def options_help() -> str:
    lines = ["options (key=value, or --option key=value; numbers, booleans, lists and mappings are parsed as YAML, "
             "text options are kept verbatim; or a --config YAML/JSON file, which key=value overrides):",
             "  every source: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in COMMON_DEFAULTS.items())]
    for name in SOURCE_TYPES:
        src = get_source(name)
        lines.append(f"  {name}: " + (", ".join(f"{k}={json.dumps(v)}" for k, v in src.DEFAULTS.items()) or "(none)"))
        lines.append(f"      data: {src.NOTE}")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="lare-build-data", description=__doc__, epilog=options_help(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, choices=SOURCE_TYPES, help="reader to use")
    ap.add_argument("--out", required=True, help="output folder or s3://bucket/prefix (replaced if it holds a previous build)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="reader/build option (see below)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="the same as a key=value argument")
    ap.add_argument("--seed", type=int, default=0, help="seed of generated sources (refocus); recorded in the manifest")
    ap.add_argument("--config", help="YAML or JSON file of options (key=value arguments override it)")
    ap.add_argument("--max-reject-fraction", type=float, default=0.5,
                    help="fail (exit 1) when rejects / rows in exceed this, after writing everything (default 0.5); "
                         "a build that rejects every record fails whatever this is")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray started when RAY_ADDRESS is unset")
    ap.add_argument("--no-progress", action="store_true", help="turn off Ray Data progress bars")
    add_job_flags(ap)
    # Intermixed: key=value arguments may come before, between or after the flags.
    return ap.parse_intermixed_args(argv)


def option_value(raw: str, default):
    """Text options (default a string or None: paths, names, column names) keep the value verbatim, so `name=007`
    or a path stays as typed; the others are read as YAML (JSON included): 500, true, [a, b], {image: img}."""
    import yaml

    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw
    if default is None or isinstance(default, str):
        return value if isinstance(value, str) else raw
    return value


def set_option(options: dict, item: str, defaults: dict) -> None:
    """Apply one `key=value` (or `mapping.key=value`) to options."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"option {item!r} is not of the form key=value (e.g. path=data.jsonl)")
    name, _, entry = key.partition(".")
    if not entry:
        options[name] = option_value(raw, defaults.get(name))
        return
    current = options.get(name, defaults.get(name))
    if not isinstance(current, dict):  # an unknown name is named by resolve_options below
        if name in defaults:
            raise UserError(f"option {key!r}: {name} is not a mapping option, so it takes {name}=value")
        current = {}
    options[name] = {**current, entry: option_value(raw, None)}


def read_config_file(path: str) -> dict:
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise UserError(f"--config file not found: {path}") from None
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"--config {path} cannot be read as YAML/JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path} must hold a mapping of options, got {type(data).__name__}")
    return data


def load_options(args) -> dict:
    """--config, then --option and key=value arguments, in that order."""
    options = read_config_file(args.config) if args.config else {}
    defaults = {**COMMON_DEFAULTS, **get_source(args.source).DEFAULTS}
    for item in [*args.option, *args.overrides]:
        set_option(options, item, defaults)
    return options


def check_input_paths(opts: dict) -> None:
    """Input files and folders named by the options must exist (the readers check again, after Ray has started)."""
    for key in INPUT_PATH_OPTIONS:
        value = opts.get(key)
        if not isinstance(value, str) or not value or "://" in value or any(c in value for c in "*?["):
            continue  # unset, remote, or a glob: left to the reader
        if not os.path.exists(os.path.expanduser(value)):
            raise UserError(f"option {key}={value}: no such file or folder")


def preflight(args) -> dict:
    """Everything about the request that can be checked without Ray: options, input paths, the output folder."""
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    options = load_options(args)
    check_input_paths(resolve_options(args.source, options))
    check_output(args.out)
    return options


def print_summary(m: dict):
    c = m["counts"]
    print(f"\nsource {m['source']} -> {m['output']}  (schema v{m['schema_version']}, seed {m['seed']})")
    print(f"rows in {c['rows_in']}  rows out {c['rows_out']}  rejects {c['rejects']}  "
          f"wall {m['wall_time_s']:.1f} s  {m['rows_per_s'] or 0:.1f} rows/s")
    print("per split: " + ", ".join(f"{k} {v}" for k, v in c["splits"].items()))
    if c["rejects_by_reason"]:
        print("rejects by reason: " + ", ".join(f"{k} {v}" for k, v in c["rejects_by_reason"].items()))
    print(f"content hash {m['content_hash']}  status {m['status']}")


def print_failure(error: RejectFractionExceeded) -> None:
    """Why the build failed, on stderr: the top reasons, an example record of each, and a settings hint."""
    m = error.manifest
    lines = [f"\nFAILED: {error}", "most common reject reasons:"]
    for r in m["top_rejects"]:
        lines.append(f"  {r['reason']} ({r['count']}), e.g. source id {r['source_id']}: {r['detail']}")
    if m["reject_hint"]:
        lines.append(f"hint: {m['reject_hint']}")
    lines.append(f"every reject, with its record: {m['output']}/rejects/ (pipelines.io.read_rejects_table)")
    print("\n".join(lines), file=sys.stderr, flush=True)


@main_guard
def main(argv=None) -> int:
    args = parse_args(argv)
    options = preflight(args)
    if args.no_progress:
        os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    start(args.verbose, data_progress=True)  # Ray Data's own bars are this job's progress
    with ray_for(args.num_cpus, args.verbose):
        try:
            manifest = build_traces(args.source, args.out, seed=args.seed, options=options,
                                    max_reject_fraction=args.max_reject_fraction)
        except RejectFractionExceeded as e:
            print_summary(e.manifest)
            print_failure(e)
            return EXIT_DATA_FAILURE
    print_summary(manifest)
    return 0


def run() -> None:
    """The lare-build-data console script and jobs/build_data.py."""
    run_cli(main)
