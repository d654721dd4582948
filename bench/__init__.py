"""``make bench``: load a synthetic order set, drive the running API over loopback, report.

Run as ``python -m bench --help``. Modules: ``synthetic`` (the order set and
its deterministic ids), ``loader`` (writes it once, reused afterwards),
``procstat`` (CPU and RSS of a process tree from /proc), ``server`` (the API
under uvicorn as its own process), ``scenarios`` (what each request is),
``loadgen`` (the load generator, run in a separate process), ``report`` (the
table and the JSON file) and ``run`` (the order of the measurements).
"""
