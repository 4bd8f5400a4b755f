"""One package per paper: ``lmrepro.papers.<paper>`` with ``config``, ``runs``, ``evaluate``, ``report`` and
``artifacts``. Each maps its params section onto the generic core (models, train, eval, analysis); nothing
here is imported by the core. The loader finds papers by folder (``lmrepro.config.paper_schemas``).
"""
