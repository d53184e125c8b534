"""Render the Kubernetes manifest templates with the Terraform outputs.

The templates under infra/k8s/{base,cluster,jobs}/ name every image, bucket, role, service
account and the namespace only as `${output_name}`, where `output_name` is an output of
infra/terraform. This fills them in and writes the result under build/k8s/ (git-ignored):

    python infra/k8s/render.py                    # runs `terraform -chdir=infra/terraform output -json`
    python infra/k8s/render.py --outputs tf.json  # or reads a saved `terraform output -json`
    kubectl apply -f build/k8s/base/

A placeholder without a matching output fails the whole render, naming file, line and name,
before anything is written. Kubernetes' own `$(VAR)` references are left alone.

A few values exist only once a stage has run, such as the fingerprint of the feature store the
training jobs read. They are not Terraform outputs; give them with `--set NAME=VALUE` (RUN_VALUES).
A template that needs one that is not given is left out and named, and the rest render:

    python infra/k8s/render.py --set pretrain_fingerprint=50aefdc85b1e0995   # after extract-features
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TEMPLATE_DIRS = ("base", "cluster", "jobs")
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Values land inside YAML scalars (often double-quoted): these characters would change the document.
UNSAFE_VALUE = re.compile(r'["\\\n\r\t]')
FINGERPRINT = r"[0-9a-f]{16}"  # pipelines/features/store.py: 16 hex digits of the store identity's sha256

# Placeholders filled with `--set NAME=VALUE` instead of a Terraform output: name -> (pattern, what it is).
RUN_VALUES: dict[str, tuple[str, str]] = {
    "pretrain_fingerprint": (FINGERPRINT, "the fingerprint of the feature store extract-features wrote"),
    "instruct_fingerprint": (FINGERPRINT, "the fingerprint of the feature store extract-features-instruct wrote"),
}


class RenderError(ValueError):
    """A template that cannot be filled from the outputs."""


def templates(root: Path = HERE) -> list[Path]:
    """Every manifest template, in apply order (directory, then file name)."""
    return [p for d in TEMPLATE_DIRS for p in sorted((root / d).glob("*.yaml"))]


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def run_values_needed(text: str) -> set[str]:
    return placeholders(text) & RUN_VALUES.keys()


def parse_run_values(items: list[str]) -> dict[str, dict]:
    """`["NAME=VALUE", ...]` from --set -> outputs-shaped {name: {"value": ...}}, each checked against RUN_VALUES."""
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in RUN_VALUES:
            raise RenderError(f"--set {item!r}: expected NAME=VALUE with NAME one of {', '.join(RUN_VALUES)}")
        pattern, what = RUN_VALUES[name]
        if not re.fullmatch(pattern, value):
            raise RenderError(f"--set {name}={value!r}: expected {what}, matching {pattern}")
        values[name] = {"value": value, "sensitive": False}
    return values


def deferred(values: dict[str, dict], root: Path = HERE) -> dict[Path, list[str]]:
    """Templates left out because they need run values not in `values`: {template: [names]}."""
    out = {}
    for path in templates(root):
        missing = run_values_needed(path.read_text()) - values.keys()
        if missing:
            out[path] = sorted(missing)
    return out


def parse_outputs(raw: str, source: str) -> dict[str, dict]:
    """`terraform output -json` text -> {name: {"value": ..., "sensitive": bool}}."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise RenderError(f"{source}: not JSON from `terraform output -json`: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "value" in v for v in data.values()):
        raise RenderError(f"{source}: expected `terraform output -json` format: {{name: {{value: ...}}}}")
    if not data:
        raise RenderError(f"{source}: no outputs; run `terraform apply` in infra/terraform first")
    return data


def terraform_outputs(tf_dir: Path) -> dict[str, dict]:
    """Outputs of the applied stack in `tf_dir`."""
    cmd = ["terraform", f"-chdir={tf_dir}", "output", "-json"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise RenderError("terraform not found on PATH; install it or pass --outputs FILE") from None
    if proc.returncode != 0:
        raise RenderError(f"`{' '.join(cmd)}` failed:\n{proc.stderr.strip()}")
    return parse_outputs(proc.stdout, f"terraform output in {tf_dir}")


def _value(name: str, outputs: dict[str, dict], where: str) -> str:
    """The string to substitute for `${name}`, or the reason there is none."""
    if name not in outputs:
        known = ", ".join(sorted(outputs))
        raise RenderError(f"{where}: ${{{name}}} has no Terraform output named {name!r}; outputs: {known}")
    out = outputs[name]
    if out.get("sensitive"):
        raise RenderError(f"{where}: ${{{name}}} is a sensitive output; manifests must not embed secrets")
    value = out["value"]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RenderError(f"{where}: ${{{name}}} is {type(value).__name__} {value!r}, not a string")
    text = str(value)
    if not text or UNSAFE_VALUE.search(text):
        raise RenderError(f"{where}: ${{{name}}} = {text!r} is empty or has quotes, backslashes or newlines")
    return text


def render_text(text: str, outputs: dict[str, dict], source: str) -> str:
    """Substitute every placeholder in `text`; all problems are reported together."""
    errors: list[str] = []
    lines = []
    for lineno, line in enumerate(text.splitlines(keepends=True), start=1):

        def sub(m: re.Match, where: str = f"{source}:{lineno}") -> str:
            try:
                return _value(m.group(1), outputs, where)
            except RenderError as e:
                errors.append(str(e))
                return m.group(0)

        lines.append(PLACEHOLDER.sub(sub, line))
    if errors:
        raise RenderError("\n".join(errors))
    rendered = "".join(lines)
    try:
        list(yaml.safe_load_all(rendered))
    except yaml.YAMLError as e:
        raise RenderError(f"{source}: not valid YAML after substitution: {e}") from None
    return rendered


def render_tree(
    outputs: dict[str, dict], out_dir: Path, root: Path = HERE, values: dict[str, dict] | None = None
) -> list[Path]:
    """Render every template under `root` into `out_dir`, keeping the base/cluster/jobs layout.

    `values` are the run values (`parse_run_values`); templates that need one not given are skipped
    (`deferred`). Nothing is written unless every other template renders.
    """
    values = values or {}
    skip = deferred(values, root)
    rendered: dict[Path, str] = {}
    errors: list[str] = []
    for path in templates(root):
        if path in skip:
            continue
        rel = path.relative_to(root)
        try:
            rendered[rel] = render_text(path.read_text(), {**outputs, **values}, str(rel))
        except RenderError as e:
            errors.append(str(e))
    if errors:
        raise RenderError("\n".join(errors))
    written = []
    for rel, text in rendered.items():
        dest = out_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outputs", type=Path, help="saved `terraform output -json` (default: ask terraform)")
    parser.add_argument("--tf-dir", type=Path, default=REPO / "infra" / "terraform", help="Terraform stack")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "k8s", help="where rendered manifests go")
    parser.add_argument(
        "--set",
        dest="values",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"a value known only after a stage ran (repeatable): {', '.join(RUN_VALUES)}",
    )
    args = parser.parse_args(argv)
    try:
        values = parse_run_values(args.values)
        if args.outputs is not None:
            outputs = parse_outputs(args.outputs.read_text(), str(args.outputs))
        else:
            outputs = terraform_outputs(args.tf_dir)
        written = render_tree(outputs, args.out, values=values)
    except (RenderError, OSError) as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    for path, names in deferred(values).items():
        needs = "; ".join(f"--set {n}=VALUE, {RUN_VALUES[n][1]}" for n in names)
        print(f"not rendered: {path.relative_to(HERE)} needs {needs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
