rule evaluate:
    conda:
        "../../envs/cmt.yaml"
    input:
        model=model_file,
        featnet=rules.featnet.output.net,
    output:
        scores=f"{RESULTS}/eval/{{model}}/scores.json",
        record=f"{RESULTS}/eval/{{model}}/run.json",
    params:
        cfg=subtree("evaluate", "precond", "data", "seed", "device", sample=config["teacher"]["sample"]),
        out=subpath(output.scores, parent=True),
        model=subpath(input.model, parent=True),
    threads: 1
    resources:
        gpu=0,
        runtime=30,
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/evaluate-{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate-{{model}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} ${{CMT_LAUNCH:-python}} -m cmt evaluate --params {params.cfg:q} --model {params.model}"
        " --featnet {input.featnet} --label {wildcards.model} --out {params.out} > {log} 2>&1"
