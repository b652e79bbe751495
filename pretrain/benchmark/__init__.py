"""The measurements behind docs/benchmarks.md: training throughput and memory (``training``), the
input paths (``input_pipeline``), the prediction table's footprint (``table_footprint``), what
the benchmarks record besides timings (``probes``), and host-sync checks (``host_syncs``)."""
