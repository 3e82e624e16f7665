rule teacher:
    conda:
        "../../envs/cmt.yaml"
    output:
        model=f"{RESULTS}/teacher/model.safetensors",
        meta=f"{RESULTS}/teacher/meta.json",
        record=f"{RESULTS}/teacher/run.json",
    params:
        cfg=subtree("teacher", "network", "precond", "data", "seed", "device"),
        out=subpath(output.model, parent=True),
        work=f"{WORK}/teacher",
    threads: 2
    resources:
        gpu=0,
        runtime=60,
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/teacher.log",
    benchmark:
        f"{RESULTS}/benchmarks/teacher.tsv"
    shell:
        "${{CMT_LAUNCH:-python}} -m cmt teacher --params {params.cfg:q} --out {params.out} --work {params.work} > {log} 2>&1"


rule featnet:
    conda:
        "../../envs/cmt.yaml"
    output:
        net=f"{RESULTS}/featnet/featnet.safetensors",
        record=f"{RESULTS}/featnet/run.json",
    params:
        cfg=subtree("featnet", "data", "seed"),
    threads: 1
    resources:
        runtime=20,
        mem_mb=2000,
    log:
        f"{RESULTS}/logs/featnet.log",
    benchmark:
        f"{RESULTS}/benchmarks/featnet.tsv"
    shell:
        "${{CMT_LAUNCH:-python}} -m cmt featnet --params {params.cfg:q} --out {output.net} > {log} 2>&1"
