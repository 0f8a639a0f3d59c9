"""An import-linter contract whose source modules are given by shell patterns.

import-linter's own wildcards replace whole module names only
(``tango_devices.*.states``); ``tango_devices.*.*_logic`` needs a pattern
inside a name. With ``source_patterns`` every module whose dotted name
matches is a source module, so a new logic, table, store or model module is
covered by its name alone, without editing a list. A pattern that matches
nothing fails the contract (a typo must not pass silently).
"""

from __future__ import annotations

import fnmatch

from grimp import ImportGraph
from importlinter.application.contract_utils import AlertLevel
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.domain import fields
from importlinter.domain.contract import ContractCheck
from importlinter.domain.imports import ModuleExpression


class PatternForbiddenContract(ForbiddenContract):
    """``forbidden``, with ``source_patterns`` (fnmatch) instead of ``source_modules``."""

    type_name = "forbidden_by_pattern"

    source_patterns = fields.ListField(subfield=fields.StringField())
    source_modules = fields.SetField(subfield=fields.ModuleExpressionField(), required=False)
    forbidden_modules = fields.SetField(subfield=fields.ModuleExpressionField())
    ignore_imports = fields.SetField(subfield=fields.ImportExpressionField(), required=False)
    allow_indirect_imports = fields.BooleanField(required=False, default=False)
    unmatched_ignore_imports_alerting = fields.EnumField(AlertLevel, default=AlertLevel.ERROR)
    as_packages = fields.BooleanField(required=False, default=True)
    broken_contract_guidance = fields.TextField(required=False)

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        matched: set[str] = set()
        for pattern in self.source_patterns:  # type: ignore[attr-defined]
            found = {m for m in graph.modules if fnmatch.fnmatchcase(m, pattern)}
            if not found:
                return ContractCheck(
                    kept=False,
                    warnings=[],
                    metadata={"unmatched": pattern},
                )
            matched |= found
        self.source_modules = {ModuleExpression(m) for m in sorted(matched)}
        return super().check(graph, verbose)

    def render_broken_contract(self, check: ContractCheck) -> None:
        if "unmatched" in check.metadata:
            from importlinter.application import output

            output.print_error(
                f"The pattern {check.metadata['unmatched']!r} matches no module: "
                "fix the pattern (or remove it)."
            )
            return
        super().render_broken_contract(check)
