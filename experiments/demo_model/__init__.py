"""The demo model's workshop: training the embedded ``tiny`` model (issue 8).

Not part of the ``tokenred`` package: the shipped weights and the code that loads
them stay in ``tokenred/assets/tiny/`` and :mod:`tokenred.adapters.tiny`; this
package only produces those weights. ``experiments/train_tiny.py`` is its command
line (the script's folder is on ``sys.path`` when it runs, and pytest adds it through
the ``pythonpath`` option, so ``import demo_model`` works in both).

Modules: :mod:`~demo_model.training` (config, data, the loop, saving),
:mod:`~demo_model.trainer` (forward and losses through the adapter's public
handles), :mod:`~demo_model.grounding` (auxiliary targets) and
:mod:`~demo_model.tasks` (which questions an epoch draws).
"""
