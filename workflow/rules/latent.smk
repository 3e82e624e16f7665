# The latent path (config section `latent`, docs/latent.md 4): the autoencoder, then the dataset encoded with it.
if LATENTS:

    rule vae:
        """Fetch, read or train the autoencoder of latent.vae; its folder records the convention and its constants."""
        conda:
            "../../envs/cmt.yaml"
        input:
            data=IMAGES,
        output:
            record=result(jobs.VAE, "vae.json"),
            run=result(jobs.VAE, names.RECORD),
        params:
            cfg=subtree("latent", "seed", *TRAINING, data=IMAGE_DATA),
            out=result(jobs.VAE, ""),
            work=f"{WORK}/{jobs.VAE}",
        threads: threads_of("vae")
        resources:
            **resources_of("vae"),
        log:
            f"{RESULTS}/logs/vae.log",
        benchmark:
            f"{RESULTS}/benchmarks/vae.tsv"
        shell:
            f"{training('vae')}"
            " --out {params.out} --work {params.work} > {log} 2>&1"

    rule encode:
        """Every image of the dataset through the autoencoder: the latent zip (posterior mean and std per image)."""
        conda:
            "../../envs/cmt.yaml"
        input:
            data=IMAGES,
            vae=rules.vae.output.record,
        output:
            zip=LATENTS,
            record=result(jobs.LATENTS, "encode.json"),
        params:
            cfg=subtree("latent", *DEVICE, data=IMAGE_DATA),
            vae=subpath(input.vae, parent=True),
        threads: threads_of("encode")
        resources:
            **resources_of("encode"),
        log:
            f"{RESULTS}/logs/encode.log",
        shell:
            "python -m cmt encode --params {params.cfg:q} --vae {params.vae} --out {output.zip}"
            " --record {output.record} > {log} 2>&1"

    rule latent_lpips:
        """The latent LPIPS's backbone (latent.lpips): a latent VGG trained as a classifier on the latent zip, or a file."""
        conda:
            "../../envs/cmt.yaml"
        input:
            data=DATA,
        output:
            weights=result(jobs.LATENT_LPIPS, "backbone.safetensors"),
            run=result(jobs.LATENT_LPIPS, names.RECORD),
        params:
            cfg=subtree("latent", "seed", *TRAINING, data=config["data"]),
            out=result(jobs.LATENT_LPIPS, ""),
            work=f"{WORK}/{jobs.LATENT_LPIPS}",
        threads: threads_of("latent_lpips")
        resources:
            **resources_of("latent_lpips"),
        log:
            f"{RESULTS}/logs/latent-lpips.log",
        benchmark:
            f"{RESULTS}/benchmarks/latent-lpips.tsv"
        shell:
            f"{training('latent_lpips')}"
            " --out {params.out} --work {params.work} > {log} 2>&1"

    rule latents:
        """The latent dataset alone."""
        input:
            LATENTS,
