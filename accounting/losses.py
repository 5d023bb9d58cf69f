"""Recorded data losses in a month's close: flagged in the compliance ledger, said in findings.

A loss is recorded by an operator (``gpuledger storage record-loss``, :mod:`storage.losses`)
when a raw file is gone for good. Its usage is then no longer in ``usage_hourly`` and so not
billed; this module makes sure that is never a silent zero:

* :func:`with_losses` adds the breach ``data_lost`` to the compliance rows of every entity ×
  GPU model whose usage the lost file held (the split the loss record computed), and to every
  national row of the month when the split is unknown;
* :func:`loss_sentences` says each loss in Korean and English with the file, rows, hours,
  GPU-hours per entity where known, who recorded it and why (findings, close summary);
* :func:`loss_files` are sealed with the month, so the records cannot change afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from decimal import Decimal

from accounting.compliance import Breach, ComplianceRow
from accounting.registry import NATIONAL
from storage.dataset import Store
from storage.losses import LOSSES_DIR, losses


def month_losses(store: Store, period: str) -> list[dict]:
    return losses(store, period)


def loss_files(store: Store, period: str) -> list[str]:
    """Store paths of the loss records of ``period`` (sealed with it)."""
    found = []
    for record in losses(store, period):
        found.append(store.path(LOSSES_DIR, record["table"], record["file"].rsplit("/", 1)[-1] + ".json"))
    return sorted(found)


def with_losses(rows: Sequence[ComplianceRow], records: Sequence[dict]) -> list[ComplianceRow]:
    """``rows`` with ``data_lost`` on the entity × model rows a loss touched (national rows
    of every model when a loss's split is unknown; the national row of each touched model)."""
    if not records:
        return list(rows)
    touched: set[tuple[str, str]] = set()
    unknown = False
    for record in records:
        split = record.get("lost_usage")
        if not split:
            unknown = True
            continue
        for part in split:
            touched.add((part["entity"], part["gpu_model"]))
            touched.add((NATIONAL, part["gpu_model"]))
    out = []
    keys = {(r.entity, r.gpu_model) for r in rows}
    for row in rows:
        if (row.entity, row.gpu_model) in touched or (unknown and row.entity == NATIONAL):
            row = dataclasses.replace(row, breaches=tuple(sorted({*row.breaches, Breach.DATA_LOST.value})))
        out.append(row)
    period = rows[0].period if rows else records[0]["period"]
    for entity, model in sorted(touched - keys):  # an entity × model with no other row this month
        out.append(ComplianceRow(period, entity, model, 0, 0, 0, 0, 0, 0, (Breach.DATA_LOST.value,)))
    return sorted(out, key=lambda r: (r.entity == NATIONAL, r.entity, r.gpu_model))


def loss_sentences(records: Sequence[dict]) -> list[tuple[str, str]]:
    """(Korean, English) per recorded loss, with its figures and provenance."""
    said = []
    for r in records:
        rows = f"{r['rows']:,}" if r.get("rows") is not None else "?"
        hours = f"{r.get('first_interval_start')} – {r.get('last_interval_start')} UTC"
        split = r.get("lost_usage")
        if split:
            who_en = "; ".join(
                f"{p['entity']}/{p['project']} {p['gpu_model']} {Decimal(p['gpu_microseconds']) / Decimal(3_600_000_000):,.4f} GPU-h"
                for p in split
            )
            who_ko = who_en
        else:
            who_en = "whose usage it held is unknown (it was not rolled up before it was lost)"
            who_ko = "어느 기관의 사용량인지 알 수 없음 (손실 전 집계되지 않음)"
        said.append((
            f"원시 데이터 손실: {r['table']}/{r['file']} ({rows}건, {hours}); {who_ko}. 청구되지 않았습니다. "
            f"기록: {r['recorded_at']} {r['recorded_by']} — {r['reason']}",
            f"raw data lost: {r['table']}/{r['file']} ({rows} events, {hours}); {who_en}. Not billed. "
            f"Recorded {r['recorded_at']} by {r['recorded_by']}: {r['reason']}",
        ))
    return said
