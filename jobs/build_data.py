"""Build LaRe trace data with Ray Data: python jobs/build_data.py --source NAME --out DIR_OR_S3_URI [options]

Examples
  python jobs/build_data.py --source refocus --out data/refocus
  python jobs/build_data.py --source refocus --out data/refocus_small --option num_train=500 --option num_hard=0
  python jobs/build_data.py --source easy_vqa --out s3://my-bucket/lare/easy_vqa        # endpoint/credentials from AWS_* env
  python jobs/build_data.py --source visual_cot --out data/viscot --config viscot.yaml --max-reject-fraction 0.05

Without RAY_ADDRESS a local Ray bound to 127.0.0.1 is started (and stopped at the end); with it, the job
connects to that cluster. Exit status: 0 on success (rejects included), 2 when rejects exceed
--max-reject-fraction, 1 on any other error. The summary never shows credentials.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.build import COMMON_DEFAULTS, RejectFractionExceeded, build_traces  # noqa: E402
from pipelines.sources import SOURCE_TYPES, get_source  # noqa: E402


def options_help() -> str:
    lines = ["options (--option KEY=VALUE, VALUE parsed as JSON when it can be; or a --config YAML/JSON file):",
             "  every source: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in COMMON_DEFAULTS.items())]
    for name in SOURCE_TYPES:
        src = get_source(name)
        lines.append(f"  {name}: " + (", ".join(f"{k}={json.dumps(v)}" for k, v in src.DEFAULTS.items()) or "(none)"))
        lines.append(f"      data: {src.NOTE}")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, epilog=options_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, choices=SOURCE_TYPES, help="reader to use")
    ap.add_argument("--out", required=True, help="output folder or s3://bucket/prefix (replaced if it holds a previous build)")
    ap.add_argument("--seed", type=int, default=0, help="seed of generated sources (refocus); recorded in the manifest")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="reader/build option, repeatable (see below)")
    ap.add_argument("--config", help="YAML or JSON file of options (--option overrides it)")
    ap.add_argument("--max-reject-fraction", type=float, default=1.0,
                    help="fail (exit 2) when rejects / rows in exceed this, after writing everything (default 1.0: never)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray started when RAY_ADDRESS is unset")
    ap.add_argument("--no-progress", action="store_true", help="turn off Ray Data progress bars")
    return ap.parse_args(argv)


def load_options(args) -> dict:
    options = {}
    if args.config:
        import yaml

        with open(args.config) as f:
            options.update(yaml.safe_load(f) or {})
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--option needs KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
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


def main(argv=None) -> int:
    args = parse_args(argv)
    options = load_options(args)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if args.no_progress:
        os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    import ray

    from pipelines.io import ensure_ray

    started_here = not ray.is_initialized()
    ensure_ray(num_cpus=args.num_cpus)
    try:
        manifest = build_traces(args.source, args.out, seed=args.seed, options=options,
                                max_reject_fraction=args.max_reject_fraction)
        print_summary(manifest)
        return 0
    except RejectFractionExceeded as e:
        print_summary(e.manifest)
        print(f"\nFAILED: {e}", file=sys.stderr)
        return 2
    finally:
        if started_here:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
