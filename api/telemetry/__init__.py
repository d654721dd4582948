"""What the service tells its operators: metrics, structured logs, traces (docs/operations.md).

The lowest layer beside ``api.domain``: every layer above may record a metric
or bind a log field, and this package imports nothing of ours but the settings.
``context`` holds what the current request is (its id and the fields every log
line of it carries).
"""
