rule gradient_bias:
    """ECT's expected gradient against the oracle objective's on Gaussian data, from three inits (config section
    gradient_bias; cmt/stages/gradient_bias.py)."""
    conda:
        "../../envs/cmt.yaml"
    output:
        record=result(jobs.GRADIENT_BIAS, names.RECORD),
        table=result(jobs.GRADIENT_BIAS, "gradient_bias.csv"),
    params:
        cfg=subtree("gradient_bias", "network", "precond", "seed", posttrain={"ect": config["posttrain"]["ect"]},
                    teacher={"train": config["teacher"]["train"]}),
        out=subpath(output.record, parent=True),
    threads: threads_of("posttrain")
    resources:
        **resources_of("posttrain"),
    log:
        f"{RESULTS}/logs/gradient-bias.log",
    shell:
        "OMP_NUM_THREADS={threads} python -m cmt gradient-bias --params {params.cfg:q} --out {params.out} > {log} 2>&1"
