if DATASET:

    rule dataset:
        """The EDM-format zip of data.build (CIFAR-10 tarball or an image folder), with its sha256 record."""
        conda:
            "../../envs/cmt.yaml"
        input:
            archive=config["data"]["build"]["archive"],
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
