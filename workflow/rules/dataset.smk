if DATASET:

    rule dataset:
        """The EDM-format zip of data.build (CIFAR-10 tarball or an image folder), with its sha256 record."""
        conda:
            "../../envs/cmt.yaml"
        input:
            # tracked when present; a missing archive fails the job at once naming it (a dry run still plans it)
            archive=[a for a in [config["data"]["build"]["archive"]] if os.path.exists(a)],
        output:
            zip=DATASET,
            record=result(jobs.DATASET, "build.json"),
        params:
            cfg=subtree(data={"build": config["data"]["build"]}),
        threads: threads_of("dataset")
        resources:
            **resources_of("dataset"),
        log:
            f"{RESULTS}/logs/dataset.log",
        shell:
            "python -m cmt dataset --params {params.cfg:q} --out {output.zip} --record {output.record} > {log} 2>&1"
