"""The import graph of the package: no circles, and no stage reaching into a later one.

Parsed from the source (every import statement, including those inside functions), so that a
late import cannot hide a circle.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lesion_harvester"
# the pipeline's stages in order: a stage may import earlier stages, never a later one
# (detectors: the contract every detector keeps, which the LPG's MSCN and the peers implement)
STAGES = ("detectors", "stacking", "lpg", "lpc", "harvest", "report", "peers", "detect", "review", "cli")
PIPELINE_CODE = ("synth", "evaluation", *STAGES)  # what io/ must not import: it reads and writes, nothing more


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            # "from lesion_harvester.harvest import steps" imports the module harvest.steps
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


GRAPH = _imports()


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_import_graph_has_no_circle():
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                circle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_no_stage_imports_a_later_one():
    bad = [(m, t) for m, targets in GRAPH.items() for t in targets
           if _package(m) in STAGES and _package(t) in STAGES and STAGES.index(_package(t)) > STAGES.index(_package(m))]
    assert not bad, bad


def test_io_imports_no_pipeline_code():
    bad = [(m, t) for m, targets in GRAPH.items() for t in targets
           if _package(m) == "io" and _package(t) in PIPELINE_CODE]
    assert not bad, bad


# every module of the package, by its top-level name, in layers from the bottom: a module may import
# its own layer and those below, never one above (io/ reads and writes formats; what decides the
# volumes' roles and caches prepared volumes sits above it, with the settings it needs)
LAYERS = (
    ("errors", "registry", "paths", "configs", ""),  # configs: the preset YAMLs; "": the package's __init__
    ("geometry",),
    ("structures",),
    ("storage",),
    ("io",),
    ("settings",),
    ("config",),
    ("device", "distributed", "preprocessing"),
    ("dataset",),
    ("synth", "evaluation"),
    *((stage,) for stage in STAGES),
)
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def test_every_module_has_a_layer_and_imports_none_above_it():
    unlisted = sorted(m for m in GRAPH if _package(m) not in LAYER_OF)
    assert not unlisted, f"modules in no layer of tests/test_layers.py: {unlisted}"
    bad = [(m, t) for m, targets in GRAPH.items() for t in targets if LAYER_OF[_package(t)] > LAYER_OF[_package(m)]]
    assert not bad, bad


def test_io_imports_no_settings_preprocessing_or_models():
    above = {"settings", "config", "preprocessing", "dataset", "detectors", "lpg", "lpc", "peers"}
    bad = [(m, t) for m, targets in GRAPH.items() for t in targets if _package(m) == "io" and _package(t) in above]
    assert not bad, bad


def test_settings_are_below_the_pipeline():
    # lesion_harvester.settings checks, reads and fingerprints any dataclass of sections: it imports
    # neither the pipeline's own settings (config imports it) nor pipeline code; config imports no
    # pipeline code either (the LPG's whole size is checked in lpg.model, on the model)
    bad = [(m, t) for m, targets in GRAPH.items() for t in targets
           if (_package(m) == "settings" and (t == "lesion_harvester.config" or _package(t) in PIPELINE_CODE))
           or (m == "lesion_harvester.config" and _package(t) in PIPELINE_CODE)]
    assert not bad, bad


def test_the_graph_is_read():
    # guards the tests above against a parser that finds nothing
    assert "lesion_harvester.harvest.steps" in GRAPH["lesion_harvester.harvest.rounds"]
    assert "lesion_harvester.structures" in GRAPH["lesion_harvester.io.annotations"]
    assert {"lesion_harvester.settings.schema", "lesion_harvester.settings.files",
            "lesion_harvester.settings.fingerprint"} <= GRAPH["lesion_harvester.config"]
