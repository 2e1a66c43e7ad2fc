"""LaRe trace data: readers, the Ray Data build job and the trace schema (see docs/data.md).

    from pipelines.build import build_traces      # build a dataset (Ray Data)
    from pipelines.io import read_traces, read_traces_table
    from pipelines.schema import TRACE_SCHEMA, SCHEMA_VERSION
    from pipelines.validate import validate_trace
"""
