"""Experiments: the tools that run, score and summarise many trainings. One module per job, each a command
(``python -m timm_kd.experiments.<module>``; the older ``python -m timm_kd.<name>`` forms keep working):

* :mod:`.sweep` runs a grid of ``train_kd.py`` runs (``python -m timm_kd.sweep``);
* :mod:`.report` tables finished runs, with published numbers beside ours (``python -m timm_kd.report``);
* :mod:`.figures` draws the report's figures, :mod:`.plotting` the look and the writing of every figure;
* :mod:`.da_score` ranks teacher-labelled views by the teacher-only score (``python -m timm_kd.da_score``);
* :mod:`.feature_space` scores and draws the penultimate features of trained models (``python -m
  timm_kd.features``).

A new tool is one more module here. It may import every layer below (``timm_kd.train``, ``timm_kd.distill``,
``timm_kd.data``, ``timm_kd.models``, ``timm_kd.utils``, the ``timm_kd.hub`` library) and calls the library
directly (the typed builders of ``timm_kd.train.build``), never by writing ``train_kd.py`` flags; nothing
below imports it (the import contracts in pyproject.toml, checked by ``tests/test_layers.py``). This package
imports none of its modules, so a command's imports stay its own.
"""
