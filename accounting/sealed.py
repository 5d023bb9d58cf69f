"""The registry a month was priced with, sealed with it; and refusing any other for that month.

A close writes the **canonical registry** (:func:`canonical_registry`: the registry's content
rendered as TOML in one fixed order, without comments, so the same prices always give the same
bytes) to ``ledgers/registry/period=YYYY-MM/registry.toml``; the manifest seals that file like
every other one and records its SHA-256 as ``registry_sha256``.

Everything that speaks for a sealed month (export, statements, the programme workbook, the
report, the auditor pack) takes its registry from :func:`registry_for`: the sealed copy (checked
against the manifest). A registry offered explicitly (``--registry other.toml``) that prices,
names or bills differently is refused with one line naming what differs: a statement number
always means one set of figures. A month sealed before registries were sealed has none: the
offered registry is used, as before.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable
from decimal import Decimal

from accounting.errors import AccountingError
from accounting.registry import Registry, loads_registry
from storage import seal
from storage.dataset import Store

REGISTRY_DIR = "ledgers/registry"


class SealedRegistryError(AccountingError):
    """The registry offered for a sealed month is not the one it was priced with."""


def registry_copy_path(store: Store, period: str) -> str:
    return store.path(REGISTRY_DIR, f"period={period}", "registry.toml")


def canonical_registry(registry: Registry) -> str:
    """The registry's content as TOML in a fixed order (loads back to an equal registry)."""
    out = [
        "# The registry this month was priced with (canonical form written by gpuledger close).",
        "[billing]",
        'currency = "KRW"',
        f"rounding = {_s(registry.rounding.value)}",
        f"vat_percent = {_d(registry.vat_percent)}",
        "",
        "[compliance]",
        f"under_use_below = {_d(registry.thresholds.under_use_below)}",
        f"low_coverage_below = {_d(registry.thresholds.low_coverage_below)}",
    ]
    out += _supplier(registry)
    for name in sorted(registry.entities):
        entity = registry.entities[name]
        out += ["", f"[entities.{_s(name)}]", f"display_name = {_s(entity.display_name)}",
                f"state_pool = {'true' if entity.state_pool else 'false'}", *_party(entity.recipient)]
        for alloc in sorted(entity.allocations, key=lambda a: (a.gpu_model, a.period.start)):
            out += [f"[[entities.{_s(name)}.allocations]]", f"gpu_model = {_s(alloc.gpu_model)}",
                    f"count = {alloc.count}", *_period(alloc.period)]
    for name in sorted(registry.projects):
        project = registry.projects[name]
        out += ["", f"[projects.{_s(name)}]", f"entity = {_s(project.entity)}", f"class = {_s(project.project_class)}"]
        if project.recipient.name is not None:
            out.append(f"display_name = {_s(project.recipient.name)}")
        out += _party(project.recipient)
    for card in sorted(registry.rates, key=lambda c: (c.entity, c.gpu_model, c.period.start)):
        discounts = ", ".join(f"{_s(k)} = {_d(v)}" for k, v in sorted(card.discounts.items()))
        out += ["", "[[rates]]", f"entity = {_s(card.entity)}", f"gpu_model = {_s(card.gpu_model)}",
                f"krw_per_gpu_hour = {_d(card.krw_per_gpu_hour)}", *_period(card.period),
                f"discounts = {{ {discounts} }}" if discounts else "discounts = {}"]
    return "\n".join(out) + "\n"


def registry_sha256(registry: Registry) -> str:
    return hashlib.sha256(canonical_registry(registry).encode()).hexdigest()


def write_registry_copy(store: Store, period: str, registry: Registry, *,
                        fence: seal.Fence | None = None) -> tuple[str, str]:
    """Write the canonical registry of a close (fenced, never over a sealed copy:
    :func:`storage.seal.write_sealable`); (its path, its SHA-256)."""
    text = canonical_registry(registry).encode()
    path = registry_copy_path(store, period)
    seal.write_sealable(store, period, path, text, fence=fence)
    return path, hashlib.sha256(text).hexdigest()


def sealed_registry(store: Store, period: str) -> Registry | None:
    """The registry ``period`` was sealed with (``None`` if it is not sealed, or was sealed
    before registries were). Fails closed: a copy that does not match the seal is refused."""
    if period not in seal.sealed_periods(store):
        return None
    doc = seal.read_manifest(store, period)
    recorded = doc.get("registry_sha256")
    if recorded is None:
        return None
    rel = seal.relative_path(store, registry_copy_path(store, period))
    entry = next((f for f in doc["files"] if f["path"] == rel), None)
    try:
        data = store.read_bytes(store.path(rel))
    except OSError as exc:
        raise SealedRegistryError(f"{rel} (the registry {period} was priced with) cannot be read: restore it, then run `gpuledger verify`") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != recorded or entry is None or entry.get("sha256") != digest:
        raise SealedRegistryError(
            f"{rel} does not match the registry_sha256 sealed for {period}: run `gpuledger verify` and restore it"
        )
    return loads_registry(data.decode(), source=f"{rel} (sealed with {period})")


def registry_for(store: Store, period: str, offered: Registry | None, *, explicit: bool) -> Registry | None:
    """The registry to speak for ``period`` with: the sealed one when there is one.

    ``offered`` is what the caller was given; ``explicit`` says the person asked for it by
    name (``--registry``). An explicit registry that differs from the sealed one raises
    :class:`SealedRegistryError`, one line naming the differences; an implicit one (a default
    path that may have moved on since) is set aside for the sealed copy.
    """
    sealed = sealed_registry(store, period)
    if sealed is None:
        return offered
    if explicit and offered is not None:
        differences = registry_differences(sealed, offered)
        if differences:
            raise SealedRegistryError(
                f"{offered.source} differs from the registry {period} was sealed with "
                f"({'; '.join(differences)}); the sealed month is shown only with its own registry: "
                "drop --registry (the sealed copy is used)"
            )
    return sealed


def registry_differences(sealed: Registry, other: Registry, limit: int = 4) -> list[str]:
    """Lines of the canonical form that differ, as ``sealed → other`` (at most ``limit``)."""
    a = canonical_registry(sealed).splitlines()
    b = canonical_registry(other).splitlines()
    out: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        old = " / ".join(a[i1:i2]) or "(none)"
        new = " / ".join(b[j1:j2]) or "(none)"
        out.append(f"{old} → {new}")
    if len(out) > limit:
        out = [*out[:limit], f"and {len(out) - limit} more"]
    return out


def _party(party) -> list[str]:  # noqa: ANN001 - accounting.registry.Party
    """A statement party's optional fields, only those given: a registry without them keeps the
    canonical bytes (and so the seal) it had before they existed."""
    fields = (("business_number", party.business_number), ("address", party.address),
              ("representative", party.representative))
    return [f"{key} = {_s(value)}" for key, value in fields if value is not None]


def _supplier(registry: Registry) -> list[str]:
    supplier = registry.supplier
    if supplier is None:
        return []
    out = ["", "[supplier]", f"name = {_s(supplier.party.name)}", *_party(supplier.party)]
    if supplier.payment_account is not None:
        out.append(f"payment_account = {_s(supplier.payment_account)}")
    return [*out, f"payment_due_days = {supplier.payment_due_days}"]


def _period(period) -> Iterable[str]:  # noqa: ANN001 - accounting.registry.Period
    yield f"effective_from = {period.start.isoformat()}"
    if period.end is not None:
        yield f"effective_to = {period.end.isoformat()}"


def _s(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a TOML basic string


def _d(value: Decimal | int) -> str:
    text = format(Decimal(value), "f")
    return text
