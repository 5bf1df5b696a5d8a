"""Privacy audit: does restoring an obfuscated face give its identity back?

``python -m jax_dae.audit --workdir=RUN`` measures, with a pretrained face
recogniser (dlib's ResNet, the optional extra ``pip install -e '.[audit]'``),
how well the people in a run's test split are identified and verified from
their clean faces, from their blurred or pixelated faces, and from the run's
restorations of those. docs/privacy.md has the protocol and results.

Modules: ``embedders`` (the recogniser behind a small interface),
``faces`` (the run's test split with identities), ``protocol`` (gallery,
probes and metrics), ``attack`` (obfuscate, restore, score), ``sweep`` (the
strength ladders), ``report`` (audit.json, audit.md, plots), ``runner``
(all of it for a list of workdirs) and ``__main__`` (the flags).

This file imports nothing heavy: the embedding worker processes import
``jax_dae.audit.embedders`` only.
"""
