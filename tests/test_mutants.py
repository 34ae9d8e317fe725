"""The deliberate-bug harness (scripts/mutants.py) in the suite: a few of its mutants, each
caught by the tests it names, and a mutant that changes nothing survives (the harness can tell
a survivor). The full table: `.venv/bin/python scripts/mutants.py` (docs/testing.md)."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

spec = importlib.util.spec_from_file_location("mutants", REPO / "scripts" / "mutants.py")
mutants = importlib.util.module_from_spec(spec)
sys.modules["mutants"] = mutants  # dataclasses look their module up there
spec.loader.exec_module(mutants)
BY_NAME = {m.name: m for m in mutants.MUTANTS}
SUBSET = ["records written in place", "multi-task loss ignores its weights",
          "adam's lr drifts to torch's default unnoticed"]  # fmt: skip


def test_the_harness_has_a_mutant_per_feature_and_every_patch_applies():
    assert len(mutants.MUTANTS) >= 30 and len(BY_NAME) == len(mutants.MUTANTS)
    for mutant in mutants.MUTANTS:
        mutants.apply(mutant, mutants._copy_of(mutant))  # raises if the code moved


@pytest.mark.parametrize("name", SUBSET)
def test_a_mutant_is_caught_by_the_tests_it_names(name):
    caught, _, tail = mutants.run(BY_NAME[name], sys.executable)
    assert caught, f"{name} survived: {tail}"


def test_a_mutant_that_changes_nothing_survives():
    unchanged = replace(BY_NAME[SUBSET[1]], new=BY_NAME[SUBSET[1]].old)
    caught, _, tail = mutants.run(unchanged, sys.executable)
    assert not caught and "passed" in tail
