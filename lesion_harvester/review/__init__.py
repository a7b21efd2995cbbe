"""The radiologist's side: a browser reviewer over a harvest run (``lesion-harvester review``).

:mod:`.service` answers requests and checks every write, :mod:`.app` puts it on HTTP (token
required), :mod:`.export` writes the reviewed labels; ``static/`` is the front end.
"""
