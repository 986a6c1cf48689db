"""The model cards (README.md) of the export folders: what the model is, what it was trained on and for how long,
its measured quality with the protocol that measured it, and the params hash. Built only from files the export
stage reads, with no timestamps, so the same inputs give the same bytes."""

from __future__ import annotations

from pipeline.export.layout import written_by


def _number(value: float | None, digits: int = 3) -> str:
    return "unavailable" if value is None else f"{value:.{digits}f}"


def _data_line(manifest: dict | None) -> str:
    if manifest is None:
        return "- data: not recorded (no manifest given)"
    counts, source = manifest["counts"], manifest["config"]
    path = f" `{source['path']}`" if source.get("path") else ""
    return (f"- data: {counts['train_images']} train / {counts['val_images']} val images, source "
            f"`{source['source']}`{path}, {counts['skipped_files']} files skipped (the prepare manifest lists each "
            "source with its SHA-256 and each skipped file with its reason)")


def _params_line(params_hash: str, sections: list[str]) -> str:
    return f"- params hash: `{params_hash}` (SHA-256 of the canonical JSON of params sections {', '.join(sections)})"


def _code_line(config: dict) -> str:
    return f"- exported by: {written_by(config)}"


def autoencoder_card(config: dict, stats: dict, manifest: dict | None, eval_recon: dict | None,
                     params_hash: str, sections: list[str]) -> str:
    vae, source = config["autoencoder"], config["source"]
    encoder, decoder = vae["encoder"], vae["decoder"]
    lines = [
        "# LiteVAE autoencoder",
        "",
        f"The EMA weights of `{source['checkpoint']}` (SHA-256 `{source['checkpoint_sha256']}`), exported by the "
        "`export_vae` stage. Load it with:",
        "",
        "```python",
        "from pipeline.export import load_autoencoder",
        "vae = load_autoencoder(\"exports/autoencoder\")",
        "z = vae.encode(\"photo.jpg\")  # normalised latents (see Latents)",
        "image = vae.decode(z)         # (1, 3, 8h, 8w) in [0, 1]; vae.decode(z, size=(H, W)) crops to the photo",
        "```",
        "",
        "## Model",
        f"- encoder: `{encoder['kind']}`" + (f" preset {encoder['preset']}" if encoder["kind"] == "litevae" else "")
        + f", {config['parameters']['encoder'] / 1e6:.2f}M parameters",
        f"- decoder: SD-VAE decoder, ch {decoder['ch']}, ch_mult {decoder['ch_mult']}, {decoder['num_res_blocks']} "
        f"res blocks, norm `{decoder['norm']}`, output `{decoder['output_type']}`, "
        f"{config['parameters']['decoder'] / 1e6:.2f}M parameters",
        f"- latents: {vae['latent_channels']} channels at 1/{config['downsampling']} of the image side",
        "",
        "## Training",
        _data_line(manifest),
        f"- steps: {source['pretrain_steps']} pretraining + {source['finetune_steps']} fine-tuning steps, "
        f"ending at {source['resolution']} px",
        _params_line(params_hash, sections),
        _code_line(config),
        "",
        "## Measured quality",
    ]
    if eval_recon is None:
        lines.append("Not measured (no eval_recon metrics given).")
    else:
        resolution = eval_recon["resolution"]
        lines += [f"`eval_recon` at {resolution} px, posterior mean decoded, 8-bit PSNR/SSIM per image, averaged:",
                  "", "| protocol | n | PSNR (dB) | SSIM | LPIPS | rFID |", "|---|---|---|---|---|---|"]
        for protocol in ("resized_views", "native_crops"):
            scores = eval_recon.get(protocol)
            if scores is None:
                lines.append(f"| {protocol} | 0 | unavailable | unavailable | unavailable | unavailable |")
                continue
            rfid = _number(scores.get("rfid"), 2) if protocol == "resized_views" else "-"
            lines.append(f"| {protocol} | {scores['n']} | {_number(scores['psnr'], 2)} | {_number(scores['ssim'])} | "
                         f"{_number(scores.get('lpips'))} | {rfid} |")
        lines += [""] + [f"- `{name}`: {text}" for name, text in sorted(eval_recon["protocols"].items())]
        lines += [f"- {name} unavailable: {reason}" for name, reason in sorted(eval_recon["unavailable"].items())]
    lines += ["", *_latent_lines(stats)]
    return "\n".join(lines) + "\n"


