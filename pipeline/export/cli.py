"""`litevae` (also `python -m pipeline.export`): the exported models from the command line.

    litevae reconstruct photos/ --out recon/          # reconstructions + metrics.csv (PSNR/SSIM per image)
    litevae encode photos/ --out latents/             # one .safetensors latent file per image
    litevae decode latents/ --out decoded/            # back to PNG, at each image's own size
    litevae sample -n 16 --seed 0 --out grid.png      # a grid of samples from the LDM export

Folders are searched recursively (jpg, png, webp, bmp, tiff); outputs keep their relative paths. An unreadable
image is skipped with the prepare stage's reason, listed at the end and in `skipped.csv`,
and the others are processed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

DEFAULT_AUTOENCODER = "exports/autoencoder"
DEFAULT_LDM = "exports/ldm"
LATENT_SUFFIX = ".safetensors"


def _files(inputs: list[Path], suffixes: tuple[str, ...]) -> Iterator[tuple[Path, Path]]:
    """(file, path relative to its input) for every file given, and every file with `suffixes` under a folder."""
    for item in inputs:
        if item.is_dir():
            for path in sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in suffixes):
                yield path, path.relative_to(item)
        else:
            yield item, Path(item.name)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    import csv
    import io

    from pipeline.core.files import write_bytes

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows([header, *rows])
    write_bytes(path, buffer.getvalue().encode())


def _report_skipped(out: Path, skipped: list[list[str]]) -> None:
    if not skipped:
        return
    _write_csv(out / "skipped.csv", ["file", "reason"], skipped)
    print(f"skipped {len(skipped)} unreadable image(s), listed in {out / 'skipped.csv'}:", file=sys.stderr)
    for file, reason in skipped:
        print(f"  {file}: {reason}", file=sys.stderr)


def reconstruct(args: argparse.Namespace) -> int:
    """Reconstruct every image; metrics.csv holds 8-bit PSNR/SSIM against the (optionally resized) input."""
    import torch
    from tqdm import tqdm

    from pipeline.core.files import write_bytes
    from pipeline.data.images import IMAGE_EXTENSIONS, encode_png
    from pipeline.data.views import resize_square, square_views
    from pipeline.export import load_autoencoder
    from pipeline.export.inputs import UnreadableImage, quantise, read_image
    from pipeline.measures.quality import SSIM_WINDOW, psnr, ssim

    vae = load_autoencoder(args.autoencoder, _device(args.device), args.max_tile_pixels)
    rows, skipped = [], []
    for path, relative in tqdm(list(_files(args.inputs, IMAGE_EXTENSIONS)), desc="reconstruct", unit="img"):
        try:
            pixels = read_image(path)  # (H, W, 3) uint8
        except UnreadableImage as err:
            skipped.append([str(path), str(err).removeprefix(f"{path}: ")])
            continue
        if args.resized_view:  # eval_recon's resized_views protocol: the central square resized to r x r
            pixels = resize_square(square_views(pixels, 1, 0, 0)[0], args.resized_view)
        reference = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W) uint8
        output = quantise(vae.reconstruct(reference))  # (1, 3, H, W) uint8
        write_bytes((args.out / relative).with_suffix(".png"), encode_png(output[0].permute(1, 2, 0).numpy()))
        score = float(ssim(reference, output)[0]) if min(pixels.shape[:2]) >= SSIM_WINDOW else ""
        rows.append([str(relative), pixels.shape[1], pixels.shape[0], repr(float(psnr(reference, output)[0])),
                     repr(score) if score != "" else ""])
    _write_csv(args.out / "metrics.csv", ["file", "width", "height", "psnr", "ssim"], rows)
    if rows:
        mean = sum(float(row[3]) for row in rows) / len(rows)
        print(f"{len(rows)} image(s) reconstructed into {args.out}; mean PSNR {mean:.2f} dB (metrics.csv)")
    _report_skipped(args.out, skipped)
    return 0


def encode(args: argparse.Namespace) -> int:
    """One latent file per image: tensor `latents` (1, nz, h, w), normalised as the LDM expects, and the image
    size in the metadata."""
    from safetensors.torch import save
    from tqdm import tqdm

    from pipeline.core.files import write_bytes
    from pipeline.data.images import IMAGE_EXTENSIONS
    from pipeline.export import load_autoencoder
    from pipeline.export.inputs import UnreadableImage

    vae = load_autoencoder(args.autoencoder, _device(args.device), args.max_tile_pixels)
    skipped = []
    for path, relative in tqdm(list(_files(args.inputs, IMAGE_EXTENSIONS)), desc="encode", unit="img"):
        try:
            posterior = vae.encode_distribution(path)
        except UnreadableImage as err:
            skipped.append([str(path), str(err).removeprefix(f"{path}: ")])
            continue
        height, width = posterior.image_size
        metadata = {"image_height": str(height), "image_width": str(width), "normalised": "true"}
        write_bytes((args.out / relative).with_suffix(LATENT_SUFFIX),
                    save({"latents": posterior.mode().cpu().contiguous()}, metadata))
    _report_skipped(args.out, skipped)
    return 0


def decode(args: argparse.Namespace) -> int:
    """Decode latent files written by `encode` to PNG images at their original sizes."""
    from safetensors import safe_open
    from tqdm import tqdm

    from pipeline.core.errors import UserError
    from pipeline.core.files import write_bytes
    from pipeline.data.images import encode_png
    from pipeline.export import load_autoencoder
    from pipeline.export.inputs import quantise

    vae = load_autoencoder(args.autoencoder, _device(args.device), args.max_tile_pixels)
    for path, relative in tqdm(list(_files(args.inputs, (LATENT_SUFFIX,))), desc="decode", unit="file"):
        with safe_open(str(path), framework="pt") as handle:
            if "latents" not in handle.keys():
                raise UserError(f"{path}: no tensor 'latents'; decode takes the files `litevae encode` writes")
            latents, metadata = handle.get_tensor("latents"), handle.metadata() or {}
        size = (int(metadata["image_height"]), int(metadata["image_width"])) if "image_height" in metadata else None
        image = quantise(vae.decode(latents, size))[0]  # (3, H, W)
        write_bytes((args.out / relative).with_suffix(".png"), encode_png(image.permute(1, 2, 0).numpy()))
    return 0


def sample(args: argparse.Namespace) -> int:
    """A grid of `n` samples (rows of 8) from the LDM export."""
    import torch
    from tqdm import tqdm

    from pipeline.core.files import write_bytes
    from pipeline.export import load_ldm
    from pipeline.export.inputs import quantise
    from pipeline.ldm.sampling import sample_grid

    ldm = load_ldm(args.ldm, args.autoencoder, _device(args.device))
    starts = range(0, args.n, args.batch_size)
    images = [quantise(ldm.sample(min(args.batch_size, args.n - start), args.seed, args.steps, start))
              for start in tqdm(starts, desc="sample", unit="batch")]
    steps = args.steps or ldm.diffusion.diffusion.sampling_steps
    write_bytes(args.out, sample_grid(torch.cat(images), f"litevae sample: {args.ldm}, {steps} Heun steps", args.seed))
    print(f"{args.n} samples written to {args.out}")
    return 0


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="litevae", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = main.add_subparsers(dest="command", required=True)

    def command(name: str, run, help: str, inputs: str | None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        if inputs:
            sub.add_argument("inputs", type=Path, nargs="+", help=inputs)
        sub.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
        sub.set_defaults(run=run)
        return sub

    for sub in (command("reconstruct", reconstruct, "reconstruct images, score them", "image files or folders"),
                command("encode", encode, "encode images to latent files", "image files or folders"),
                command("decode", decode, "decode latent files to images", "latent files or folders")):
        sub.add_argument("--out", type=Path, required=True, help="output folder")
        sub.add_argument("--autoencoder", type=Path, default=Path(DEFAULT_AUTOENCODER), help="autoencoder export")
        sub.add_argument("--max-tile-pixels", type=int, default=1024 * 1024,
                         help="larger images are encoded and decoded in blended tiles of at most this many pixels")
    commands.choices["reconstruct"].add_argument(
        "--resized-view", type=int, metavar="R",
        help="score each image's central square resized to R x R (eval_recon's resized_views protocol at R)")
    sampler = command("sample", sample, "sample a grid of images from the LDM export", None)
    sampler.add_argument("--ldm", type=Path, default=Path(DEFAULT_LDM), help="LDM export folder")
    sampler.add_argument("--autoencoder", type=Path, help="autoencoder export (default: the one the LDM names)")
    sampler.add_argument("-n", type=int, default=16, help="number of samples")
    sampler.add_argument("--seed", type=int, default=0)
    sampler.add_argument("--steps", type=int, help="Heun steps (default: the export's)")
    sampler.add_argument("--batch-size", type=int, default=16)
    sampler.add_argument("--out", type=Path, required=True, help="PNG file of the grid")
    return main


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.environment import apply_defaults
    from pipeline.core.errors import USER_ERROR_EXIT, UserError

    apply_defaults()
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT
