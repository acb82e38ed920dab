"""Every snippet a user copies runs: the docstrings' examples (doctest), the ```python blocks
of README.md and docs/*.md, and docs/api.md matches the docstrings it is generated from.

A ```python block runs as a doctest when it has ``>>>`` prompts (so shown outputs and error
messages are checked), else with exec; the blocks of one file share a namespace, in order,
as a reader running them one after another would. A block preceded by a line
``<!-- doc-test: skip (reason) -->`` is not run: for GPU-only or multi-process snippets."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gumbel_ext

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import gen_api_docs  # noqa: E402

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!--\s*doc-test:\s*skip\b[^>]*-->\s*$")
# Every public module of the package (no leading underscore), found rather than listed, so
# that a new module's docstring examples run too. DocTestFinder only collects the objects
# defined in the module it is given, so each example runs once.
MODULES = ["gumbel_ext", *sorted(f"gumbel_ext.{m.name}" for m in pkgutil.iter_modules(gumbel_ext.__path__)
                                  if not m.name.startswith("_"))]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def python_blocks(text: str):
    """(line number, code) of each ```python block not marked skip. The generated part of
    api.md is left out: its examples are the docstrings', doctested from the modules below
    with the modules' own globals, and test_api_md_is_generated pins it to them."""
    if gen_api_docs.BEGIN in text:
        head, rest = text.split(gen_api_docs.BEGIN, 1)
        text = head + "\n" * rest.split(gen_api_docs.END, 1)[0].count("\n") + rest.split(gen_api_docs.END, 1)[1]
    for m in FENCE.finditer(text):
        if m.group(1) != "python":
            continue
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if SKIP.search(before):
            continue
        yield text.count("\n", 0, m.start()) + 1, m.group(2)


def run_block(code: str, namespace: dict, name: str, line: int) -> None:
    if ">>>" in code:
        test = doctest.DocTestParser().get_doctest(code, namespace, name, name, line)
        runner = doctest.DocTestRunner(optionflags=FLAGS)
        runner.run(test, clear_globs=False)
        assert runner.failures == 0, f"{name}:{line}: a doctest in this block failed (output above)"
    else:
        exec(compile(code, f"{name}:{line}", "exec"), namespace)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_python_blocks_run(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": "__doc_snippet__"}
    try:
        for line, code in python_blocks(path.read_text()):
            run_block(code, namespace, str(path.relative_to(ROOT)), line)
    finally:
        gumbel_ext.unpatch_torch()  # a snippet may have patched torch


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    mod = importlib.import_module(module)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    try:
        for test in finder.find(mod, module, globs=vars(mod).copy()):
            runner.run(test)
    finally:
        gumbel_ext.unpatch_torch()
    assert runner.failures == 0, f"{runner.failures} docstring example(s) of {module} failed (output above)"


def test_the_doc_runner_catches_a_wrong_snippet():
    """The two runners must fail on a broken snippet, or the tests above prove nothing."""
    with pytest.raises(AssertionError):
        run_block(">>> 1 + 1\n3\n", {}, "wrong-output", 1)
    with pytest.raises(AssertionError):  # an error message that drifted from the docs
        run_block(">>> gumbel_ext.gumbel_softmax(torch.ones(2), tau=0)\nTraceback (most recent call last):\n"
                  "ValueError: gumbel_ext: tau must be positive\n", {"gumbel_ext": gumbel_ext, "torch": torch}, "drift", 1)
    with pytest.raises(NameError):
        run_block("undefined_name + 1\n", {}, "exec", 1)
    blocks = list(python_blocks("```python\nrun()\n```\n<!-- doc-test: skip (GPU) -->\n```python\nskipped()\n```\n"))
    assert [code for _, code in blocks] == ["run()\n"]


def test_api_md_is_generated_from_the_docstrings():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_api_docs.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_api_md_check_detects_drift(monkeypatch):
    text = gen_api_docs.API_MD.read_text()
    assert gen_api_docs.splice(text, gen_api_docs.generated()) == text
    monkeypatch.setattr(gumbel_ext.sample, "__doc__", gumbel_ext.sample.__doc__.replace("Gumbel-max", "Gumbel-min"))
    assert gen_api_docs.splice(text, gen_api_docs.generated()) != text


@pytest.mark.parametrize("name", [n for n in gumbel_ext.__all__ if callable(getattr(gumbel_ext, n))])
def test_public_parameters_are_documented(name):
    """The docstring's Parameters section names exactly the signature's parameters."""
    obj = getattr(gumbel_ext, name)
    documented_sections = gen_api_docs.split_sections(inspect.getdoc(obj))[1]
    params = [p for p in inspect.signature(obj).parameters]
    entries = gen_api_docs.parse_parameters(documented_sections.get("Parameters", ""))
    # NumPy style allows one entry for several: "seeds, offsets : int64 Tensor"
    documented = [n.strip() for entry, _, _ in entries for n in entry.split(",")]
    assert documented == params, f"gumbel_ext.{name}: signature {params}, docstring documents {documented}"


def heading_anchors(text: str) -> set:
    """The anchors GitHub gives a Markdown file's headings: lowercased, punctuation dropped,
    spaces to hyphens, a repeated one suffixed -1, -2, ... (fenced code is not headings)."""
    text = FENCE.sub("", text)
    seen: dict = {}
    anchors = set()
    for title in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_relative_links_in_docs_resolve():
    """Every relative link of the README and docs/ points at a file that exists, and a link
    to a heading of a Markdown file (file.md#heading) at a heading that exists."""
    link = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)")
    for path in DOC_FILES:
        for target, anchor in link.findall(path.read_text()):
            if "://" in target:
                continue
            file = (path.parent / target) if target else path
            assert file.exists(), f"{path.relative_to(ROOT)} links to {target}, which does not exist"
            if anchor and file.suffix == ".md":
                assert anchor in heading_anchors(file.read_text()), (
                    f"{path.relative_to(ROOT)} links to {target}#{anchor}: no such heading in {file.name}"
                )


def test_heading_anchors_follow_github():
    text = "# API reference\n## Loading and environment variables\n### `gumbel_ext.sample`\n" \
           "## The documentation's code\n## Errors\n## Errors\n```python\n# not a heading\n```\n"
    assert heading_anchors(text) == {"api-reference", "loading-and-environment-variables", "gumbel_extsample",
                                     "the-documentations-code", "errors", "errors-1"}
