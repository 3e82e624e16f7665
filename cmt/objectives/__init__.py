"""Training objectives, one module each, behind one signature: ``objective(model, batch, generator, step) -> loss``.

``registry`` lists them (what each trains, how it samples, what it reads, how it counts teacher NFE, its precision
rule and display name) without importing torch; ``base`` holds the protocol and the typed batches.
"""
