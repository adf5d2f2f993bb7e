"""Learning from the runtime's own rollouts: ``reason learn``.

The pipeline, one module per step:

1. :mod:`.labels`: rollouts (an eval run over a training set, trees saved) become
   trajectories with steps, outcomes and per-step labels; the right ones export as an SFT
   dataset.
2. :mod:`.features` / :mod:`.extract`: the frozen policy's hidden states of every
   trajectory, at the layers a probe reads.
3. :mod:`.train`: heads cross-validated by problem, chosen, calibrated.
4. :mod:`.heads`: the heads themselves, saved as safetensors with a JSON card, loaded by
   the ``probe`` verifier (:mod:`reason.plugins.verifiers.probe`).

Torch is imported inside the functions that need it, so ``reason --help`` stays fast.
"""
