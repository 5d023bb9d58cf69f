"""Breaches of the programme's rules, said as sentences in Korean and English.

The compliance ledger records each breach as a code per entity × GPU model (``low_coverage``,
``under_use``, ``over_allocation``, ``unregistered_entity``, ``unregistered_project``,
``gpu_oversubscribed``). Every output a person reads (the CLI summary, the report) calls them
**breaches** (위반) and says them with these sentences, never as bare codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import polars as pl

from accounting.figures import display_name, hours_text, small_hours_text
from accounting.figures import pct as _pct
from accounting.registry import NATIONAL, Registry, Thresholds


# each breach code as a person reads it (per-model table, chart): 한국어 (English)
LABELS = {
    "low_coverage": "저보고 (low coverage)",
    "under_use": "저활용 (under use)",
    "over_allocation": "할당 초과 (over allocation)",
    "unregistered_entity": "미등록 기관 (unregistered entity)",
    "unregistered_project": "미등록 프로젝트 (unregistered project)",
    "gpu_oversubscribed": "GPU 초과 보고 (GPU oversubscribed)",
}


def label(code: str) -> str:
    return LABELS.get(code, code)


@dataclass(frozen=True, slots=True)
class Breach:
    """One breach of one entity × GPU model, said in Korean and English."""

    entity: str
    gpu_model: str
    breach: str
    korean: str
    english: str



def breaches(compliance: pl.DataFrame, registry: Registry | None = None) -> list[Breach]:
    """Every breach of every entity × GPU model as a sentence (national rows: threshold breaches only)."""
    thresholds = registry.thresholds if registry is not None else None
    found = []
    for row in compliance.sort("entity", "gpu_model").iter_rows(named=True):
        for breach in row["breaches"] or []:
            if row["entity"] == NATIONAL and breach not in ("under_use", "low_coverage"):
                continue  # the union of the entities' own breaches, already said
            korean, english = breach_sentence(breach, row, display_name(registry, row["entity"]), thresholds)
            found.append(Breach(row["entity"], row["gpu_model"], breach, korean, english))
    return sorted(found, key=lambda f: (f.entity == NATIONAL, f.entity, f.gpu_model, f.breach))


def breach_sentence(breach: str, row: dict[str, Any], name: str, thresholds: Thresholds | None) -> tuple[str, str]:
    """(Korean, English) sentence for one breach of one compliance-ledger row."""
    model = row["gpu_model"]
    gpus = row["allocated_gpus"] or 0
    rep = row["reported_gpu_hours"] or Decimal(0)
    unrep = row["unreported_gpu_hours"] or Decimal(0)
    busy = row["busy_gpu_hours"] or Decimal(0)
    quarantined = row.get("quarantined_gpu_hours") or Decimal(0)
    where_ko, where_en = f"{name} · {model}", f"{name}, {model}"
    held_ko = small_hours_text(quarantined, "GPU·시간", "GPU·초")
    held_en = small_hours_text(quarantined)
    if breach == "low_coverage":
        rule, rule_en = _rule(thresholds.low_coverage_below if thresholds else None, row["coverage"])
        return (
            f"{where_ko}: 보고율 {_pct(row['coverage'])}로 기준 {rule} 미만입니다. 할당 {gpus:,} GPU 중 "
            f"{hours_text(unrep)} GPU·시간이 보고되지 않았습니다 (장애·정지 또는 수집기 없음).",
            f"{where_en}: coverage {_pct(row['coverage'])} is below {rule_en}: {hours_text(unrep)} GPU-hours of its "
            f"{gpus:,} allocated GPUs reported nothing (down, stopped, or no collector).",
        )
    if breach == "under_use":
        rule, rule_en = _rule(thresholds.under_use_below if thresholds else None, row["utilisation"])
        return (
            f"{where_ko}: 활용률 {_pct(row['utilisation'])}로 기준 {rule} 미만입니다. 보고된 {hours_text(rep)} GPU·시간 중 "
            f"가동은 {hours_text(busy)} GPU·시간입니다.",
            f"{where_en}: utilisation {_pct(row['utilisation'])} is below {rule_en}: {hours_text(busy)} busy of "
            f"{hours_text(rep)} reported GPU-hours.",
        )
    if breach == "over_allocation":
        return (
            f"{where_ko}: 어떤 시간에는 할당된 {gpus:,} GPU보다 많은 GPU가 사용을 보고했습니다 (할당 초과).",
            f"{where_en}: in some hours more GPUs reported usage than the {gpus:,} allocated (over allocation).",
        )
    if breach == "unregistered_entity":
        return (
            f"{where_ko}: 등록부에 없는 기관의 사용량 {held_ko}이 거부되어 격리되었습니다.",
            f"{where_en}: usage of an entity not in the registry was refused ({held_en} in quarantine).",
        )
    if breach == "unregistered_project":
        return (
            f"{where_ko}: 등록되지 않은(또는 다른 기관의) 프로젝트 사용량 {held_ko}이 "
            "거부되어 격리되었습니다. 등록부를 고친 뒤 quarantine replay로 다시 받을 수 있습니다.",
            f"{where_en}: usage of projects not registered to it was refused ({held_en} in "
            "quarantine); amend the registry and run quarantine replay.",
        )
    if breach == "gpu_oversubscribed":
        return (
            f"{where_ko}: 한 물리 GPU의 장치들이 한 시간보다 많은 GPU 시간을 보고했습니다 (수집기 점검 필요).",
            f"{where_en}: the devices of one physical GPU reported more GPU-time than the hour has (check the collector).",
        )
    return f"{where_ko}: {breach}", f"{where_en}: {breach}"


def _rule(threshold: Decimal | None, value: Decimal | None) -> tuple[str, str]:
    """The threshold as said in a sentence; named only when it explains the breach.

    The ledger records the breach, judged at close by the registry of that close; a report
    drawn with another registry (whose threshold the value does not fall below) must not
    name a threshold that did not decide it.
    """
    if threshold is None or value is None or value >= threshold:
        return "마감 때 등록부의 기준", "the threshold of the registry it was closed with"
    return f"{threshold * 100:.0f}%", f"{threshold * 100:.0f}%"
