"""`twin image` (model images from imported or random-weight models) and `twin fit` (memory fit per
platform). Registered on the main group at the bottom of twin/cli/main.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from twin.cli.main import TwinCliError

SHAPE_OPTIONS = ("dim", "layers", "heads", "kv_heads", "hidden", "vocab")


def _float_model(source: str | None, shape: dict, seed: int, context: int | None, tokenizer: str | None = None):
    """The float model: imported from a file, random of a given shape, or the built-in one."""
    from twin.model import modelgen
    from twin.model.importers import ModelFileError, load_model

    given = {k: v for k, v in shape.items() if v is not None}
    if source and given:
        raise TwinCliError(f"--{next(iter(given)).replace('_', '-')} makes a random-weight model; "
                           "it cannot be combined with --from")
    if tokenizer and source in (None, "builtin"):
        raise TwinCliError("--tokenizer is for an imported model: add --from PATH")
    try:
        if source in (None, "builtin") and not given:
            model = modelgen.builtin_model()
        elif source not in (None, "builtin"):
            model = load_model(source, tokenizer=tokenizer)
        else:
            base = modelgen.ModelConfig()
            c = modelgen.ModelConfig(
                dim=given.get("dim", base.dim), hidden_dim=given.get("hidden", base.hidden_dim),
                n_layers=given.get("layers", base.n_layers), n_heads=given.get("heads", base.n_heads),
                n_kv_heads=given.get("kv_heads", base.n_kv_heads), vocab_size=given.get("vocab", base.vocab_size),
                seq_len=context or base.seq_len, name=f"random-d{given.get('dim', base.dim)}")
            model = modelgen.generate_model(c, seed=seed)
    except (ModelFileError, ValueError) as exc:
        raise TwinCliError(str(exc)) from None
    if context is not None and context != model.config.seq_len:
        model = dataclasses.replace(model, config=dataclasses.replace(model.config, seq_len=context))
    return model


def _no_tokenizer_note(source: Path) -> str:
    note = (f"note: no tokenizer found for {source} (tokenizer.json beside config.json or the .onnx, "
            "tokenizer.bin beside a llama2.c .bin): --prompt and the decoded text will be byte-level; "
            "name one with --tokenizer FILE")
    if (source / "tokenizer.model").is_file() or source.with_name("tokenizer.model").is_file():
        note += (". A sentencepiece tokenizer.model is not read: convert it once with transformers, "
                 "AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR), which writes tokenizer.json")
    return note


def _image(model, bits: int, group_size: int, kv_cache: str = "f32") -> bytes:
    from twin.model.image import write_image

    try:
        return write_image(model, bits=bits, group_size=group_size, kv_cache=kv_cache)
    except ValueError as exc:
        raise TwinCliError(f"cannot quantize: {exc}") from None


def _shape_options(f):
    for opt in reversed([
        click.option("--dim", type=click.IntRange(2), help="Model width (random weights)."),
        click.option("--layers", type=click.IntRange(1), help="Decoder layers (random weights)."),
        click.option("--heads", type=click.IntRange(1), help="Attention heads (random weights)."),
        click.option("--kv-heads", "kv_heads", type=click.IntRange(1), help="KV heads (random weights)."),
        click.option("--hidden", type=click.IntRange(1), help="FFN hidden width (random weights)."),
        click.option("--vocab", type=click.IntRange(1), help="Vocabulary size (random weights)."),
    ]):
        f = opt(f)
    return f


@click.command("image")
@click.option("--from", "source", default=None,
              help="Model to import: llama2.c .bin, Hugging Face directory, .onnx, twin .npz, or 'builtin'.")
@_shape_options
@click.option("--context", type=click.IntRange(1, 16384), default=None, help="Context length (KV cache size).")
@click.option("--bits", default=4, show_default=True, type=int, help="Weight bits.")
@click.option("--group-size", default=32, show_default=True, type=int)
@click.option("--kv-cache", type=click.Choice(["f32", "int8"]), default="f32", show_default=True,
              help="The firmware's KV-cache element type for this image (int8: a quarter of the RAM).")
@click.option("--tokenizer", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Tokenizer of the imported model (tokenizer.json, tokenizer.bin, twin JSON) "
                   "[default: the one beside it].")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed of random weights.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def image_cmd(source, context, bits, group_size, kv_cache, tokenizer, seed, output, as_json, **shape) -> None:
    """Write a quantized model image (.twlm): imported, the built-in model, or random weights of any
    shape (--dim/--layers/--heads/--kv-heads/--hidden/--vocab) for performance what-ifs."""
    from twin.atomic import OutputPathError, check_output_path, open_atomic
    from twin.model.tokenizer import sidecar_path

    tok_path = sidecar_path(output)
    try:   # before any import or quantization: a bad -o is one line, not a lost run
        check_output_path(output, "-o")
        check_output_path(tok_path, "the tokenizer sidecar")
    except OutputPathError as exc:
        raise TwinCliError(str(exc)) from None
    model = _float_model(source, shape, seed, context, tokenizer)
    if source not in (None, "builtin") and model.tokenizer is None:
        click.echo(_no_tokenizer_note(Path(source)), err=True)
    data = _image(model, bits, group_size, kv_cache)
    try:   # whole files or none: the previous image survives a full disk (twin/atomic.py)
        with open_atomic(output, "wb") as f:
            f.write(data)
            if model.tokenizer is not None:
                with open_atomic(tok_path, "w") as t:
                    t.write(model.tokenizer.to_json())
        if model.tokenizer is None and tok_path.exists():
            tok_path.unlink()
    except OSError as exc:
        raise TwinCliError(f"cannot write {output}: {exc.strerror or exc}; the previous file, if any, "
                           "is unchanged") from None
    c = model.config
    params = int(model.tok_emb.size) + int(model.final_norm.size) + sum(
        int(getattr(layer, f).size) for layer in model.layers for f in layer.__dataclass_fields__)
    params += 0 if model.classifier is None else int(model.classifier.size)
    info = {"output": str(output), "bytes": len(data), "name": c.name, "parameters": params,
            "dim": c.dim, "hidden_dim": c.hidden_dim, "n_layers": c.n_layers, "n_heads": c.n_heads,
            "n_kv_heads": c.n_kv_heads, "vocab_size": c.vocab_size, "seq_len": c.seq_len, "bits": bits,
            "group_size": group_size, "kv_cache": kv_cache, "tokenizer": str(tok_path) if model.tokenizer is not None else None}
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(f"{output}: {len(data):,} bytes · {c.name} · {params:,} parameters · dim {c.dim} · "
                   f"{c.n_layers} layers · {c.n_heads}/{c.n_kv_heads} heads · hidden {c.hidden_dim} · "
                   f"vocab {c.vocab_size} · context {c.seq_len} · {bits}-bit g{group_size} · KV {kv_cache}")


@click.command("fit")
@click.option("--model", "model_spec", default="builtin", show_default=True,
              help="'builtin', a model image (.twlm), or a model file to import and quantize.")
@_shape_options
@click.option("--bits", default=4, show_default=True, type=int, help="Weight bits (not for a .twlm).")
@click.option("--group-size", default=32, show_default=True, type=int)
@click.option("--context", type=click.IntRange(1, 16384), default=None, help="Context length to check.")
@click.option("--kv-cache", type=click.Choice(["f32", "int8"]), default=None,
              help="KV-cache element type [default: a .twlm's own, else f32]; a model that is not a .twlm "
                   "is written with this cache type.")
@click.option("--platform", "platform_ids", multiple=True, help="Platform id (repeatable; default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
def fit_cmd(model_spec, bits, group_size, context, kv_cache, platform_ids, as_json, **shape) -> None:
    """Does the model fit each platform's flash and RAM? Headroom and the largest context that fits."""
    from twin.device.build import BuildError
    from twin.model.fit import FitError, fit
    from twin.model.image import ImageError, read_image
    from twin.platforms import PlatformError, all_platforms, get_platform

    path = Path(model_spec)
    if model_spec != "builtin" and path.is_file() and path.read_bytes()[:4] == b"TWLM":
        data = path.read_bytes()
        try:
            read_image(data)
        except ImageError as exc:
            raise TwinCliError(f"{path}: {exc}") from None
    else:
        model = _float_model(None if model_spec == "builtin" else model_spec, shape, 0, None)
        data = _image(model, bits, group_size, kv_cache or "f32")
    kv_cache = kv_cache or read_image(data).kv_cache
    try:
        platforms = [get_platform(p) for p in platform_ids] if platform_ids else list(all_platforms().values())
        rows = fit(data, platforms, context=context, kv_cache=kv_cache)
    except (PlatformError, BuildError, FitError) as exc:
        raise TwinCliError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    other = "int8" if kv_cache == "f32" else "f32"
    click.echo(f"model image {len(data):,} bytes · KV cache {kv_cache} (the image's: {read_image(data).kv_cache})")
    click.echo(f"{'platform':<17}{'fits':<6}{'flash B':>10}{'headroom':>11}{'RAM B':>10}{'headroom':>11}"
               f"{'context':>9}{'max ctx':>9}{'max ctx ' + other:>15}")
    for r in rows:
        if r.get("error"):
            click.echo(f"{r['platform']:<17}{'?':<6}{r['error']}")
            continue
        verdict = "yes" if r["fits"] else "NO"
        est = " (estimated from " + r["basis"] + ")" if r["estimated"] else ""
        click.echo(f"{r['platform']:<17}{verdict:<6}{r['flash_bytes']:>10,}{r['flash_headroom_bytes']:>11,}"
                   f"{r['ram_bytes']:>10,}{r['ram_headroom_bytes']:>11,}{r['context']:>9}{r['max_context']:>9}"
                   f"{r['kv_' + other]['max_context']:>15}{est}")