def _latent_lines(stats: dict) -> list[str]:
    norm = stats["normalisation"]
    return [
        "## Latents",
        f"`encode` returns x = (z - shift) * scale, the `{norm['kind']}` normalisation to mean 0 and std "
        f"{norm['target_std']} that the LDM trains on; `decode` takes such latents. Statistics of {stats['crops']} "
        f"crops at {stats['resolution']} px: {stats['source']}.",
        "",
        "| channel | mean | std |",
        "|---|---|---|",
        *[f"| {c} | {m:.4f} | {s:.4f} |" for c, (m, s) in enumerate(zip(stats["channel_mean"], stats["channel_std"]))],
        f"| all | {stats['mean']:.4f} | {stats['std']:.4f} |",
    ]


def ldm_card(config: dict, stats: dict, train: dict | None, generation: dict | None, params_hash: str,
             sections: list[str], manifest: dict | None) -> str:
    unet, source = config["unet"], config["source"]
    lines = [
        "# LiteVAE latent diffusion model",
        "",
        f"The EMA UNet of `{source['checkpoint']}` (SHA-256 `{source['checkpoint_sha256']}`), exported by the "
        f"`export_ldm` stage, with its sampler settings and latent normalisation. It decodes with the autoencoder "
        f"export `{config['autoencoder']['export']}` (weights SHA-256 `{config['autoencoder']['weights_sha256']}`).",
        "",
        "```python",
        "from pipeline.export import load_ldm",
        "ldm = load_ldm(\"exports/ldm\")",
        "images = ldm.sample(16, seed=0)  # (16, 3, r, r) in [0, 1]",
        "```",
        "",
        "## Model",
        f"- UNet: model_channels {unet['model_channels']}, channel_mult {unet['channel_mult']}, "
        f"{unet['num_res_blocks']} res blocks, attention at {unet['attention_resolutions']}, "
        f"{config['parameters'] / 1e6:.2f}M parameters",
        f"- latents: {config['latent_shape']} (nz, h, w), images {config['resolution']} px",
        f"- sampler: EDM deterministic Heun, {config['diffusion']['sampling_steps']} steps, sigma "
        f"{config['diffusion']['sigma_min']}..{config['diffusion']['sigma_max']}, rho {config['diffusion']['rho']}",
        "",
        "## Training",
        _data_line(manifest),
        f"- steps: {source['steps']} at {config['resolution']} px",
        _params_line(params_hash, sections),
        _code_line(config),
        "",
        "## Measured quality",
    ]
    if train is not None:
        lines.append("- held-out EDM loss (val latents, each at train_ldm's fixed noise levels): "
                     f"{train['val_loss_at_start']:.4f} at step 0, {train['val_loss']:.4f} at the end")
    if generation is not None:
        swd = generation["swd"]
        lines += [
            f"- `eval_generation`, {generation['num_samples']} samples, {generation['sampling_steps']} steps: FID "
            f"{_number(generation['fid'], 2)}, KID {_number(generation['kid'], 4)} (against `"
            f"{generation['headline_reference']}` crops)",
            f"- SWD {swd['samples']['mean']:.4f} (real floor {swd['real_floor']['mean']:.4f}, noise ceiling "
            f"{swd['noise_ceiling']['mean']:.4f})",
            f"- protocol: {generation['protocol']}",
            *[f"- {name} unavailable: {reason}" for name, reason in sorted(generation["unavailable"].items())],
        ]
    if train is None and generation is None:
        lines.append("Not measured (no metrics given).")
    lines += ["", *_latent_lines(stats)]
    return "\n".join(lines) + "\n"

