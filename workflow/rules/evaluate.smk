rule evaluate:
    """1- and 2-step sampling (the teacher: its own sampler), FD/KID and grids of one trained job."""
    conda:
        "../../envs/cmt.yaml"
    input:
        model=result("{job}", "model.safetensors"),
        featnet=rules.featnet.output.net,
    output:
        scores=result(jobs.eval_path("{job}"), "scores.json"),
        record=result(jobs.eval_path("{job}"), "run.json"),
    params:
        cfg=subtree("evaluate", "precond", "data", "seed", *DEVICE, teacher={"sample": config["teacher"]["sample"]}),
        out=subpath(output.scores, parent=True),
        model=subpath(input.model, parent=True),
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    log:
        f"{RESULTS}/logs/{jobs.eval_path('{job}')}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{jobs.eval_path('{job}')}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} ${{CMT_LAUNCH:-python}} -m cmt evaluate --params {params.cfg:q}"
        " --model {params.model} --featnet {input.featnet} --label {wildcards.job:q} --out {params.out} > {log} 2>&1"
