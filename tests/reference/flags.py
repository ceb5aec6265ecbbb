"""Fresh findings merged into the flags flag by flag, as first written, kept unchanged as the oracle of
transforms.reconcile.reconcile, one join on flag_id (test_reconcile_oracle.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import polars as pl

from transforms.flags import EPS, FINDING_SCHEMA, FLAG_SCHEMA
from transforms.reconcile import Reconciled
from transforms.rules import SEVERITIES


def _rank(severity: str | None) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


def reconcile(findings: pl.DataFrame, existing: pl.DataFrame, now: datetime) -> Reconciled:
    """Merge fresh findings into the flags in scope: update, never duplicate; reviews are kept."""
    old = {row["flag_id"]: row for row in existing.iter_rows(named=True)}
    out: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    for finding in findings.iter_rows(named=True):
        prior = old.pop(finding["flag_id"], None)
        row = {**finding}
        if prior is None:
            row.update(
                status="open" if finding["ongoing"] else "auto_resolved",
                first_flagged_at=now,
                updated_at=now,
                worsened_at=None,
                resolved_at=None if finding["ongoing"] else now,
                resolution=None if finding["ongoing"] else finding["outcome"],
                risk_score=0.0,
            )
            if finding["ongoing"]:
                changes.append({"flag_id": finding["flag_id"], "change": "new"})
        else:
            row.update(
                status=prior["status"],
                first_flagged_at=prior["first_flagged_at"],
                updated_at=prior["updated_at"],
                worsened_at=prior["worsened_at"],
                resolved_at=prior["resolved_at"],
                resolution=prior["resolution"],
                risk_score=prior["risk_score"],
            )
            worse = finding["ongoing"] and (
                _rank(finding["severity"]) > _rank(prior["severity"])
                or finding["magnitude"] > (prior["magnitude"] or 0.0) + EPS
                or (prior["provisional"] and not finding["provisional"])
            )
            if finding["ongoing"] and prior["status"] == "auto_resolved":
                row.update(status="open", resolved_at=None, resolution=None, worsened_at=now)
                changes.append({"flag_id": finding["flag_id"], "change": "reopened"})
            elif not finding["ongoing"] and prior["status"] in ("open", "acknowledged"):
                row.update(status="auto_resolved", resolved_at=now, resolution=finding["outcome"])
                changes.append({"flag_id": finding["flag_id"], "change": "auto_resolved"})
            elif worse:
                row["worsened_at"] = now
                changes.append({"flag_id": finding["flag_id"], "change": "worsened"})
            if any(row[k] != prior[k] for k in FINDING_SCHEMA) or row["status"] != prior["status"]:
                row["updated_at"] = now
        out.append(row)
    for prior in old.values():
        row = dict(prior)
        if prior["status"] in ("open", "acknowledged") or prior["ongoing"]:
            row.update(ongoing=False, updated_at=now)
            if prior["status"] in ("open", "acknowledged"):
                row.update(
                    status="auto_resolved",
                    resolved_at=now,
                    resolution="returned" if prior["rule"] == "stopped_appearing" else "no longer supported",
                )
                changes.append({"flag_id": prior["flag_id"], "change": "auto_resolved"})
        out.append(row)
    return Reconciled(
        pl.DataFrame(out, schema=FLAG_SCHEMA),
        pl.DataFrame(changes, schema={"flag_id": pl.String, "change": pl.String}),
    )
