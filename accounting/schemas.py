"""Declared Arrow schemas of the ledgers (docs/architecture.md, Ledgers). Public: finance and auditors read these.

Money is ``decimal128`` (exact), never float. ``gpu_microseconds`` is the exact usage the
line bills; ``gpu_hours`` is that value in hours rounded half-even to 6 places for reading;
``amount_krw`` is ``gpu_microseconds × rate_krw_per_gpu_hour / 3.6e9`` rounded once by the
registry's rule (so it never compounds the display rounding of ``gpu_hours``).

A billing line is one period × entity × project × GPU model × rate segment (a rate change
mid-month gives two lines, each with the dates its rate applied) × charge class.
"""

from __future__ import annotations

import pyarrow as pa

HOURS = pa.decimal128(24, 6)
KRW_RATE = pa.decimal128(18, 2)
KRW = pa.decimal128(24, 0)
RATIO = pa.decimal128(9, 6)

BILLING = pa.schema(
    [
        ("period", pa.string()),  # KST month billed (the close)
        ("entity", pa.string()),
        ("project", pa.string()),
        ("project_class", pa.string()),  # university / startup / institute / commercial …
        ("gpu_model", pa.string()),
        ("charge_class", pa.string()),  # usage | correction
        ("corrects_period", pa.string()),  # null for usage; the period a correction belongs to
        ("rate_from", pa.date32()),  # first KST day the rate applied within the usage period
        ("rate_to", pa.date32()),  # last KST day (inclusive)
        ("gpu_microseconds", pa.int64()),
        ("gpu_hours", HOURS),
        ("list_rate_krw_per_gpu_hour", KRW_RATE),
        ("discount_percent", pa.decimal128(5, 2)),
        ("rate_krw_per_gpu_hour", KRW_RATE),  # the rate actually applied, after discount
        ("amount_krw", KRW),
    ]
)

COMPLIANCE = pa.schema(
    [
        ("period", pa.string()),
        ("entity", pa.string()),
        ("gpu_model", pa.string()),
        ("allocated_gpus", pa.int64()),
        ("capacity_gpu_hours", HOURS),
        ("reported_gpu_hours", HOURS),
        ("attributed_gpu_hours", HOURS),
        ("unattributed_gpu_hours", HOURS),
        ("busy_gpu_hours", HOURS),
        ("idle_gpu_hours", HOURS),
        ("unreported_gpu_hours", HOURS),
        ("quarantined_gpu_hours", HOURS),
        ("utilisation", RATIO),  # busy / reported
        ("coverage", RATIO),  # reported / capacity
        ("breaches", pa.list_(pa.string())),  # over_allocation, under_use, low_coverage, …
    ]
)
