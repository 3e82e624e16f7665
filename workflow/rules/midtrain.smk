rule midtrain:
    conda:
        "../../envs/cmt.yaml"
    input:
        teacher=rules.teacher.output.model,
        featnet=rules.featnet.output.net,
        traj=f"{TRAJ}/index.json" if config["midtrain"]["source"] == "stored" else [],
    output:
        model=f"{RESULTS}/mid/cmt/model.safetensors",
        record=f"{RESULTS}/mid/cmt/run.json",
    params:
        cfg=subtree("midtrain", "trajectories", "precond", "data", "seed", "device"),
        out=subpath(output.model, parent=True),
        work=f"{WORK}/mid/cmt",
        teacher=subpath(input.teacher, parent=True),
        traj_arg=f"--traj {TRAJ}" if config["midtrain"]["source"] == "stored" else "",
    threads: 2
    priority: 10  # on the critical path to ECT-from-CMT: schedule before independent runs
    resources:
        gpu=0,
        runtime=120,
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/midtrain.log",
    benchmark:
        f"{RESULTS}/benchmarks/midtrain.tsv"
    shell:
        "${{CMT_LAUNCH:-python}} -m cmt midtrain --params {params.cfg:q} --teacher {params.teacher} {params.traj_arg}"
        " --featnet {input.featnet} --out {params.out} --work {params.work} > {log} 2>&1"
