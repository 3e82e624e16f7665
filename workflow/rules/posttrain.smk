rule posttrain_ect:
    conda:
        "../../envs/cmt.yaml"
    input:
        teacher=rules.teacher.output.model,
        featnet=rules.featnet.output.net,
        init=init_checkpoint,
    output:
        model=f"{RESULTS}/post/ect-{{init}}/model.safetensors",
        record=f"{RESULTS}/post/ect-{{init}}/run.json",
    params:
        cfg=subtree("precond", "data", "seed", "device", ect=config["posttrain"]["ect"]),
        out=subpath(output.model, parent=True),
        work=f"{WORK}/post/ect-{{init}}",
        teacher=subpath(input.teacher, parent=True),
        init_arg=init_arg,
    threads: 1
    resources:
        gpu=0,
        runtime=120,
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/posttrain-ect-{{init}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/posttrain-ect-{{init}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} ${{CMT_LAUNCH:-python}} -m cmt posttrain --params {params.cfg:q} --init {wildcards.init}"
        " {params.init_arg} --teacher {params.teacher} --featnet {input.featnet}"
        " --out {params.out} --work {params.work} > {log} 2>&1"
