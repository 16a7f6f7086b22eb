"""MkDocs hook: the reference pages are generated from the code at every build, so they cannot
go stale. A page asks for a part with a marker line:

    <!-- generated: cli -->        every verb's `--help`, from pipelines.cli.build_parser()
    <!-- generated: config -->     every config key: type, default, bounds, help (the dataclass metadata
                                   that `sisa config --describe` prints)
    <!-- generated: http-api -->   every route of `sisa serve`, from the FastAPI app's OpenAPI schema

The OpenAPI schema itself is published beside the pages as reference/openapi.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import tempfile
import typing
from functools import cache
from typing import Any

from mkdocs.structure.files import File, Files

MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "reference/openapi.json", content=json.dumps(_openapi(), indent=2)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    renderers = {"cli": _cli, "config": _config, "http-api": _http_api}

    def render(match: re.Match) -> str:
        name = match.group(1)
        if name not in renderers:
            raise ValueError(f"{page.file.src_uri}: unknown generated part `{name}` (known: {', '.join(renderers)})")
        return renderers[name]()

    return MARKER.sub(render, markdown)


# --- the CLI ---------------------------------------------------------------------------------------


def _cli() -> str:
    from sisa.pipelines.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width: the pages must not depend on it
    parser = build_parser()  # every verb's module imported: the full parsers
    out = ["```text", parser.format_help().rstrip(), "```", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, verb in sub.choices.items():
        out += [f"## `sisa {name}`", "", "```text", verb.format_help().rstrip(), "```", ""]
    return "\n".join(out)


# --- the configuration -----------------------------------------------------------------------------


def _config() -> str:
    from sisa.config import SisaConfig

    out = []
    for section, cls in typing.get_type_hints(SisaConfig).items():
        out += [f"## `{section}`", ""]
        doc = (cls.__doc__ or "").strip()
        if doc and not doc.startswith(f"{cls.__name__}("):  # not the dataclass's generated signature
            out += [" ".join(doc.split()), ""]
        out += ["| key | type | default | help |", "|---|---|---|---|"]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            meta = dict(f.metadata)
            help_text = meta.pop("help", "")
            bounds = ", ".join(f"{k} {v}" for k, v in meta.items())
            cell = _cell(help_text) + (f" ({_cell(bounds)})" if bounds else "")
            out.append(f"| `{section}.{f.name}` | `{_type(hints[f.name])}` | `{default!r}` | {cell} |")
        out.append("")
    return "\n".join(out)


def _type(hint: Any) -> str:
    text = hint.__name__ if isinstance(hint, type) else str(hint)
    return _cell(text.replace("typing.", ""))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# --- the HTTP API ----------------------------------------------------------------------------------


@cache
def _openapi() -> dict:
    """The schema of the app `sisa serve` runs, built on an empty temp store (no worker, no model)."""
    from sisa.config import load_config
    from sisa.data import open_store
    from sisa.service import create_app

    with tempfile.TemporaryDirectory(prefix="sisa-docs-") as tmp:
        cfg = load_config(None, [f"store.uri={tmp}/store"])
        open_store(cfg, create=True)
        return create_app(cfg, worker=False).openapi()


def _http_api() -> str:
    spec = _openapi()
    out = [
        f"Schema version {spec['info']['version']} (OpenAPI {spec['openapi']}); the whole schema: "
        "[openapi.json](openapi.json), also served by `sisa serve` at `/openapi.json` with its own "
        "browsable page at `/docs`.",
        "",
    ]
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            out += [f"## `{method.upper()} {path}`", ""]
            text = op.get("description") or op.get("summary") or ""
            if text:
                out += [text.strip(), ""]
            out += _parameters(op) + _body(op) + _responses(op)
    out += ["## Schemas", ""]
    for name, schema in sorted(spec["components"]["schemas"].items()):
        out += [f"### `{name}`", "", *_fields(schema)]
    return "\n".join(out)


def _type_of(schema: dict) -> str:
    """A schema as one short phrase: `string (at most 200) or null`, `array of CorrectionIn`."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_type_of(s) for s in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        kind = f"array of {_type_of(schema.get('items', {}))}"
    if "enum" in schema:
        kind += " (one of " + ", ".join(f"`{v}`" for v in schema["enum"]) + ")"
    limits = {
        "minLength": "at least {} chars",
        "maxLength": "at most {} chars",
        "minimum": ">= {}",
        "maximum": "<= {}",
        "minItems": "at least {} items",
        "maxItems": "at most {} items",
    }
    said = [text.format(schema[key]) for key, text in limits.items() if key in schema]
    return kind + (f" ({', '.join(said)})" if said else "")


def _fields(schema: dict) -> list[str]:
    props = schema.get("properties", {})
    if not props:
        return [f"{_cell(_type_of(schema))}", ""]
    required = set(schema.get("required", []))
    rows = ["| field | type | required | default |", "|---|---|---|---|"]
    for name, prop in props.items():
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        rows.append(f"| `{name}` | {_cell(_type_of(prop))} | {'yes' if name in required else 'no'} | {default} |")
    return [*rows, ""]


def _parameters(op: dict) -> list[str]:
    params = op.get("parameters", [])
    if not params:
        return []
    rows = ["| parameter | in | required | type |", "|---|---|---|---|"]
    for p in params:
        req = "yes" if p.get("required") else "no"
        rows.append(f"| `{p['name']}` | {p['in']} | {req} | {_cell(_type_of(p.get('schema', {})))} |")
    return [*rows, ""]


def _body(op: dict) -> list[str]:
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" not in content:
        return []
    return [f"Body (JSON): {_type_of(content['application/json']['schema'])}", ""]


def _responses(op: dict) -> list[str]:
    codes = ", ".join(f"`{code}` {r.get('description', '')}".rstrip() for code, r in op.get("responses", {}).items())
    return [f"Responses: {codes}", ""] if codes else []
