"""Family coverage (issue 12): every model class the installed export_llm accepts has a family.

The classes are read from the installed executorch's ``LlmConfig`` source (its ``ModelType``
enum), parsed rather than imported so that the test needs no torch start-up.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from etm_compat.infer.inference import infer_from_parts
from etm_compat.prompt.families import get_family, load_registry

REGISTRY = load_registry()


def export_llm_model_classes() -> list[str]:
    """The values of ``executorch.extension.llm.export.config.llm_config.ModelType``."""
    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("executorch is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    source = root / "extension" / "llm" / "export" / "config" / "llm_config.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    enum = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "ModelType")
    return [
        node.value.value
        for node in enum.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
    ]


def test_the_enum_is_the_one_issue_12_names() -> None:
    classes = set(export_llm_model_classes())
    assert {"stories110m", "qwen3_5_0_8b", "lfm2_350m", "lfm2_5_1_2b", "phi_4_mini"} <= classes


@pytest.mark.parametrize("model_class", export_llm_model_classes())
def test_every_export_llm_model_class_names_a_family(model_class: str) -> None:
    listed = [fid for fid, f in REGISTRY.items() if model_class in f.model_classes]
    assert listed, f"no family lists model_class {model_class!r}"
    export = {"base": {"model_class": model_class}}
    result = infer_from_parts(pte=None, tokenizer=None, configs={"export_config": export})
    assert result.family_id in listed
    assert {result.family_id, *result.family_alternatives} == set(listed)
    assert "export_config.yaml" in {e.source for e in result.family_evidence}


def test_static_llama_is_an_architecture_that_the_tokenizer_must_settle() -> None:
    export = {"base": {"model_class": "static_llama"}}
    result = infer_from_parts(pte=None, tokenizer=None, configs={"export_config": export})
    assert {result.family_id, *result.family_alternatives} == {
        "llama2",
        "llama3",
        "llama3_1",
        "llama3_2",
    }
    assert "family-ambiguous" in {f.code for f in result.findings}


def test_stories110m_has_no_template_and_is_named_by_its_class_or_file() -> None:
    stories = get_family("stories110m")
    assert stories.templates() == {}
    export = {"base": {"model_class": "stories110m"}}
    by_class = infer_from_parts(pte=None, tokenizer=None, configs={"export_config": export})
    assert by_class.family_id == "stories110m" and by_class.family_confidence == "medium"
    assert by_class.chat_template is None and by_class.chat_template_source is None
    by_name = infer_from_parts(pte=None, tokenizer=None, configs={}, file_names=["stories110M.pte"])
    assert by_name.family_id == "stories110m" and by_name.family_confidence == "low"


@pytest.mark.parametrize(
    ("file_name", "family"),
    [
        ("qwen3_5_0_8b.pte", "qwen3_5"),
        ("LFM2.5-1.2B-Instruct.pte", "lfm2_5"),
        ("lfm2_700m_fp32.pte", "lfm2"),
        ("smollm3-3b-INT8-INT4.pte", "smollm3"),
        ("llava.pte", "llava"),
        ("gemma4_e2b.pte", "gemma4"),
        ("granite-3.3-2b.pte", "granite"),
    ],
)
def test_file_names_of_the_new_families(file_name: str, family: str) -> None:
    result = infer_from_parts(pte=None, tokenizer=None, configs={}, file_names=[file_name])
    assert result.family_id == family and result.family_confidence == "low"
